"""The PostgreSQL journal's numbered migrations: one test per migration, the upgrade path, and the
refusal to run on a schema the engine does not know."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from engine.journal import pgschema
from engine.journal.schema import UnknownSchema
from tests.support import ROOT, inbound, write_config


def _tables(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}


def _columns(conn, table: str) -> set[str]:
    return {
        r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name=%s", (table,))
    }


def test_migration_1_creates_messages_payloads_and_events(pg_empty_url):
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        assert pgschema.current_version(conn) == 0
        assert pgschema.upgrade(conn, target=1) == [1]
        assert pgschema.current_version(conn) == 1
        assert {"messages", "payloads", "events", "schema_version"} <= _tables(conn)
        assert "deliveries" not in _tables(conn)
        assert {"uid", "dup_key", "ack", "node", "patient_ids"} <= _columns(conn, "messages")
        # Payloads are stored out of line without compression (written once, read rarely).
        storage = conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid='payloads'::regclass AND attname='raw'"
        ).fetchone()[0]
        assert storage == "e"


def test_migration_2_adds_deliveries_and_nodes_and_keeps_rows(pg_empty_url):
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        pgschema.upgrade(conn, target=1)
        conn.execute(
            "INSERT INTO messages (uid, received_at, channel, state, size) VALUES ('m1', 1, 'in', 'received', 3)"
        )
        assert pgschema.upgrade(conn, target=2) == [2]
        assert {"deliveries", "nodes"} <= _tables(conn)
        assert {"lease_until", "fifo_key", "node"} <= _columns(conn, "deliveries")
        assert conn.execute("SELECT uid, state FROM messages").fetchall() == [("m1", "received")]
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename='deliveries'")}
        assert {"deliveries_open", "deliveries_open_key", "deliveries_sending"} <= indexes
        assert pgschema.upgrade(conn, target=2) == []  # idempotent


def test_migration_3_shares_the_patient_registry(pg_empty_url):
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        pgschema.upgrade(conn, target=2)
        assert "patients" not in _tables(conn)
        assert pgschema.upgrade(conn, target=3) == [3]
        assert {"patients", "merges", "history"} <= _tables(conn)
        assert {"ipp", "ins", "feeding_json", "merged_into"} <= _columns(conn, "patients")


def test_migration_4_puts_held_sends_in_the_open_indexes_and_remembers_withdrawn_ins(pg_empty_url):
    # A held send holds its FIFO key back: the claim's "older open row of this key" lookup and the
    # identity-hold release must find held rows through the partial indexes, not by a scan of
    # every finished delivery (measured: 0.35 ms -> 26 ms per claim at 200,000 done rows).
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        pgschema.upgrade(conn, target=3)
        conn.execute(
            "INSERT INTO deliveries (message_uid, route, step, destination, state, created_at, not_before,"
            " next_attempt, updated_at) VALUES ('m1', 'r', 's', 'dmp', 'held', 1, 1, 1, 1)"
        )
        assert pgschema.upgrade(conn, target=4) == [4]  # later migrations are not its subject
        predicates = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename='deliveries'"
                " AND indexname IN ('deliveries_open', 'deliveries_open_key')"
            ).fetchall()
        )
        assert len(predicates) == 2 and all("'held'" in d for d in predicates.values())
        assert "withdrawn_ins" in _columns(conn, "patients")
        assert conn.execute("SELECT state FROM deliveries").fetchall() == [("held",)]


def test_engine_refuses_older_and_newer_schemas(pg_empty_url):
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        with pytest.raises(UnknownSchema, match="pfi db upgrade"):
            pgschema.check(conn)
        pgschema.upgrade(conn)
        assert pgschema.check(conn) == pgschema.LATEST
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (pgschema.LATEST + 1,))
        with pytest.raises(UnknownSchema, match="newer than this engine"):
            pgschema.check(conn)
        with pytest.raises(UnknownSchema):
            pgschema.upgrade(conn)


def _pfi(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_pfi_db_upgrade_then_run_on_the_upgraded_schema_only(pg_empty_url, tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound()}, engine={"journal": pg_empty_url})
    refused = _pfi("run", "--config", str(cfg), "--data", str(tmp_path / "data"), timeout=60)
    assert refused.returncode != 0
    assert "pfi db upgrade" in refused.stdout + refused.stderr
    status = _pfi("db", "status", "--config", str(cfg))
    assert status.returncode == 1 and "version 0" in status.stdout
    upgraded = _pfi("db", "upgrade", "--config", str(cfg))
    assert upgraded.returncode == 0 and "applied migrations: 1, 2, 3, 4" in upgraded.stdout
    assert "already up to date" in _pfi("db", "upgrade", "--config", str(cfg)).stdout
