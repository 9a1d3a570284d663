"""The programme statistics of real flows through the engine (MLLP in, the PAM.fr feed, the DMP
simulator over HTTPS + mTLS): each answer the DMP can give counts where the programme asks, on
SQLite and on PostgreSQL; `pfi stats` prints it (table, CSV, JSON) and `pfi stats rebuild` finds the
same numbers; months begin at midnight in Paris, October and March clock changes included."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from engine.config.load import load_config
from engine.journal.reader import JournalReader, PgJournalReader
from engine.service import Engine
from engine.stats import month_of
from tests.flows.dmp_support import INITIAL, V1_ID, adapt, dmp_channel, dmp_routes, mllp_out, renumber_document
from tests.flows.test_dmp_identity import pam
from tests.patients.messages import TEST_INS
from tests.routing.peers import RecordingPeer, until
from tests.routing.test_hold import pfi
from tests.support import client_for, exchange, inbound, write_config

UTC = dt.timezone.utc
SITE = "FINESS:300017985"  # PRT-8 `FINEG^^^300017985` of the ANS examples


class Flow:
    def __init__(self, engine, creator_out, drimbox, cfg, data, journal_url):
        self.engine, self.creator_out, self.drimbox = engine, creator_out, drimbox
        self.cfg, self.data, self.journal_url = cfg, data, journal_url

    def reader(self):
        return PgJournalReader(self.journal_url) if self.journal_url else JournalReader(self.data / "journal")

    def cli(self, *args):
        journal = ("--journal", self.journal_url) if self.journal_url else ()
        return pfi("stats", *args, "--config", str(self.cfg), "--data", str(self.data), *journal)

    async def send(self, channel: str, raw: bytes) -> str:
        client = await client_for(self.engine, channel)
        try:
            return (await exchange(client, raw)).code
        finally:
            client.close()

    async def close(self):
        await self.engine.stopService()
        await self.creator_out.close()
        await self.drimbox.close()


async def start(tmp_path, sim, pki, journal_url: str | None = None, clock=None) -> Flow:
    creator_out, drimbox = RecordingPeer(), RecordingPeer()
    channels = {
        "creator": inbound(),
        "gam": inbound(),
        "dmp": dmp_channel(sim, pki),
        "creator-out": mllp_out(await creator_out.listen()),
        "drimbox": mllp_out(await drimbox.listen()),
    }
    engine_settings = {"journal": journal_url, "node": "n1"} if journal_url else None
    cfg = write_config(tmp_path / "cfg", channels, dmp_routes(), engine_settings)
    engine = Engine(load_config(cfg), tmp_path / "data", reactor, with_metrics=False, clock=clock)
    await engine.startService()
    return Flow(engine, creator_out, drimbox, cfg, tmp_path / "data", journal_url)


def report(ans_corpus, control_id: str, number: int, invisible: bool = True) -> bytes:
    """The ANS MDM^T02 example as a new document (its own id), visible to the patient or not."""
    raw = ans_corpus.joinpath(INITIAL).read_bytes()
    if number:
        raw = renumber_document(raw, V1_ID, V1_ID[:-2] + f"{90 + number}")
    raw = adapt(raw, control_id)
    if not invisible:  # the example says INVISIBLE_PATIENT=Y
        raw = raw.replace(
            b"INVISIBLE_PATIENT^Document Non Visible par le patient^MetaDMPMSS||Y^",
            b"INVISIBLE_PATIENT^Document Non Visible par le patient^MetaDMPMSS||N^",
        )
    return raw


def totals(table, site: str = SITE) -> dict:
    """Column -> sum over the table's rows of `site` (the test may straddle a month)."""
    out: dict = {}
    for row in table.rows:
        assert (row["site"], row["doc_type"]) == (site, "CR-IMG")
        for column, value in row.items():
            if isinstance(value, int):
                out[column] = out.get(column, 0) + value
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request):
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest_twisted.ensureDeferred
async def test_every_dmp_answer_counts_where_the_programme_asks(tmp_path, simulator, pki, ans_corpus, journal_url):
    flow = await start(tmp_path, simulator, pki, journal_url)
    first = month_of(time.time())
    try:
        # The GAM says who the patient is (qualified: PID-32 VALI with the INS) and what was collected
        # (ZFA-9 INO: not opposed to feeding; ZFA-11 IC: consents to consultation).
        assert await flow.send("gam", pam(ans_corpus, "A01", "PAM-1", status="VALI", feeding="INO")) == "AA"
        await until(lambda: any(e.state == "patient-updated" for e in flow.reader().events_after(0)), what="PAM.fr")
        answers = [
            ("R-1", lambda: None, False),
            ("R-2", lambda: None, True),
            ("R-3", lambda: simulator.closed_patients.add(TEST_INS), True),  # DMPClosed
            ("R-4", lambda: (simulator.closed_patients.clear(), simulator.no_dmp_patients.add(TEST_INS)), True),
        ]
        for number, (control_id, answer, invisible) in enumerate(answers):
            answer()
            assert await flow.send("creator", report(ans_corpus, control_id, number, invisible)) == "AA"
            await until(lambda: len(flow.creator_out.received) == number + 1, what=f"the ZAM of {control_id}")
        # what the DMP registered: the first visible to the patient, the second not
        assert [e.invisible_to_patient for e in simulator.store.all()] == [False, True]
        last = month_of(time.time())
        table = flow.reader().statistics(first, last)
    finally:
        await flow.close()
    assert {k: v for k, v in totals(table).items() if v} == {
        "reports_received": 4,
        "dmp_requested": 4,
        "mss_ps_requested": 4,
        "identities": 1,
        "identity_qualified": 1,
        "consent_consultation": 1,
        "non_opposition_feeding": 1,
        "dmp_succeeded": 2,
        "dmp_succeeded_invisible": 1,
        "dmp_failed": 1,
        "dmp_no_dmp": 1,
    }
    assert table.rows[-1]["identity_qualified_rate"] == 100.0

    # The command line prints the same (JSON here), and a rebuild from the journal gives the same.
    shown = flow.cli("--from", first, "--to", last, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["rows"] == json.loads(table.as_json())["rows"]
    rebuilt = flow.cli("rebuild")
    assert rebuilt.returncode == 0 and "from 4 message(s)" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    again = flow.cli("--from", first, "--to", last, "--format", "json")
    assert json.loads(again.stdout)["rows"] == json.loads(shown.stdout)["rows"]
    csv = flow.cli("--from", first, "--to", last, "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("month,site,doc_type,reports_received,identities,") and f",{SITE},CR-IMG," in csv[-1]
    text = flow.cli("--from", first, "--to", last, "--site", "300017985").stdout
    assert f"site {SITE}, CR-IMG" in text and "DMP: refused, the patient has no DMP" in text


def utc(*args) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


@pytest_twisted.ensureDeferred
async def test_months_turn_at_midnight_in_paris_in_october_and_march(tmp_path, simulator, pki, ans_corpus):
    # The engine's clock (intake, routing, outcomes) set one second before midnight in Paris, then
    # moved on: 31 October 2026 (winter time, UTC+1) and 31 March 2027 (summer time, UTC+2).
    clock = task.Clock()
    flow = await start(tmp_path, simulator, pki, clock=clock)
    instants = [
        utc(2026, 10, 31, 22, 59, 59),
        utc(2026, 10, 31, 23, 0, 0),
        utc(2027, 3, 31, 21, 59, 59),
        utc(2027, 3, 31, 22, 0, 0),
    ]
    try:
        for number, instant in enumerate(instants):
            clock.advance(instant - clock.seconds())
            assert await flow.send("creator", report(ans_corpus, f"M-{number}", number)) == "AA"
            await until(lambda: len(flow.creator_out.received) == number + 1, what=f"the ZAM of M-{number}")
        table = flow.reader().statistics("2026-10", "2027-04")
    finally:
        await flow.close()
    got = [(r["month"], r["reports_received"], r["dmp_succeeded"]) for r in table.rows]
    assert got == [("2026-10", 1, 1), ("2026-11", 1, 1), ("2027-03", 1, 1), ("2027-04", 1, 1)]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--from", "2026-13"), "--from: '2026-13' is not a month: expected YYYY-MM"),
        (("--from", "2026-11", "--to", "2026-01"), "--from 2026-11 is after --to 2026-01"),
        (("--to", "november"), "--to: 'november' is not a month"),
        (("--format", "xml"), "invalid choice: 'xml'"),
        (
            ("-o", "/nonexistent-dir/stats.csv"),
            "-o /nonexistent-dir/stats.csv: directory /nonexistent-dir does not exist",
        ),
        (("--mapping", "/nonexistent/statistics.yaml"), "/nonexistent/statistics.yaml: cannot read"),
        (("bogus",), "invalid choice: 'bogus'"),
    ],
)
def test_bad_options_get_a_clear_error(tmp_path, args, message):
    write_config(tmp_path / "cfg", {"in": inbound()})
    result = pfi("stats", *args, "--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data"))
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_pfi_check_reports_a_wrong_statistics_yaml(tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound()})
    (cfg / "statistics.yaml").write_text("columns:\n  - month\n  - dmp_sent\n", encoding="utf-8")
    result = pfi("check", "--config", str(cfg))
    assert result.returncode == 1 and f"{cfg / 'statistics.yaml'}:3:5: unknown column 'dmp_sent'" in result.stdout
