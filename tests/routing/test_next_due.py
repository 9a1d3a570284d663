"""queue.next_due: when a destination worker should look at its queue again."""

from __future__ import annotations

import pytest

from engine.journal import schema
from engine.journal.sqlite import connect
from engine.journal import deliveries as queue
from engine.routing.plan import NewDelivery

NOW = 1_000_000.0


def _queue(conn, key: str, at: float) -> int:
    new = NewDelivery(route="r", step="s", destination="dest", fifo_key=key, not_before=at, payload=b"x")
    queue.enqueue(conn, f"uid-{key}-{at}", new, "n1", NOW)
    return conn.execute("SELECT max(id) FROM deliveries").fetchone()[0]


def _set(conn, delivery_id: int, state: str, next_attempt: float) -> None:
    conn.execute("UPDATE deliveries SET state=?, next_attempt=? WHERE id=?", (state, next_attempt, delivery_id))


@pytest.fixture
def sqlite_conn(tmp_path):
    conn = connect(tmp_path / "journal.sqlite")
    schema.upgrade(conn)
    return conn


def test_deliveries_behind_a_head_waiting_for_its_retry_are_not_due(sqlite_conn):
    head = _queue(sqlite_conn, "K", NOW)
    _queue(sqlite_conn, "K", NOW)  # due, but must wait for the head (FIFO per key)
    _set(sqlite_conn, head, "pending", NOW + 30)  # the head failed: retry in 30 s
    assert queue.claim_batch(sqlite_conn, "dest", NOW, "n1") == []
    assert queue.next_due(sqlite_conn, "dest") == NOW + 30


def test_a_key_being_sent_elsewhere_is_not_due_other_keys_are(sqlite_conn):
    head = _queue(sqlite_conn, "K", NOW)
    _queue(sqlite_conn, "K", NOW)
    _set(sqlite_conn, head, "sending", NOW)  # another node's send in flight
    assert queue.next_due(sqlite_conn, "dest") is None
    _queue(sqlite_conn, "L", NOW + 5)
    assert queue.next_due(sqlite_conn, "dest") == NOW + 5
