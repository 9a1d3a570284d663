"""The console's journal modules on both journals: users, key indexing, search by IPP / INS /
control id / state / date range with keyset pages, dead letters, the reveal audit event."""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from engine.console.indexer import KeyIndexer
from engine.console.passwords import hash_password, verify_password
from engine.ids import new_id
from engine.journal import search, users
from engine.journal.access import PgAccess, SqliteAccess
from engine.journal.base import InboundRecord


def adt(control_id: str, ipp: str, ins: str) -> bytes:
    return (
        "MSH|^~\\&|RIS|CHU|PFI|CHU|20261122101010||ADT^A08^ADT_A01|" + control_id + "|P|2.5\r"
        "PID|1||"
        + ipp
        + "^^^CHU&1.2.250.1.999&ISO^PI~"
        + ins
        + "^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||DOE^Ann\r"
        "OBR|1|||XR^Chest||||||||||||||ACC-" + control_id + "\r"
    ).encode()


async def journal_with(journal, count: int, start: float) -> list[InboundRecord]:
    records = [
        InboundRecord(
            uid=new_id(),
            channel="ris" if i % 2 else "tlr",
            received_at=start + i * 60,
            raw=adt(f"C{i}", f"IPP{i % 3}", f"1{i % 3:014d}"),
            control_id=f"C{i}",
            msg_type="ADT^A08",
            state="rejected" if i == 4 else "received",
            patient_ids="x",
        )
        for i in range(count)
    ]
    for r in records:
        await journal.append_inbound(r)
    await journal.indexed()
    return records


def check_access(access, records, start: float) -> None:
    assert KeyIndexer(access).run_pass() == len(records)
    found = search.search_messages(access.read, search.SearchFilters(ipp="IPP1"))
    assert [r.control_id for r in found] == ["C7", "C4", "C1"]  # newest first
    assert [r.control_id for r in search.search_messages(access.read, search.SearchFilters(ins="100000000000002"))] == [
        "C8",
        "C5",
        "C2",
    ]
    assert [r.control_id for r in search.search_messages(access.read, search.SearchFilters(accession="ACC-C3"))] == [
        "C3"
    ]
    assert [r.control_id for r in search.search_messages(access.read, search.SearchFilters(state="rejected"))] == ["C4"]
    page = search.search_messages(access.read, search.SearchFilters(channel="ris"), limit=2)
    older = search.search_messages(access.read, search.SearchFilters(channel="ris"), before_id=page[-1].id, limit=2)
    assert [r.control_id for r in page + older] == ["C9", "C7", "C5", "C3"]
    window = search.SearchFilters(since=start + 2 * 60, until=start + 5 * 60)
    assert [r.control_id for r in search.search_messages(access.read, window)] == ["C4", "C3", "C2"]
    detail = search.message_detail(access.read, records[1].uid)
    assert detail.control_id == "C1" and [e[2] for e in detail.events] == ["received"]
    with access.writing() as conn:
        search.record_operator_event(conn, records[1].uid, "identities-shown", "shown to ann (console)", time.time())
        assert users.add_user(conn, "ann", hash_password("long enough pass"), "operator", time.time())
        assert not users.add_user(conn, "ann", "x", "viewer", time.time())
    assert [e[2] for e in search.message_detail(access.read, records[1].uid).events][-1] == "identities-shown"
    assert verify_password("long enough pass", users.find_user(access.read, "ann").password_hash)
    assert not verify_password("wrong password!", users.find_user(access.read, "ann").password_hash)
    with pytest.raises(ValueError):
        with access.writing() as conn:
            users.add_user(conn, "bob", "x", "root", time.time())


@pytest_twisted.ensureDeferred
async def test_sqlite_search(tmp_path):
    from engine.journal.sqlite import SQLiteJournal

    journal = SQLiteJournal(tmp_path / "journal")
    journal.start()
    start = time.time() - 3600
    records = await journal_with(journal, 10, start)
    access = SqliteAccess(tmp_path / "journal")
    try:
        check_access(access, records, start)
    finally:
        access.close()
        await journal.stop()


@pytest_twisted.ensureDeferred
async def test_postgresql_search(pg_url):
    from engine.journal.postgres import PostgresJournal

    journal = PostgresJournal(pg_url, node="t")
    await journal.open()
    start = time.time() - 3600
    records = await journal_with(journal, 10, start)
    access = PgAccess(pg_url)
    try:
        check_access(access, records, start)
        nodes = search.cluster_nodes(access.read)
        assert [(n[0], n[5]) for n in nodes] == [("t", True)]  # this node leads dispatch
    finally:
        access.close()
        await journal.stop()
