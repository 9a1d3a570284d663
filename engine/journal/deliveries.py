"""Durable outbound queues (the deliveries table): SQL operations run in the journal's writer
thread (journal.submit). Part of the journal: routing, the commands and the tests call these
functions rather than write SQL of their own.

A delivery row is one message for one destination. FIFO holds per (destination, fifo_key): a
delivery is not sent while an older one of the same key is still pending, so a replace never
overtakes its original, while other keys proceed. `not_before` defers a send; a pending send can be
cancelled (operator, or a newer version / delete of the same document inside the delay window).

The SQL runs on SQLite and on PostgreSQL (through engine/journal/postgres.py's connection, which
takes the same `?` placeholders). State changes that may race with another node are conditional
UPDATEs (`... AND state='pending' RETURNING`), and a claim locks its rows (`FOR UPDATE SKIP
LOCKED` on PostgreSQL, where the journal's `dialect` says so), so one delivery is sent by one node.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Container
from dataclasses import dataclass

from engine.journal import events as journal_events
from engine.journal.dialect import SQLITE, Dialect
from engine.journal.plans import NewDelivery, Plan

PENDING, SENDING, DONE, DEAD, CANCELLED = "pending", "sending", "done", "dead", "cancelled"
#: put aside by an operator (`pfi hold`): never sent until `pfi release`; it holds its key back
HELD = "held"


@dataclass
class Delivery:
    id: int
    message_uid: str
    route: str
    step: str
    destination: str
    fifo_key: str
    doc_id: str
    action: str
    payload: bytes | None
    attempts: int
    not_before: float


_COLUMNS = "id, message_uid, route, step, destination, fifo_key, doc_id, action, payload, attempts, not_before"


def _event(conn, uid: str, state: str, channel: str, detail: str, node: str, now: float) -> None:
    journal_events.write_one(conn, uid, now, state, channel, detail, node)


def apply_plan(conn, plan: Plan, node: str, now: float | None = None) -> list[str]:
    """Write a routing result; returns the destinations that got new work."""
    now = time.time() if now is None else now
    if plan.state is not None:  # follow-up plans leave the message state alone
        # Only from `received`: a plan computed twice (a replaced dispatcher) is written once.
        if not conn.execute(
            "UPDATE messages SET state=? WHERE uid=? AND state='received'", (plan.state, plan.message_uid)
        ).rowcount:
            return []
    for state, detail in plan.events:
        _event(conn, plan.message_uid, state, "", detail, node, now)
    touched = []
    for new in plan.deliveries:
        _queue(conn, plan.message_uid, new, node, now)
        touched.append(new.destination)
    return touched


def apply_plans(conn, plans: list[Plan], node: str, now: float | None = None) -> list[str]:
    """`apply_plan` for each plan, in order, with a few statements per run of plans instead of
    three or more per message (each one a round trip on PostgreSQL, in the leader's writer that
    also commits its node's intake). A plan that replaces or deletes a document is applied on its
    own, after the plans before it: it must see their deliveries to cancel superseded ones."""
    now = time.time() if now is None else now
    touched: list[str] = []
    run: list[Plan] = []
    for plan in plans:
        if any(_superseded_target(new) for new in plan.deliveries):
            touched += _apply_run(conn, run, node, now)
            run = []
            touched += apply_plan(conn, plan, node, now)
        else:
            run.append(plan)
    return touched + _apply_run(conn, run, node, now)


def _apply_run(conn, plans: list[Plan], node: str, now: float) -> list[str]:
    """Plans without superseded sends: state changes grouped by state, events and deliveries as
    multi-row statements."""
    if not plans:
        return []
    moved: set[str] = set()
    for state in {p.state for p in plans if p.state is not None}:
        uids = [p.message_uid for p in plans if p.state == state]
        # Only from `received`: a plan computed twice (a replaced dispatcher) is written once.
        moved.update(
            uid
            for (uid,) in conn.execute(
                f"UPDATE messages SET state=? WHERE state='received' AND uid IN ({_marks(uids)}) RETURNING uid",
                (state, *uids),
            ).fetchall()
        )
    kept = [p for p in plans if p.state is None or p.message_uid in moved]
    events = [(p.message_uid, now, state, "", detail, node) for p in kept for state, detail in p.events]
    news = [(p.message_uid, new) for p in kept for new in p.deliveries]
    ids = _insert_deliveries(conn, news, node, now)
    for (uid, new), delivery_id in zip(news, ids):
        when = f" not before {_fmt(new.not_before)}" if new.not_before > now else ""
        events.append(
            (uid, now, "queued", new.destination, f"delivery {delivery_id} ({new.action or 'message'}){when}", node)
        )
    journal_events.write(conn, events)
    return [new.destination for _, new in news]


_INSERT_ROWS = 64  # rows per multi-row INSERT: 14 parameters each, within SQLite's oldest limit (999)


def _insert_deliveries(conn, news: list[tuple[str, NewDelivery]], node: str, now: float) -> list[int]:
    """Pending deliveries as multi-row INSERTs; their ids in the order given (RETURNING of a
    multi-row VALUES insert follows the VALUES order on SQLite and PostgreSQL, as ORMs rely on)."""
    ids: list[int] = []
    for start in range(0, len(news), _INSERT_ROWS):
        chunk = news[start : start + _INSERT_ROWS]
        params = [
            v
            for uid, new in chunk
            for v in (
                uid,
                new.route,
                new.step,
                new.destination,
                new.fifo_key,
                new.doc_id,
                new.action,
                PENDING,
                new.payload,
                now,
                new.not_before,
                new.not_before,
                now,
                node,
            )
        ]
        rows = conn.execute(
            "INSERT INTO deliveries (message_uid, route, step, destination, fifo_key, doc_id, action, state,"
            " payload, created_at, not_before, next_attempt, updated_at, node) VALUES "
            + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk))
            + " RETURNING id",
            params,
        ).fetchall()
        ids += [row[0] for row in rows]
    return ids


def _superseded_target(new: NewDelivery) -> str:
    """The document whose pending initial send `new` supersedes ('' for a plain send)."""
    return new.replaced_id if new.action == "replace" else new.doc_id if new.action == "delete" else ""


def enqueue(conn, uid: str, new: NewDelivery, node: str, now: float) -> None:
    """Queue one delivery of message `uid` (a plan's, or one a connector makes: a ZAM)."""
    _queue(conn, uid, new, node, now)


def _queue(conn, uid: str, new: NewDelivery, node: str, now: float) -> None:
    action, state, detail, reason = new.action, PENDING, "", ""
    cancelled = _cancel_superseded(conn, uid, new, node, now)
    if cancelled and action == "replace":
        action = "initial"  # the original never left: this version is the first the destination gets
        # An operator's hold was about the document, not one version of it: it stands on this one.
        for old_id, old_uid, old_state, old_reason in cancelled:
            if old_state == HELD and not old_reason.startswith(IDENTITY_WAIT):
                state, reason = HELD, old_reason
                detail = (
                    f"held: carried over from delivery {old_id}, superseded by this version"
                    f" ({last_event(_reader(conn), old_uid, HELD) or old_reason})"
                )
    if cancelled and action == "delete":
        state, detail = CANCELLED, "nothing to delete: the initial send was cancelled before it left"
    delivery_id = conn.execute(
        "INSERT INTO deliveries (message_uid, route, step, destination, fifo_key, doc_id, action, state,"
        " payload, created_at, not_before, next_attempt, updated_at, node, last_error)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
        (
            uid,
            new.route,
            new.step,
            new.destination,
            new.fifo_key,
            new.doc_id,
            action,
            state,
            new.payload,
            now,
            new.not_before,
            new.not_before,
            now,
            node,
            reason,
        ),
    ).fetchall()[0][0]
    when = f" not before {_fmt(new.not_before)}" if new.not_before > now else ""
    queued = f"delivery {delivery_id} ({action or 'message'}){when}"
    if state == HELD:
        _event(conn, uid, "queued", new.destination, queued, node, now)
        _event(conn, uid, HELD, new.destination, f"delivery {delivery_id} {detail}", node, now)
        return
    _event(conn, uid, "queued" if state == PENDING else "cancelled", new.destination, detail or queued, node, now)


def _reader(conn):
    return lambda sql, args=(): conn.execute(sql, args).fetchall()


def _cancel_superseded(conn, uid: str, new: NewDelivery, node: str, now: float) -> list[tuple]:
    """Cancel the never-attempted initial sends (pending or held) of the document this message
    replaces or deletes; (id, message uid, former state, former reason) of each."""
    target = _superseded_target(new)
    if not target:
        return []
    # Only an *initial* send is superseded: a pending replace must still go out before a later
    # replace or delete, or the destination would be asked to act on a version it never got. A held
    # one is superseded too (the DMP never saw it). Conditional: a send another node claimed
    # meanwhile is no longer pending or held and stays.
    found = conn.execute(
        "SELECT id, message_uid, state, last_error FROM deliveries WHERE destination=? AND doc_id=?"
        " AND state IN (?, ?) AND attempts=0 AND action='initial'",
        (new.destination, target, PENDING, HELD),
    ).fetchall()
    if not found:
        return []
    rows = conn.execute(
        f"UPDATE deliveries SET state=?, last_error=?, updated_at=? WHERE id IN ({_marks(found)})"
        " AND state IN (?, ?) RETURNING id",
        (CANCELLED, f"superseded by {new.action} in message {uid}", now, *(r[0] for r in found), PENDING, HELD),
    ).fetchall()
    done = {r[0] for r in rows}
    cancelled = [tuple(r) for r in found if r[0] in done]
    for delivery_id, old_uid, _, _ in cancelled:
        _event(
            conn,
            old_uid,
            "cancelled",
            new.destination,
            f"delivery {delivery_id} cancelled: superseded by {new.action} in message {uid}",
            node,
            now,
        )
    return cancelled


def claim_batch(
    conn,
    destination: str,
    now: float,
    node: str,
    limit: int = 64,
    lease_until: float | None = None,
    dialect: Dialect = SQLITE,
) -> list[Delivery]:
    """Up to `limit` due deliveries in send order. A delivery enters the batch only if every older
    pending or sending delivery of its key is already in the batch: rows skipped by the candidate
    query (not yet due, in flight, held, or locked by another node's claim) hold their key back."""
    # Rows queued behind a send in flight or a retry backing off are not even candidates: a long
    # queue of one blocked key must not fill the window and starve the other keys.
    rows = [
        Delivery(*row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM deliveries d WHERE destination=? AND state=? AND next_attempt<=?"
            # Two NOT EXISTS, each with its state as an equality: the (destination, fifo_key,
            # state) index then reaches only the key's open rows. With the states OR-ed in one
            # subquery it scanned every row the key ever had (a creator's ZAMs: all of them,
            # done ones included), per candidate: a claim took ~1 s at 100,000, holding the writer.
            " AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.destination=d.destination AND o.fifo_key=d.fifo_key"
            " AND o.state IN (?, ?) AND o.id<d.id)"
            " AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.destination=d.destination AND o.fifo_key=d.fifo_key"
            " AND o.state=? AND o.next_attempt>? AND o.id<d.id)"
            f" ORDER BY id LIMIT ?{dialect.lock_rows}",
            # A window wider than the batch only where rows may be left out for a key held back.
            (destination, PENDING, now, SENDING, HELD, PENDING, now, limit * 4 if dialect.lock_rows else limit),
        ).fetchall()
    ]
    if not rows:
        return []
    batch = _oldest_of_their_keys(conn, destination, rows, limit) if dialect.lock_rows else rows
    lease_until = now + 300.0 if lease_until is None else lease_until
    # One statement for the batch, not one per row: each SQLite step hands the GIL over.
    ids = [d.id for d in batch]
    for start in range(0, len(ids), 400):  # SQLite's bound-parameter limit
        chunk = ids[start : start + 400]
        conn.execute(
            f"UPDATE deliveries SET state=?, node=?, lease_until=?, updated_at=? WHERE id IN ({_marks(chunk)})",
            (SENDING, node, lease_until, now, *chunk),
        )
    return batch


def _oldest_of_their_keys(conn, destination: str, rows: list[Delivery], limit: int) -> list[Delivery]:
    """The candidates whose every older open delivery of their key is taken before them. Only a
    journal whose claims skip rows (another node's claim holds them) needs this look: on SQLite
    the candidate query sees every row, and its two NOT EXISTS already leave out any row with an
    older one of its key in flight, held or not yet due; the older due ones are candidates
    before it, in id order."""
    open_ids = _open_ids_by_key(conn, destination, {d.fifo_key for d in rows}, rows[-1].id)
    batch: list[Delivery] = []
    taken: dict[str, int] = {}
    for delivery in rows:
        key = delivery.fifo_key
        # Taken rows are the key's oldest open ones, in order: any other older open row blocks.
        if bisect.bisect_left(open_ids.get(key, []), delivery.id) != taken.get(key, 0):
            continue
        taken[key] = taken.get(key, 0) + 1
        batch.append(delivery)
        if len(batch) >= limit:
            break
    return batch


def _open_ids_by_key(conn, destination: str, keys: set[str], up_to: int) -> dict[str, list[int]]:
    """Ids of the pending or sending deliveries of `keys` up to id `up_to`, sorted, per key: one
    query for the whole batch."""
    found: dict[str, list[int]] = {}
    ordered = sorted(keys)
    for i in range(0, len(ordered), 400):  # SQLite's bound-parameter limit
        chunk = ordered[i : i + 400]
        for key, delivery_id in conn.execute(
            f"SELECT fifo_key, id FROM deliveries WHERE destination=? AND fifo_key IN ({','.join('?' * len(chunk))})"
            " AND state IN (?, ?, ?) AND id<=? ORDER BY id",
            (destination, *chunk, PENDING, SENDING, HELD, up_to),
        ).fetchall():
            found.setdefault(key, []).append(delivery_id)
    return found


def _marks(values) -> str:
    return ",".join("?" * len(values))


def release(conn, deliveries: list[Delivery], now: float, node: str) -> None:
    """Give back claimed deliveries that were not attempted (an earlier one of their key failed),
    if they are still this node's."""
    conn.executemany(
        "UPDATE deliveries SET state=?, updated_at=?" + _STILL_MINE, [(PENDING, now, d.id, node) for d in deliveries]
    )


def next_due(conn, destination: str) -> float | None:
    """When a send of this destination may next be claimed: the earliest due time among the
    pending deliveries that head their key. One queued behind an older delivery of its key (waiting
    for a retry, or being sent by another node) does not count: its due time is already past, and
    waking for it finds nothing to claim, so the worker would poll in a loop until the head's retry."""
    row = conn.execute(
        "SELECT min(next_attempt) FROM deliveries WHERE state=? AND id IN (SELECT min(id) FROM deliveries"
        " WHERE destination=? AND state IN (?, ?, ?) GROUP BY fifo_key)",
        (PENDING, destination, PENDING, SENDING, HELD),
    ).fetchone()
    return row[0]


_STILL_MINE = " WHERE id=? AND state='sending' AND node=?"


def finish(
    conn,
    delivery: Delivery,
    outcome: str,
    detail: str,
    node: str,
    now: float,
    retry_at: float | None = None,
    follow_ups: Container = (),
    error: FailureError | None = None,
) -> str | None:
    """Record an attempt. Returns 'on_success' / 'on_failure' when the step's follow-ups are due;
    those of `follow_ups` ((route, step, kind) that have steps) are marked due in this same
    transaction (`mark_follow_ups`, with the failure's `error`). Only while the send is still
    this node's: a node that missed its lease (another node took the send over) must not
    overwrite the new owner's state."""
    kind = _finish(conn, delivery, outcome, detail, node, now, retry_at)
    if kind is not None:
        mark_follow_ups(conn, [(delivery, kind)], follow_ups, error)
    return kind


def _finish(
    conn, delivery: Delivery, outcome: str, detail: str, node: str, now: float, retry_at: float | None
) -> str | None:
    attempts = delivery.attempts + 1
    if outcome == "retry":
        if _taken_over(
            conn.execute(
                "UPDATE deliveries SET state=?, attempts=?, next_attempt=?, last_error=?, updated_at=?" + _STILL_MINE,
                (PENDING, attempts, retry_at, detail, now, delivery.id, node),
            ),
            conn,
            delivery,
            node,
            now,
        ):
            return None
        _event(
            conn,
            delivery.message_uid,
            "retry",
            delivery.destination,
            f"delivery {delivery.id} attempt {attempts}: {detail}; next at {_fmt(retry_at)}",
            node,
            now,
        )
        return None
    state = DONE if outcome == "done" else DEAD
    if _taken_over(
        conn.execute(
            "UPDATE deliveries SET state=?, attempts=?, last_error=?, updated_at=?" + _STILL_MINE,
            (state, attempts, "" if state == DONE else detail, now, delivery.id, node),
        ),
        conn,
        delivery,
        node,
        now,
    ):
        return None
    _event(
        conn,
        delivery.message_uid,
        "sent" if state == DONE else "dead-letter",
        delivery.destination,
        f"delivery {delivery.id}: {detail}",
        node,
        now,
    )
    if state == DEAD:
        return "on_failure"
    left = conn.execute(
        "SELECT count(*) FROM deliveries WHERE message_uid=? AND route=? AND step=? AND state IN (?, ?, ?)",
        (delivery.message_uid, delivery.route, delivery.step, PENDING, SENDING, HELD),
    ).fetchone()[0]
    return "on_success" if left == 0 else None


def _taken_over(cursor, conn, delivery: Delivery, node: str, now: float) -> bool:
    if cursor.rowcount:
        return False
    _event(
        conn,
        delivery.message_uid,
        "lease-lost",
        delivery.destination,
        f"delivery {delivery.id}: outcome of node {node} not recorded, the send was no longer its own",
        node,
        now,
    )
    return True


def finish_all(
    conn,
    results: list,
    outcome: str,
    node: str,
    now: float,
    retry_at: float | None = None,
    follow_ups: Container | None = None,
) -> list[str | None]:
    """`finish` for each (delivery, detail) or (delivery, detail, failure error) of `results`, in
    order; successes (the common case) in a few statements for the whole list instead of three
    per delivery. Given `follow_ups` (the (route, step, kind) with steps to run), a success is
    looked at for its follow-ups only if its step has some; without it, every one is."""
    if outcome != "done":
        return [
            finish(conn, r[0], outcome, r[1], node, now, retry_at, follow_ups or (), r[2] if len(r) > 2 else None)
            for r in results
        ]
    kinds = _finish_done(conn, results, node, now, follow_ups)
    mark_follow_ups(conn, [(r[0], k) for r, k in zip(results, kinds) if k], follow_ups or ())
    return kinds


def _finish_done(conn, results: list, node: str, now: float, follow_ups: Container | None) -> list[str | None]:
    if not results:
        return []
    ids = [d.id for d, _ in results]
    mine = {
        row[0]
        for row in conn.execute(
            f"UPDATE deliveries SET state=?, attempts=attempts+1, last_error='', updated_at=? WHERE id IN ({_marks(ids)})"
            " AND state='sending' AND node=? RETURNING id",
            (DONE, now, *ids, node),
        ).fetchall()
    }
    if len(mine) < len(results):
        for d, _ in results:
            if d.id not in mine:
                _taken_over(_NoRows, conn, d, node, now)
        results = [(d, detail) for d, detail in results if d.id in mine]
        if not results:
            return [None] * len(ids)
    journal_events.write(
        conn, [(d.message_uid, now, "sent", d.destination, f"delivery {d.id}: {detail}", node) for d, detail in results]
    )
    if follow_ups is not None:  # a step with nothing to run after it needs no look at its siblings
        results = [(d, detail) for d, detail in results if (d.route, d.step, "on_success") in follow_ups]
        if not results:
            return [None] * len(ids)
    uids = sorted({d.message_uid for d, _ in results})
    still_open = {
        tuple(row)
        for row in conn.execute(
            f"SELECT DISTINCT message_uid, route, step FROM deliveries WHERE message_uid IN ({_marks(uids)})"
            " AND state IN (?, ?)",
            (*uids, PENDING, SENDING),
        ).fetchall()
    }
    # A step's follow-ups are due once, with the last of its deliveries to finish.
    last_of_step = {(d.message_uid, d.route, d.step): i for i, (d, _) in enumerate(results)}
    follow = {
        d.id: "on_success"
        if last_of_step[(d.message_uid, d.route, d.step)] == i and (d.message_uid, d.route, d.step) not in still_open
        else None
        for i, (d, _) in enumerate(results)
    }
    return [follow.get(i) for i in ids]


#: (code, label, local) of a failure, as a failure ZAM reports it (connectors' Outcome.error())
FailureError = tuple[str, str, bool]
_MARK_SEP = "\x1f"


def mark_follow_ups(
    conn, due: list[tuple[Delivery, str]], follow_ups: Container, error: FailureError | None = None
) -> None:
    """Make due follow-ups durable with the finish that made them due; only those whose step has
    steps to run (`follow_ups` holds their (route, step, kind)): the others cost nothing. An
    on_failure mark keeps `error`, so that a follow-up resumed after a crash reports the
    destination's own code, not only its text."""
    marked = [(_mark(kind, error), d.id) for d, kind in due if (d.route, d.step, kind) in follow_ups]
    if marked:
        conn.executemany("UPDATE deliveries SET follow_up=? WHERE id=?", marked)


def _mark(kind: str, error: FailureError | None) -> str:
    if kind != "on_failure" or error is None:
        return kind
    code, label, local = error
    return _MARK_SEP.join([kind, code, "1" if local else "0", label[:500]])


def follow_up_kind(mark: str) -> str:
    """'on_success' or 'on_failure' of a deliveries.follow_up value."""
    return mark.split(_MARK_SEP, 1)[0]


def _marked_error(mark: str) -> FailureError | None:
    parts = mark.split(_MARK_SEP, 3)
    return (parts[1], parts[3], parts[2] == "1") if len(parts) == 4 else None


def follow_up_done(conn, delivery_id: int) -> bool:
    """In the transaction that applies a follow-up's plan: it is no longer due. False when it was
    not due (any more): another run applied it, so this one must not."""
    cursor = conn.execute("UPDATE deliveries SET follow_up=NULL WHERE id=? AND follow_up IS NOT NULL", (delivery_id,))
    return cursor.rowcount == 1


def pending_follow_ups(conn, node: str) -> list[tuple[Delivery, str, str, str, FailureError | None]]:
    """Follow-ups this node made due and never applied (it stopped in between): (delivery, kind,
    its state, its last error, the failure's (code, label, local) when it was recorded), oldest
    first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS}, follow_up, state, last_error FROM deliveries"
        " WHERE follow_up IS NOT NULL AND node=? ORDER BY id",
        (node,),
    ).fetchall()
    width = len(_COLUMNS.split(","))
    pending = []
    for row in rows:
        mark, state, last_error = row[width:]
        pending.append((Delivery(*row[:width]), follow_up_kind(mark), state, last_error, _marked_error(mark)))
    return pending


class _NoRows:
    rowcount = 0


def reset_in_flight(conn, node: str, dialect: Dialect) -> int:
    """After a restart, sends that were in flight are attempted again (at-least-once)."""
    names, where = _each_destination(dialect)
    done = conn.execute(
        f"{names}UPDATE deliveries SET state=? WHERE {where}state=? AND (node=? OR lease_until<?)",
        (PENDING, SENDING, node, time.time()),
    )
    # Python's sqlite3 gives no rowcount to a statement that starts with WITH
    return conn.execute("SELECT changes()").fetchone()[0] if names else done.rowcount


#: Every destination of `deliveries`, one index seek each (a loose scan of SQLite's (destination,
#: state, id) index): a query of one state then seeks each (destination, state) instead of
#: reading the whole index, every finished delivery included.
_DESTINATION_NAMES = (
    "WITH RECURSIVE names(name) AS (SELECT (SELECT min(destination) FROM deliveries)"
    " UNION ALL SELECT (SELECT min(destination) FROM deliveries WHERE destination > name)"
    " FROM names WHERE name IS NOT NULL) "
)


def _each_destination(dialect: Dialect) -> tuple[str, str]:
    """(WITH clause, WHERE condition) naming every destination, where the journal needs them to
    read open rows without reading finished ones (SQLite); nothing where it does not."""
    if dialect.open_rows_indexed:
        return "", ""
    return _DESTINATION_NAMES, "destination IN (SELECT name FROM names) AND "


def cancel(conn, ident: str, reason: str, node: str, now: float, operator: str = "") -> int:
    """Cancel pending or held deliveries by delivery id or message id."""
    return _operator_move(conn, ident, (PENDING, HELD), CANCELLED, "cancelled", reason, node, now, operator)


def hold(conn, ident: str, reason: str, node: str, now: float, operator: str = "") -> int:
    """Put pending deliveries aside (`pfi hold`): never sent until released; FIFO order is kept."""
    return _operator_move(conn, ident, (PENDING,), HELD, "held", reason, node, now, operator)


def release_held(conn, ident: str, reason: str, node: str, now: float, operator: str = "") -> int:
    """Give held deliveries back to their queue (a deferral still running keeps its time)."""
    return _operator_move(conn, ident, (HELD,), PENDING, "released", reason, node, now, operator)


def _operator_move(
    conn, ident: str, sources: tuple, target: str, event: str, reason: str, node: str, now: float, operator: str
) -> int:
    """Move deliveries (by delivery id or message id) from `sources` to `target`, one journal
    event each naming the operator who did it."""
    column, key = ("id", int(ident)) if ident.isdigit() else ("message_uid", ident)
    rows = conn.execute(
        f"UPDATE deliveries SET state=?, last_error=?, updated_at=? WHERE {column}=? AND state IN ({_marks(sources)})"
        " RETURNING id, message_uid, destination",
        (target, reason, now, key, *sources),
    ).fetchall()
    who = f" by {operator}" if operator else ""
    for delivery_id, uid, destination in rows:
        _event(conn, uid, event, destination, f"delivery {delivery_id} {event}{who}: {reason}", node, now)
    return len(rows)


def requeue_message(conn, uid: str, node: str, now: float, operator: str = "") -> bool:
    """Send a journaled message through the current routes again (`pfi replay`). A rejected frame
    kept only in part (over its channel's rejected_quota) is never replayed: it is not the message."""
    cur = conn.execute(
        "UPDATE messages SET state='received' WHERE uid=? AND COALESCE(reason, '') NOT LIKE ?", (uid, "[truncated:%")
    )
    if cur.rowcount:
        who = f" by {operator}" if operator else ""
        _event(conn, uid, "replayed", "", f"re-queued through the current routes{who}", node, now)
    return bool(cur.rowcount)


def messages_to_replay(conn, state: str | None = None, dead: bool = False, channel: str | None = None) -> list[str]:
    """Ids of the messages in `state`, or with a dead-lettered delivery, optionally of one channel
    (`pfi replay --state/--dead/--channel`), oldest first."""
    sql, params = "SELECT uid FROM messages m WHERE 1=1", []
    if state:
        sql += " AND m.state=?"
        params.append(state)
    if dead:
        sql += " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.message_uid=m.uid AND d.state='dead')"
    if channel:
        sql += " AND m.channel=?"
        params.append(channel)
    return [row[0] for row in conn.execute(sql + " ORDER BY m.id", params).fetchall()]


_WAITING_OR_DEAD = "state IN ('pending', 'sending', 'held', 'dead')"


def queue_depths(read, destinations=None) -> list[tuple]:
    """(destination, state, count, oldest created_at) of the deliveries still waiting or dead:
    what the queue gauges show every 10 s. Given `destinations`, each (destination, state) pair
    is an index seek: without a destination, SQLite's (destination, state, id) index is read
    whole, every finished delivery included (110 ms at a million, every 10 s; 0.3 ms by seeks)."""
    if destinations is None:
        return read(
            f"SELECT destination, state, count(*), min(created_at) FROM deliveries WHERE {_WAITING_OR_DEAD}"
            " GROUP BY destination, state"
        )
    names = sorted(destinations)
    if not names:
        return []
    return read(
        "SELECT destination, state, count(*), min(created_at) FROM deliveries"
        f" WHERE destination IN ({_marks(names)}) AND {_WAITING_OR_DEAD} GROUP BY destination, state",
        tuple(names),
    )


def queue_summary(read, dialect: Dialect) -> list[tuple]:
    """(destination, pending, oldest created_at, next attempt, sending, dead, held) per destination."""
    if dialect.open_rows_indexed:
        return read(
            "SELECT destination, sum(CASE WHEN state='pending' THEN 1 ELSE 0 END),"
            " min(CASE WHEN state='pending' THEN created_at END), min(CASE WHEN state='pending' THEN next_attempt END),"
            " sum(CASE WHEN state='sending' THEN 1 ELSE 0 END), sum(CASE WHEN state='dead' THEN 1 ELSE 0 END),"
            " sum(CASE WHEN state='held' THEN 1 ELSE 0 END)"
            " FROM deliveries GROUP BY destination ORDER BY destination"
        )
    return read(
        f"{_DESTINATION_NAMES}SELECT name, {_count('pending')}, {_of_pending('min(created_at)')},"
        f" {_of_pending('min(next_attempt)')}, {_count('sending')}, {_count('dead')}, {_count('held')}"
        " FROM names WHERE name IS NOT NULL ORDER BY name"
    )


def _count(state: str) -> str:
    return f"(SELECT count(*) FROM deliveries WHERE destination=name AND state='{state}')"


def _of_pending(aggregate: str) -> str:
    return f"(SELECT {aggregate} FROM deliveries WHERE destination=name AND state='pending')"


def last_event(read, uid: str, state: str) -> str | None:
    """The detail of the latest `state` event of a message (who held it, and why)."""
    rows = read("SELECT detail FROM events WHERE message_uid=? AND state=? ORDER BY id DESC LIMIT 1", (uid, state))
    return rows[0][0] if rows else None


def held_deliveries(read, dialect: Dialect) -> list[tuple]:
    """(delivery id, destination, message uid, reason with the operator) of every held delivery."""
    names, where = _each_destination(dialect)
    return read(
        f"{names}SELECT id, destination, message_uid, last_error FROM deliveries WHERE {where}state='held' ORDER BY id"
    )


# -- paused destinations ---------------------------------------------------------------------
# A destination that refuses our credentials (the DMP refusing the organisation certificate) is
# paused: its deliveries stay pending, none is dead-lettered, until an operator runs `pfi resume`.
# The pause is a destination-level event in the journal (message_uid '', channel = destination):
# every node and the command line read it, and the events keep who paused and resumed, and why.

PAUSED, RESUMED = "destination-paused", "destination-resumed"


#: the hold reason of a DMP send waiting for its patient's identity to be qualified
IDENTITY_WAIT = "PFI:INS_NOT_QUALIFIED"


def hold_for_identity(conn, delivery: Delivery, reason: str, node: str, now: float) -> bool:
    """A send that must wait for the patient's identity (not dead-lettered): held, visible, and
    released by `release_identity_holds` when a PAM.fr update qualifies its patient. Not an
    attempt: the destination was never called (a newer version may still supersede it).
    False when the send was no longer this node's."""
    if _taken_over(
        conn.execute(
            "UPDATE deliveries SET state=?, last_error=?, updated_at=?" + _STILL_MINE,
            (HELD, reason, now, delivery.id, node),
        ),
        conn,
        delivery,
        node,
        now,
    ):
        return False
    _event(
        conn,
        delivery.message_uid,
        "held",
        delivery.destination,
        f"delivery {delivery.id}: {reason}; waits for a PAM.fr update qualifying the identity",
        node,
        now,
    )
    return True


def release_identity_holds(
    conn, keys, destinations, node: str, now: float, ids=None, cause: str = "a PAM.fr update"
) -> list[str]:
    """Give the sends held for the identity of the patient a PAM.fr update just qualified another
    try (each goes through the gate again; one still unqualified is held again); the held sends
    of other patients stay. `keys`: the patient's INS and IPP values, matched against the PID-3
    identifiers of each held message; `ids` limits it to these deliveries. Returns the
    destinations to wake."""
    keys = {k.strip() for k in keys if k and k.strip()}
    destinations = sorted(destinations)
    if not keys or not destinations:
        return []
    # Through the open-work index (destination, state): held rows only, never the done history.
    candidates = conn.execute(
        "SELECT d.id, m.patient_ids FROM deliveries d JOIN messages m ON m.uid=d.message_uid"
        f" WHERE d.destination IN ({_marks(destinations)}) AND d.state=? AND d.last_error LIKE ?",
        (*destinations, HELD, IDENTITY_WAIT + "%"),
    ).fetchall()
    chosen = [
        i for i, patient_ids in candidates if keys & _identifier_values(patient_ids or "") and (ids is None or i in ids)
    ]
    if not chosen:
        return []
    rows = conn.execute(
        f"UPDATE deliveries SET state=?, next_attempt=?, updated_at=? WHERE id IN ({_marks(chosen)}) AND state=?"
        " RETURNING id, message_uid, destination",
        (PENDING, now, now, *chosen, HELD),
    ).fetchall()
    for delivery_id, uid, destination in rows:
        _event(
            conn,
            uid,
            "released",
            destination,
            f"delivery {delivery_id}: the patient's identity was qualified by {cause}; checked again",
            node,
            now,
        )
    return sorted({destination for _, _, destination in rows})


def _identifier_values(patient_ids: str) -> set[str]:
    """The components of a raw PID-3 field (identifier values among them). A component that
    happens to equal a key (an authority name) only costs a gate check that holds the send again."""
    import re

    return {part.strip() for part in re.split(r"[\^~&\\|\r\n]", patient_ids) if part.strip()}


def pause(conn, delivery: Delivery, reason: str, node: str, now: float) -> None:
    """Put the refused delivery back in its queue and pause its destination."""
    attempts = delivery.attempts + 1
    if _taken_over(
        conn.execute(
            "UPDATE deliveries SET state=?, attempts=?, next_attempt=?, last_error=?, updated_at=?" + _STILL_MINE,
            (PENDING, attempts, now, reason, now, delivery.id, node),
        ),
        conn,
        delivery,
        node,
        now,
    ):
        return
    _event(
        conn,
        delivery.message_uid,
        "paused",
        delivery.destination,
        f"delivery {delivery.id} attempt {attempts}: {reason}; destination paused",
        node,
        now,
    )
    if pause_state(conn, delivery.destination) is None:
        _event(conn, "", PAUSED, delivery.destination, reason, node, now)


def pause_state(conn, destination: str) -> tuple[str, float] | None:
    """(reason, since) when `destination` is paused, else None."""
    row = conn.execute(
        "SELECT state, detail, at FROM events WHERE message_uid='' AND channel=? AND state IN (?, ?)"
        " ORDER BY id DESC LIMIT 1",
        (destination, PAUSED, RESUMED),
    ).fetchall()
    return (row[0][1], row[0][2]) if row and row[0][0] == PAUSED else None


def paused_destinations(read) -> dict[str, tuple[str, float]]:
    """Every paused destination: {name: (reason, since)} (`read(sql, args)` returns rows)."""
    rows = read(
        "SELECT channel, state, detail, at FROM events WHERE message_uid='' AND state IN (?, ?) ORDER BY id",
        (PAUSED, RESUMED),
    )
    latest = {channel: (state, detail, at) for channel, state, detail, at in rows}
    return {c: (detail, at) for c, (state, detail, at) in latest.items() if state == PAUSED}


def resume(conn, destination: str, who: str, node: str, now: float) -> bool:
    """End the pause of `destination`; False when it was not paused."""
    if pause_state(conn, destination) is None:
        return False
    _event(conn, "", RESUMED, destination, f"resumed by {who}", node, now)
    return True


def _fmt(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def open_work(conn) -> int:
    """Messages still to route plus deliveries still to send (`pfi test` waits for zero)."""
    return conn.execute(
        "SELECT (SELECT count(*) FROM messages WHERE state='received')"
        " + (SELECT count(*) FROM deliveries WHERE state IN ('pending','sending'))"
    ).fetchone()[0]


def event_counts(conn) -> dict[str, int]:
    """How many events of each state the journal holds (the demo's summary)."""
    return dict(conn.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
