"""The statistics counters in the journal, on SQLite and on PostgreSQL: outcomes counted in the
transaction of their events, into Paris months; `rebuild` gives the same numbers; retention never
moves a past month; nodes of a shared journal count into the same rows."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

from engine.journal import deliveries as queue
from engine.journal import stats
from engine.journal.base import InboundRecord
from engine.journal.postgres import PgConnection, PostgresJournal
from engine.journal.sqlite import SQLiteJournal
from engine.routing.plan import NewDelivery
from engine.stats.facts import DEST_DMP, DEST_PS, INVISIBLE_PATIENT, LPS, REPORT, MessageFacts

UTC = dt.timezone.utc
SITE = "FINESS:300017985"
# 31 October 2026, 23:59:59 in Paris (winter time, UTC+1), and one second later: November
LAST_SECOND_OF_OCTOBER = dt.datetime(2026, 10, 31, 22, 59, 59, tzinfo=UTC).timestamp()
NOVEMBER = LAST_SECOND_OF_OCTOBER + 1
MID_OCTOBER = dt.datetime(2026, 10, 15, 10, tzinfo=UTC).timestamp()
MID_SEPTEMBER = dt.datetime(2026, 9, 15, 10, tzinfo=UTC).timestamp()
KINDS = {"dmp": "dmp", "mss": "mssante", "ris": "mllp-out"}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    return request.param


async def open_journal(backend: str, tmp_path, request):
    if backend == "postgresql":
        journal = PostgresJournal(request.getfixturevalue("pg_url"), reactor, node="n1")
    else:
        journal = SQLiteJournal(tmp_path / "journal", reactor, node="n1")
        journal.payloads.segment_bytes = 2000  # a few records per segment: retention can drop some
    await journal.open()
    await journal.submit(lambda conn, store: stats.register_channels(conn, KINDS))
    return journal


def report(
    uid: str,
    month: str = "2026-10",
    flags: int = DEST_DMP,
    key: str = "k1",
    identity: str = "qualified",
    consultation: str = "",
    feeding: str = "",
    doc_type: str = "CR-IMG",
) -> MessageFacts:
    return MessageFacts(uid, REPORT, month, SITE, doc_type, identity, key, consultation, feeding, flags)


def deliver(conn, uid: str, destination: str, outcome: str, detail: str, at: float) -> None:
    """One delivery through the queue's own functions: queued, claimed, then its outcome."""
    new = NewDelivery(route="r", step="s", destination=destination, fifo_key=uid, not_before=at, payload=b"x")
    queue.enqueue(conn, uid, new, "n1", at)
    if outcome == "cancelled":
        queue.cancel(conn, uid, "withdrawn", "n1", at, "alice")
        return
    [claimed] = queue.claim_batch(conn, destination, at, "n1")
    if outcome == "retry":
        queue.finish(conn, claimed, "retry", detail, "n1", at, retry_at=at + 60)
        [claimed] = queue.claim_batch(conn, destination, at + 60, "n1")
        outcome, at = "dead", at + 60
    if outcome == "done":
        queue.finish_all(conn, [(claimed, detail)], "done", "n1", at)
    else:
        queue.finish(conn, claimed, "dead", detail, "n1", at)


def scenario(conn) -> None:
    stats.record_messages(
        conn,
        [
            report("r1", flags=DEST_DMP | DEST_PS, consultation="IC", feeding="INO"),
            report("r2", flags=DEST_DMP | INVISIBLE_PATIENT, consultation="IC", feeding="INO"),  # same identity
            report("r3", key="k2", identity="provisional"),
            report("r4", key="k2", identity="qualified"),  # k2 qualified later in the month: counted so
            report("r5", doc_type="DEMANDE-IMG"),
            MessageFacts("l1", LPS, "2026-10", SITE, "CR-IMG"),
            MessageFacts("l2", LPS, "2026-10", SITE, "CR-IMG"),
        ],
    )
    deliver(conn, "r1", "dmp", "done", "DMP accepted (success)", LAST_SECOND_OF_OCTOBER)
    deliver(
        conn,
        "r1",
        "mss",
        "done",
        "MSSanté: 1 recipient(s) accepted, 0 refused (professionals: 1 accepted, 0 refused, 0 not sent)",
        NOVEMBER,
    )
    deliver(conn, "r1", "ris", "done", "AA from destination", NOVEMBER)  # a ZAM: not an outcome counted
    deliver(conn, "r2", "dmp", "done", "DMP accepted (success)", MID_OCTOBER)
    deliver(conn, "r3", "dmp", "dead", "XDSUnknownPatientId: le patient n'a pas de DMP", MID_OCTOBER)
    deliver(conn, "r4", "dmp", "retry", "PFI:CONNECTION_REFUSED: DMP unreachable", MID_OCTOBER)  # then DMPClosed
    deliver(conn, "r5", "dmp", "cancelled", "", NOVEMBER)
    deliver(conn, "l1", "ris", "done", "AA from destination", MID_OCTOBER)
    deliver(conn, "l2", "ris", "dead", "AE from destination: 902", MID_OCTOBER)
    # the same routing result written again (a replay): the reports were already counted
    stats.record_messages(conn, [report("r1")])


