"""`pfi send FILE... --to HOST:PORT`: a real MLLP client that checks every ACK."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("send", help="send HL7 files over MLLP and check each ACK")
    p.add_argument("files", nargs="+", type=Path, help="files with one or more messages (CR, LF or CRLF)")
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK")
    p.set_defaults(handler=send)


def send(args) -> int:
    from twisted.internet import defer, task

    host, _, port = args.to.rpartition(":")
    messages = _read_messages(args.files)
    if messages is None:
        return 2
    # react() runs the reactor and exits the process with the SystemExit code send_all raises.
    task.react(
        lambda reactor: defer.Deferred.fromCoroutine(
            send_all(reactor, host or "127.0.0.1", int(port), messages, args.timeout)
        )
    )


def _read_messages(files: list[Path]) -> list[tuple[str, bytes]] | None:
    from engine.mllp.client import split_messages

    messages = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return None
        messages += [(str(path), m) for m in split_messages(data)]
    return messages


async def send_all(reactor, host: str, port: int, messages, timeout: float) -> int:
    """Send in order on one connection; print one line per ACK; return the exit code."""
    from twisted.internet import error

    from engine.mllp.client import connect

    try:
        client = await connect(reactor, host, port, timeout)
    except (error.ConnectError, OSError) as exc:
        print(f"cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        sys.exit(3)
    failures = 0
    for name, message in messages:
        failures += await _send_one(reactor, client, name, message, timeout)
    client.close()
    sys.exit(1 if failures else 0)


async def _send_one(reactor, client, name: str, message: bytes, timeout: float) -> int:
    from twisted.internet import defer, error

    from engine.mllp.client import control_id_of, read_ack

    sent_id = control_id_of(message)
    d = client.send(message)
    d.addTimeout(timeout, reactor)
    try:
        ack = read_ack(await d)
    except (defer.TimeoutError, error.ConnectionLost) as exc:
        print(f"{name} MSH-10={sent_id}: no ACK ({exc.__class__.__name__})")
        return 1
    ok = ack.code in ("AA", "CA") and ack.control_id == sent_id
    status = "OK" if ok else ("MISMATCH" if ack.control_id != sent_id else "NACK")
    print(f"{name} MSH-10={sent_id}: {status} MSA-1={ack.code} MSA-2={ack.control_id}")
    for err in ack.errors:
        print(f"    {err}")
    return 0 if ok else 1
