"""Claims on the shared journal keep FIFO per key while another node's claim holds row locks."""

from __future__ import annotations

from engine.journal.dialect import POSTGRES
from engine.journal.postgres import connect
from engine.journal import deliveries as queue
from engine.routing.plan import NewDelivery


def test_a_claim_stops_a_key_at_rows_another_node_is_claiming(pg_url):
    mine, other = connect(pg_url), connect(pg_url)
    try:
        for i in range(5):
            new = NewDelivery(route="r", step="s", destination="dest", fifo_key="K", not_before=0, payload=b"x")
            queue.enqueue(mine, f"uid-{i}", new, "n1", 0)
        ids = [row[0] for row in mine.execute("SELECT id FROM deliveries ORDER BY id").fetchall()]
        other.raw.execute("BEGIN")  # another node's claim in progress holds the 2nd and 3rd rows
        other.raw.execute("SELECT id FROM deliveries WHERE id = ANY(%s) FOR UPDATE", (ids[1:3],))
        mine.raw.execute("BEGIN")
        claimed = [d.id for d in queue.claim_batch(mine, "dest", 1.0, "n2", dialect=POSTGRES)]
        mine.raw.execute("COMMIT")
        assert claimed == ids[:1], "the 4th and 5th must not jump over the locked ones"
    finally:
        other.close()
        mine.close()
