"""The batched queue writes on PostgreSQL: a planning batch, its claim and its successes in a few
statements, each delivery still named by its own id and claimed with its own payload."""

from __future__ import annotations

import time

import psycopg

from engine.journal.dialect import POSTGRES
from engine.journal.postgres import PgConnection, PgPayloads
from engine.journal import deliveries as queue
from engine.routing.plan import NewDelivery, Plan


def test_a_batch_of_plans_is_queued_claimed_and_finished_with_its_own_ids_and_payloads(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConnection(raw)
        uids = [f"m{i:03d}" for i in range(300)]
        for uid in uids:
            conn.execute(
                "INSERT INTO messages (uid, received_at, channel, state, size) VALUES (?,?,?,?,?)",
                (uid, time.time(), "in", "received", 1),
            )
            conn.execute("INSERT INTO payloads (uid, raw) VALUES (?,?)", (uid, f"raw of {uid}".encode()))
        plans = [
            Plan(
                uid,
                deliveries=[
                    NewDelivery(route="r", step="s", destination="d", fifo_key=uid, not_before=0, payload=None)
                ],
            )
            for uid in uids
        ]
        with raw.transaction():
            assert queue.apply_plans(conn, plans, "n") == ["d"] * 300
        ids = dict(conn.execute("SELECT message_uid, id FROM deliveries").fetchall())
        queued = conn.execute("SELECT message_uid, detail FROM events WHERE state='queued'").fetchall()
        assert len(queued) == 300 and all(detail.startswith(f"delivery {ids[uid]} (") for uid, detail in queued)
        with raw.transaction():
            claimed = queue.claim_batch(conn, "d", time.time(), "n", limit=64, dialect=POSTGRES)
            raws = PgPayloads.messages_raw(conn, [d.message_uid for d in claimed])
            follows = queue.finish_all(conn, [(d, "AA") for d in claimed], "done", "n", time.time())
        assert [d.message_uid for d in claimed] == uids[:64]
        assert all(raws[d.message_uid] == f"raw of {d.message_uid}".encode() for d in claimed)
        assert follows == ["on_success"] * 64
        done = conn.execute("SELECT count(*) FROM deliveries WHERE state='done'").fetchone()[0]
        assert done == 64