EXPECTED = {
    ("2026-10", "CR-IMG"): {
        "received": 4,
        "dmp_requested": 4,
        "mss_ps_requested": 1,
        "identities": 2,
        "identity_qualified": 2,
        "identity_provisional": 0,
        "consent_consultation": 1,
        "non_opposition_feeding": 1,
        "dmp_ok": 1,
        "dmp_ok_invisible": 1,
        "dmp_no_dmp": 1,
        "dmp_failed": 1,
        "mss_in_integrated": 1,
        "mss_in_failed": 1,
    },
    ("2026-10", "DEMANDE-IMG"): {"received": 1, "dmp_requested": 1, "identities": 1, "identity_qualified": 1},
    ("2026-11", "CR-IMG"): {"mss_ps_sent": 1},
    ("2026-11", "DEMANDE-IMG"): {"dmp_not_sent": 1},
}


def counters(conn) -> dict:
    out: dict = {}
    for month, site, doc_type, measure, value in stats.counters(
        lambda s, a=(): conn.execute(s, a).fetchall(), "2026-01", "2026-12"
    ):
        assert site == SITE
        if value:
            out.setdefault((month, doc_type), {})[measure] = value
    return out


def table(conn):
    return stats.statistics(lambda s, a=(): conn.execute(s, a).fetchall(), "2026-01", "2026-12").rows


def _without_zeros(expected: dict) -> dict:
    return {cell: {m: v for m, v in measures.items() if v} for cell, measures in expected.items()}


@pytest_twisted.ensureDeferred
async def test_outcomes_count_in_their_paris_month_and_rebuild_gives_the_same(backend, tmp_path, request):
    journal = await open_journal(backend, tmp_path, request)
    try:
        await journal.submit(lambda conn, store: scenario(conn))
        incremental = await journal.submit(lambda conn, store: counters(conn))
        rows = await journal.submit(lambda conn, store: table(conn))
    finally:
        await journal.stop()
    assert incremental == _without_zeros(EXPECTED)
    assert [
        (r["month"], r["doc_type"], r["dmp_succeeded"], r["dmp_succeeded_invisible"], r["identity_qualified_rate"])
        for r in rows
    ][:1] == [("2026-10", "CR-IMG", 2, 1, 100.0)]
    conn = connection(backend, tmp_path, request)
    try:
        done = stats.rebuild(conn, dialect(backend))
        assert (done.first_month, done.messages) == (None, 7)
        assert counters(conn) == incremental and table(conn) == rows
    finally:
        conn.close()


def dialect(backend: str):
    from engine.journal.dialect import POSTGRES, SQLITE

    return POSTGRES if backend == "postgresql" else SQLITE


def connection(backend: str, tmp_path, request):
    if backend == "postgresql":
        return PgConnection(psycopg.connect(request.getfixturevalue("pg_url"), autocommit=True))
    from engine.journal.sqlite import connect

    return connect(tmp_path / "journal" / "journal.sqlite")


def _record(uid: str, received_at: float) -> InboundRecord:
    return InboundRecord(
        uid=uid,
        channel="creator",
        received_at=received_at,
        raw=b"MSH|^~\\&|A|B|C|D|||MDM^T02|" + uid.encode() + b"|P|2.6\r" + b"x" * 600,
        control_id=uid,
        msg_type="MDM^T02",
        ack_code="AA",
        ack=b"MSA|AA\r",
    )


