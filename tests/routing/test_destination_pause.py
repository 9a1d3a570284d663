"""Paused destinations in the journal (engine/journal/deliveries.py), on SQLite and PostgreSQL: the
refused delivery goes back to pending, nothing is dead-lettered, claims resume after `resume`."""

from __future__ import annotations

import time

import pytest

from engine.journal import deliveries as queue
from engine.routing.plan import NewDelivery


@pytest.fixture(params=["sqlite", "postgresql"])
def conn(request, tmp_path):
    if request.param == "sqlite":
        from engine.journal import schema
        from engine.journal.sqlite import connect

        connection = connect(tmp_path / "journal.sqlite")
        schema.upgrade(connection)
        yield connection
        connection.close()
        return
    import psycopg

    from engine.journal.postgres import PgConnection

    raw = psycopg.connect(request.getfixturevalue("pg_url"), autocommit=True)
    yield PgConnection(raw)
    raw.close()


def _claim_one(conn, uid: str, now: float) -> queue.Delivery:
    queue.enqueue(
        conn,
        uid,
        NewDelivery(route="r", step="s", destination="dmp", fifo_key="k", not_before=0, payload=b"x"),
        "n1",
        now,
    )
    [delivery] = queue.claim_batch(conn, "dmp", now, "n1")
    return delivery


def test_pause_keeps_the_delivery_and_resume_ends_it(conn):
    now = time.time()
    delivery = _claim_one(conn, "m1", now)
    queue.pause(conn, delivery, "TLS_CLIENT_CERT_REFUSED: expired (certificate of structure 1)", "n1", now)
    queue.pause(conn, delivery, "second report of the same refusal", "n1", now)  # lease lost: ignored
    state, attempts, error = conn.execute(
        "SELECT state, attempts, last_error FROM deliveries WHERE id=?", (delivery.id,)
    ).fetchall()[0]
    assert (state, attempts) == ("pending", 1) and "structure 1" in error
    reason, since = queue.pause_state(conn, "dmp")
    assert reason.startswith("TLS_CLIENT_CERT_REFUSED") and since == pytest.approx(now)
    assert queue.pause_state(conn, "other") is None
    read = lambda sql, args=(): conn.execute(sql, args).fetchall()  # noqa: E731
    assert list(queue.paused_destinations(read)) == ["dmp"]
    assert queue.resume(conn, "dmp", "an operator", "n1", now + 1)
    assert queue.pause_state(conn, "dmp") is None and queue.paused_destinations(read) == {}
    assert not queue.resume(conn, "dmp", "an operator", "n1", now + 2)
    [again] = queue.claim_batch(conn, "dmp", now + 2, "n1")
    assert again.id == delivery.id
    events = [row[0] for row in conn.execute("SELECT state FROM events ORDER BY id").fetchall()]
    assert "dead-letter" not in events and events.count(queue.PAUSED) == 1
