"""Operator commands on the outbound queues: `pfi queue`, `pfi cancel ID`, `pfi replay ID|--filter`.

They work on the journal while the engine runs (SQLite WAL allows it; PostgreSQL is shared by
every node); the engine's workers poll their queues, so changes take effect within a second.
"""

from __future__ import annotations

import time

from engine.journal.dialect import SQLITE, Dialect
from engine.journal.operator import in_transaction


def register(sub) -> None:
    q = sub.add_parser("queue", help="per-destination depth, oldest age, next retry, dead letters")
    _common(q)
    q.set_defaults(handler=show_queues)
    for name, handler, what in (
        ("cancel", cancel, "cancel pending or held deliveries"),
        ("hold", hold, "hold pending deliveries (e.g. a deferred DMP send): never sent until released"),
        ("release", release, "release held deliveries back to their queue"),
    ):
        _delivery_command(sub, name, handler, what)
    r = sub.add_parser("replay", help="send journaled messages through the current routes again")
    _common(r)
    r.add_argument("ident", nargs="?", help="message id")
    r.add_argument("--state", help="replay every message in this state (e.g. invalid, unrouted)")
    r.add_argument("--dead", action="store_true", help="replay messages with a dead-lettered delivery")
    r.add_argument("--channel", help="only messages received on this channel")
    _operator(r)
    r.set_defaults(handler=replay)
    u = sub.add_parser("resume", help="resume a destination paused because it refused our credentials")
    _common(u)
    u.add_argument("destination", help="destination channel name, as `pfi queue` shows it")
    _operator(u)
    u.set_defaults(handler=resume_destination)


def _delivery_command(sub, name: str, handler, what: str) -> None:
    """An operator action on deliveries named by delivery id or message id, recorded with who."""
    p = sub.add_parser(name, help=f"{what} (by delivery id or message id)")
    _common(p)
    p.add_argument("ident", help="delivery id (number) or message id")
    p.add_argument("--reason", default=f"{name} by an operator")
    _operator(p)
    p.set_defaults(handler=handler)


def _operator(p) -> None:
    p.add_argument("--operator", help="who does it, recorded in the journal (default: the OS user, recorded as such)")


def _who(args) -> str:
    """The operator as the journal records it: `--operator`, else the OS user marked as such (an
    audit can tell a name given from an account that ran the command)."""
    import getpass

    if args.operator and args.operator.strip():
        return args.operator.strip()
    try:
        return f"{getpass.getuser()} (OS user)"
    except (KeyError, OSError):
        return "unknown (no --operator, no OS user name)"


def _common(p) -> None:
    from engine.commands.common import add_journal_options

    add_journal_options(p)


def _journal_conn(args):
    from engine.commands.common import load_with_overrides, open_journal_connection

    config = load_with_overrides(args)
    return None if config is None else open_journal_connection(args, config)


def show_queues(args) -> int:
    from engine.journal.deliveries import queue_summary

    conn = _journal_conn(args)
    if conn is None:
        return 0
    now = time.time()
    read = conn.read
    print(f"{'destination':<24} {'pending':>7} {'oldest':>9} {'next try':>9} {'sending':>7} {'dead':>5} {'held':>5}")
    for dest, pending, oldest, next_try, sending, dead, held in queue_summary(read, conn.dialect):
        age = f"{now - oldest:.0f}s" if oldest else "-"
        nxt = f"{max(next_try - now, 0):.0f}s" if next_try else "-"
        print(f"{dest:<24} {pending or 0:>7} {age:>9} {nxt:>9} {sending or 0:>7} {dead or 0:>5} {held or 0:>5}")
    _show_held(read, conn.dialect)
    _show_paused(conn)
    return 0


def _show_held(read, dialect) -> None:
    from engine.journal.deliveries import held_deliveries, last_event

    for delivery_id, dest, uid, reason in held_deliveries(read, dialect):
        who = last_event(read, uid, "held") or reason or ""
        print(f"HELD delivery {delivery_id} to {dest} (message {uid}): {who}  (pfi release {delivery_id})")


def _show_paused(conn) -> None:
    """Paused destinations send nothing until `pfi resume`; say since when and why."""
    from engine.journal.deliveries import paused_destinations

    paused = paused_destinations(conn.read)
    for dest, (reason, since) in sorted(paused.items()):
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(since))
        print(f"PAUSED {dest} since {when}: {reason}  (after fixing it: pfi resume {dest})")


def resume_destination(args) -> int:
    from engine.journal.deliveries import resume

    conn = _journal_conn(args)
    if conn is None:
        return 1
    resumed = conn.transaction(lambda c: resume(c, args.destination, _who(args), "operator", time.time()))
    print(f"{args.destination} resumed" if resumed else f"{args.destination} is not paused")
    return 0 if resumed else 1


def cancel(args) -> int:
    conn = _journal_conn(args)
    if conn is None:
        return 1
    count = cancel_deliveries(conn.conn, args.ident, args.reason, _who(args), dialect=conn.dialect)
    print(f"{count} pending or held deliver{'y' if count == 1 else 'ies'} cancelled")
    return 0 if count else 1


# -- the operations themselves, shared with the operator console (engine/console/) ----------------


def cancel_deliveries(
    conn, ident: str, reason: str, operator: str, node: str = "operator", dialect: Dialect = SQLITE
) -> int:
    """Cancel the pending or held deliveries of a delivery id or message id, in one transaction."""
    from engine.journal.deliveries import cancel as cancel_in_journal

    return in_transaction(conn, dialect, lambda: cancel_in_journal(conn, ident, reason, node, time.time(), operator))


def replay_messages(conn, uids: list[str], operator: str, node: str = "operator", dialect: Dialect = SQLITE) -> int:
    """Send these messages through the current routes again, in one transaction; how many were."""
    from engine.journal.deliveries import requeue_message

    return in_transaction(
        conn, dialect, lambda: sum(requeue_message(conn, uid, node, time.time(), operator) for uid in uids)
    )


def hold(args) -> int:
    from engine.journal.deliveries import hold as hold_deliveries

    return _move(args, hold_deliveries, "held (pfi release to send them)")


def release(args) -> int:
    from engine.journal.deliveries import release_held

    return _move(args, release_held, "released")


def _move(args, operation, done: str) -> int:
    conn = _journal_conn(args)
    if conn is None:
        return 1
    count = conn.transaction(lambda c: operation(c, args.ident, args.reason, "operator", time.time(), _who(args)))
    print(f"{count} deliver{'y' if count == 1 else 'ies'} {done}")
    return 0 if count else 1


def replay(args) -> int:
    conn = _journal_conn(args)
    if conn is None:
        return 1
    uids = _select(conn, args)
    if uids is None:
        print("give a message id, --state or --dead")
        return 2
    count = replay_messages(conn.conn, uids, _who(args), dialect=conn.dialect)
    print(f"{count} message(s) re-queued through the current routes")
    if count < len(uids):
        print(
            f"{len(uids) - count} not re-queued: unknown, or a rejected frame kept only in part "
            "(its reason starts with [truncated: ... sha256 ...]; ask the sender for the message)"
        )
    return 0 if count else 1


def _select(conn, args) -> list[str] | None:
    from engine.journal.deliveries import messages_to_replay

    if args.ident:
        return [args.ident]
    if not (args.state or args.dead):
        return None
    return messages_to_replay(conn.conn, state=args.state, dead=args.dead, channel=args.channel)