@pytest_twisted.ensureDeferred
async def test_retention_never_moves_a_past_month(backend, tmp_path, request):
    journal = await open_journal(backend, tmp_path, request)
    try:
        # September reports, one of them published in October; October reports stay.
        old = [f"sep{i}" for i in range(6)]
        for i, uid in enumerate(old + ["oct0", "oct1"]):
            await journal.append_inbound(_record(uid, MID_SEPTEMBER + i if uid in old else MID_OCTOBER + i))

        def outcomes(conn, store):
            stats.record_messages(
                conn, [report(u, month="2026-09" if u in old else "2026-10", key=u) for u in old + ["oct0", "oct1"]]
            )
            for uid in old[:-1]:
                deliver(conn, uid, "dmp", "done", "DMP accepted (success)", MID_SEPTEMBER + 60)
            for uid in (old[-1], "oct0"):
                deliver(conn, uid, "dmp", "done", "DMP accepted (success)", MID_OCTOBER)
            conn.execute("UPDATE messages SET state='routed'")

        await journal.submit(outcomes)
        await journal.append_inbound(_record("later", MID_OCTOBER + 100))  # SQLite: a newer segment
        before = await journal.submit(lambda conn, store: counters(conn))
        purged = await journal.purge_before(MID_OCTOBER - 86400)
        after = await journal.submit(lambda conn, store: counters(conn))
        facts_left = await journal.submit(
            lambda conn, store: conn.execute("SELECT uid FROM stats_messages ORDER BY uid").fetchall()
        )
    finally:
        await journal.stop()
    assert purged >= len(old) and after == before
    assert before[("2026-09", "CR-IMG")]["dmp_ok"] == 5 and before[("2026-10", "CR-IMG")]["dmp_ok"] == 2
    assert [r[0] for r in facts_left] == ["oct0", "oct1"]  # the facts go with their messages
    conn = connection(backend, tmp_path, request)
    try:
        done = stats.rebuild(conn, dialect(backend))
        # a purged September report was published in October: October's events are incomplete too
        assert (done.kept_through, done.first_month) == ("2026-10", "2026-11")
        assert counters(conn) == before
    finally:
        conn.close()


def test_nodes_of_a_shared_journal_count_into_the_same_rows(pg_url):
    """Two nodes record outcomes of the same cell at the same time: no update is lost, none waits
    for ever (counters are upserts taken in key order)."""
    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConnection(raw)
        stats.register_channels(conn, KINDS)
        stats.record_messages(conn, [report(f"m{i}", flags=DEST_DMP | DEST_PS, key=f"k{i}") for i in range(200)])
    failures: list = []

    def node(name: str, uids: list[str]) -> None:
        try:
            with psycopg.connect(pg_url, autocommit=True) as raw:
                conn = PgConnection(raw)
                for uid in uids:
                    with raw.transaction():  # one group commit per outcome: the most contention
                        deliver(conn, uid, "dmp", "done", "DMP accepted (success)", MID_OCTOBER)
                        deliver(
                            conn,
                            uid,
                            "mss",
                            "dead",
                            "550: refused (professionals: 0 accepted, 1 refused, 0 not sent)",
                            NOVEMBER,
                        )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=node, args=(f"n{n}", [f"m{i}" for i in range(n, 200, 2)])) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with psycopg.connect(pg_url, autocommit=True) as raw:
        found = counters(PgConnection(raw))
    assert found[("2026-10", "CR-IMG")]["dmp_ok"] == 200 and found[("2026-11", "CR-IMG")]["mss_ps_failed"] == 200


@pytest_twisted.ensureDeferred
async def test_counts_roll_back_with_the_events_that_made_them(backend, tmp_path, request):
    """An operation of a group commit that fails is rolled back to its savepoint: its outcome
    events and what they counted go together; the other operations of the batch stay."""
    journal = await open_journal(backend, tmp_path, request)

    def outcome_then_failure(conn, store):
        deliver(conn, "r1", "dmp", "done", "DMP accepted (success)", MID_OCTOBER)
        raise ValueError("the operation fails after its events were written")

    try:
        await journal.submit(lambda conn, store: stats.record_messages(conn, [report("r1"), report("r2")]))
        failed = journal.submit(outcome_then_failure)
        kept = journal.submit(lambda conn, store: deliver(conn, "r2", "dmp", "done", "DMP accepted", MID_OCTOBER))
        with pytest.raises(Exception, match="fails after its events"):
            await failed
        await kept
        found = await journal.submit(lambda conn, store: counters(conn))
        sent = await journal.submit(
            lambda conn, store: conn.execute("SELECT message_uid FROM events WHERE state = 'sent'").fetchall()
        )
    finally:
        await journal.stop()
    assert [r[0] for r in sent] == ["r2"] and found[("2026-10", "CR-IMG")]["dmp_ok"] == 1


def test_events_are_written_by_the_events_module_only():
    """The counters see every event because every event goes through engine/journal/events.py."""
    from pathlib import Path

    engine_dir = Path(__file__).resolve().parents[2] / "engine"
    writers = [
        str(p.relative_to(engine_dir))
        for p in engine_dir.rglob("*.py")
        if "INSERT INTO EVENTS" in " ".join(p.read_text(encoding="utf-8").upper().split())
    ]
    assert writers == ["journal/events.py"]
