"""The console in Debian's Chromium (Playwright): sign in, find a message by IPP, open it, read
its timeline, replay a dead letter (one, then in bulk with its progress bar), download the CSV;
a viewer gets 403 on replay, a POST without CSRF token is refused, an unauthenticated request gets
the login page and no data. Screenshots of each page go to tests/artifacts/console/."""

from __future__ import annotations

import socket
import time

import pytest

from engine.console.data import month_bounds
from engine.journal.access import SqliteAccess
from engine.journal.stats import add_counters, statistics
from engine.journal.search import message_detail, SearchFilters, search_messages
from tests.console.conftest import ARTIFACTS, PASSWORDS

IPP = "IPP-CONSOLE-7731"


def send(port: int, control_id: str, ipp: str = IPP) -> bytes:
    message = (
        "MSH|^~\\&|RIS|CHU-T|PFI|CHU-T|20261122101010||ADT^A08^ADT_A01|" + control_id + "|P|2.5\r"
        "PID|1||" + ipp + "^^^CHU-T&1.2.250.1.999&ISO^PI||DUPONT^Jeanne||19700101|F\r"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0b" + message + b"\x1c\r")
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = s.recv(4096)
            assert chunk, "connection closed before the ACK"
            answer += chunk
    return answer


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def dead_lettered(access, control_id: str):
    rows = search_messages(access.read, SearchFilters(control_id=control_id))
    if not rows:
        return None
    detail = message_detail(access.read, rows[0].uid)
    return detail if any(d[2] == "dead" for d in detail.deliveries) else None


@pytest.fixture(scope="module")
def journal(running):
    engine, _, _, data = running
    access = SqliteAccess(data / "journal")
    yield access
    access.close()


@pytest.fixture(scope="module")
def dead_messages(running, journal):
    """Two messages of the IPP, each with its delivery dead-lettered (the destination refuses)."""
    engine = running[0]
    port = engine.port_of("ris")
    details = []
    for control_id in ("CTRL-DEAD-1", "CTRL-DEAD-2"):
        assert b"MSA|AA" in send(port, control_id)
        details.append(wait_for(lambda c=control_id: dead_lettered(journal, c), f"{control_id} dead-lettered"))
    return details


def sign_in(browser, base: str, user: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(base + "/login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORDS[user][1])
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    return context, page


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_unauthenticated_requests_get_the_login_page_never_data(chromium, running, dead_messages):
    def body(browser):
        base = running[1]
        page = browser.new_context().new_page()
        for path in ("/", "/messages?ipp=" + IPP, f"/messages/{dead_messages[0].uid}", "/messages.csv", "/dead"):
            response = page.goto(base + path)
            assert response.status == 401
            assert page.locator("#login-form").count() == 1
            assert "CTRL-DEAD" not in page.content() and IPP not in page.content()
        shot(page, "login")

    chromium.run(body)


def test_operator_finds_a_message_by_ipp_reads_its_timeline_and_replays_it(chromium, running, journal, dead_messages):
    def body(browser):
        base = running[1]
        context, page = sign_in(browser, base, "olivia")
        assert page.locator("h2", has_text="Destinations").count() == 1
        assert page.locator("td", has_text="out").count() >= 1
        assert "routing process: running, restarted 0 times" in page.locator("#routing-process").inner_text()
        shot(page, "dashboard")

        page.click("text=Messages")
        page.fill("input[name=ipp]", IPP)
        page.click("form#search button[type=submit]")
        results = page.locator("#results tbody tr")
        assert results.count() == 2
        assert IPP not in page.locator("#results").inner_text()  # identities masked in the list
        shot(page, "messages")

        page.click(f"a[href='/messages/{dead_messages[0].uid}']")
        timeline = page.locator("#timeline").inner_text()
        for state in ("received", "queued", "dead-letter"):
            assert state in timeline
        assert IPP not in page.locator("#raw").inner_text()  # PID-3 masked by default
        shot(page, "message")

        page.click("#replay")
        shot(page, "confirm-replay")
        page.click("#confirm")
        assert "re-queued" in page.locator(".flash").inner_text()
        assert "replayed" in page.locator("#timeline").inner_text()
        events = message_detail(journal.read, dead_messages[0].uid).events
        assert any(e[2] == "replayed" and "olivia (console)" in e[4] for e in events)

        page.click("#reveal")
        page.click("#confirm")
        assert IPP in page.locator("#raw").inner_text()
        events = message_detail(journal.read, dead_messages[0].uid).events
        assert any(e[2] == "identities-shown" and "olivia (console)" in e[4] for e in events)
        context.close()

    chromium.run(body)


def test_bulk_replay_of_dead_letters_shows_its_progress(chromium, running, journal, dead_messages):
    def body(browser):
        base = running[1]
        wait_for(lambda: dead_lettered(journal, "CTRL-DEAD-2"), "CTRL-DEAD-2 still dead")
        context, page = sign_in(browser, base, "olivia")
        page.goto(base + "/dead")
        count = int(page.locator("#dead-count").inner_text())
        assert count >= 1
        shot(page, "dead-letters")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#bulk-replay button")
        from playwright.sync_api import expect

        # A locator assertion polls without evaluating a string in the page: the console's
        # CSP (script-src 'self') rightly refuses eval, which wait_for_function needs.
        expect(page.locator("#finished")).to_have_text("Finished.", timeout=30_000)
        assert page.locator("#progress").get_attribute("max") == str(count)
        assert int(page.locator("#replayed").inner_text()) == count
        shot(page, "bulk-replay")
        events = message_detail(journal.read, dead_messages[1].uid).events
        assert any(e[2] == "replayed" and "olivia (console)" in e[4] for e in events)
        context.close()

    chromium.run(body)


def test_csv_download_and_statistics_page(chromium, running, journal, dead_messages):
    def body(browser):
        base = running[1]
        context, page = sign_in(browser, base, "olivia")
        page.goto(base + "/messages?ipp=" + IPP)
        with page.expect_download() as download:
            page.click("#csv")
        text = open(download.value.path(), encoding="utf-8").read()
        assert text.splitlines()[0].startswith("id,received,channel")
        assert "CTRL-DEAD-1" in text and "CTRL-DEAD-2" in text and IPP not in text
        page.goto(base + "/statistics")
        assert page.locator("#status-page").get_attribute("href").startswith("https://")
        assert page.locator("svg.chart").count() >= 1  # the seeded month is drawn server-side
        shot(page, "statistics")
        with page.expect_download() as download:
            page.click("#stats-csv")
        downloaded = open(download.value.path(), encoding="utf-8", newline="").read()
        context.close()
        return downloaded

    month = time.strftime("%Y-%m")
    with journal.writer() as conn:  # counters as the engine's observer keeps them (engine/journal/stats.py)
        conn.execute("BEGIN IMMEDIATE")
        add_counters(conn, {(month, "FINESS:300017985", "CR-IMG", "received"): 7})
        conn.execute("COMMIT")
    downloaded = chromium.run(body)
    # The console's CSV is the programme's CSV, the one `pfi stats --format csv` writes.
    first, last = month_bounds(time.time())
    assert downloaded == statistics(journal.read, first, last).as_csv()
    assert "FINESS:300017985" in downloaded and ",7," in downloaded.replace(";", ",")


def test_viewer_gets_403_on_replay(chromium, running, journal, dead_messages):
    def body(browser):
        base = running[1]
        context, page = sign_in(browser, base, "victor")
        page.goto(base + f"/messages/{dead_messages[0].uid}")
        assert page.locator("#replay").count() == 0
        token = page.locator("form.logout input[name=csrf]").get_attribute("value")
        before = len(message_detail(journal.read, dead_messages[0].uid).events)
        response = page.request.post(base + f"/messages/{dead_messages[0].uid}/replay", form={"csrf": token})
        assert response.status == 403
        assert len(message_detail(journal.read, dead_messages[0].uid).events) == before
        assert page.goto(base + "/configuration").status == 403
        shot(page, "viewer-forbidden")
        context.close()

    chromium.run(body)


def test_post_without_csrf_token_is_refused(chromium, running, journal, dead_messages):
    def body(browser):
        base = running[1]
        context, page = sign_in(browser, base, "olivia")
        before = len(message_detail(journal.read, dead_messages[1].uid).events)
        response = page.request.post(base + f"/messages/{dead_messages[1].uid}/replay", form={"back": "/"})
        assert response.status == 403
        wrong = page.request.post(base + f"/messages/{dead_messages[1].uid}/replay", form={"csrf": "forged"})
        assert wrong.status == 403
        assert len(message_detail(journal.read, dead_messages[1].uid).events) == before
        context.close()

    chromium.run(body)


def test_admin_sees_configuration_with_check_findings(chromium, running):
    def body(browser):
        base = running[1]
        context, page = sign_in(browser, base, "ada")
        page.goto(base + "/configuration")
        assert page.locator("#findings").count() == 1
        assert page.locator("summary", has_text="ris (mllp-in)").count() == 1
        shot(page, "configuration")
        context.close()

    chromium.run(body)
