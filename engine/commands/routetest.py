"""`pfi test [PATHS]`: route tests as YAML, exit 1 on any failure: a message in, the expected technical ACK, the expected
deliveries per channel (and silence everywhere else), content checks on what was delivered.

    tests:
      - name: a report from the RIS goes to the RIS and the DMP
        channel: ris-documents            # inbound channel the message arrives on
        message: ../../samples/oru.hl7    # file (relative to this YAML) or `inline: "MSH|..."`
        ack: AA
        deliveries: {ris-out: 1, dmp: 1}  # every other destination must get nothing
        checks:
          - {channel: ris-out, path: MSH-5, equals: RIS}
          - {channel: ris-out, path: PID-3.1, matches: "^IPP"}
        states: [received, queued]        # optional: journal states that must appear

The engine runs in-process on a temporary journal, destinations are replaced by recorders that
accept everything, and delays are skipped with a controllable clock.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from twisted.internet import defer, task

from engine.connectors.base import Outcome, done
from engine.journal import deliveries as queue
from engine.mllp.client import split_messages


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str
    path: str
    equals: str | None = None
    matches: str | None = None


class RouteTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    channel: str
    message: str | None = None
    inline: str | None = None
    ack: str = "AA"
    deliveries: dict[str, int] = Field(default_factory=dict)
    checks: list[Check] = Field(default_factory=list)
    states: list[str] = Field(default_factory=list)


class Recorder:
    def __init__(self):
        self.payloads: list[bytes] = []

    async def deliver(self, payload: bytes, delivery) -> Outcome:
        self.payloads.append(payload)
        return done("recorded by pfi test")


@dataclass
class Result:
    name: str
    failures: list[str] = field(default_factory=list)


def load_tests(path: Path) -> list[RouteTest]:
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
    return [RouteTest.model_validate(item) for item in data.get("tests", [])]


def message_bytes(test: RouteTest, base: Path) -> bytes:
    if test.inline is not None:
        return split_messages(test.inline.encode())[0]
    return split_messages((base / test.message).read_bytes())[0]


async def run_test(config, test: RouteTest, base: Path) -> Result:
    from engine.hl7.message import Message
    from engine.journal.reader import JournalReader
    from engine.mllp.client import connect, read_ack
    from engine.service import Engine
    from twisted.internet import reactor  # here, not at import: `pfi run` installs its own first

    result = Result(test.name)
    config = _with_free_ports(config)
    recorders = {c.name: Recorder() for c in config.channels.values() if c.direction != "in"}
    clock = task.Clock()
    clock.advance(reactor.seconds())
    with tempfile.TemporaryDirectory(prefix="pfi-test-") as data:
        engine = Engine(config, Path(data), reactor, with_metrics=False, clock=clock, connectors=recorders)
        await engine.startService()
        try:
            if test.channel not in engine.listeners:
                result.failures.append(f"no inbound MLLP channel {test.channel!r}")
                return result
            client = await connect(reactor, "127.0.0.1", engine.port_of(test.channel))
            ack = read_ack(await client.send(message_bytes(test, base)))
            client.close()
            if ack.code != test.ack:
                result.failures.append(f"ACK {ack.code} (expected {test.ack}) {' '.join(ack.errors)}")
            await _settle(engine, clock, recorders)
            states = {e.state for e in JournalReader(engine.journal.data_dir).events_after(0, limit=100000)}
        finally:
            await engine.stopService()
    _compare(test, recorders, states, result, Message)
    return result


def _compare(test: RouteTest, recorders: dict, states: set, result: Result, Message) -> None:
    for name, recorder in recorders.items():
        expected = test.deliveries.get(name, 0)
        if len(recorder.payloads) != expected:
            result.failures.append(f"{name}: {len(recorder.payloads)} deliveries (expected {expected})")
    for name in set(test.deliveries) - set(recorders):
        result.failures.append(f"{name}: not a destination channel")
    for check in test.checks:
        payloads = recorders.get(check.channel, Recorder()).payloads
        if not payloads:
            result.failures.append(f"check {check.channel} {check.path}: nothing delivered")
            continue
        value = Message.parse(payloads[-1]).get(check.path) or ""
        if check.equals is not None and value != check.equals:
            result.failures.append(f"{check.channel} {check.path} = {value!r} (expected {check.equals!r})")
        if check.matches is not None and not re.search(check.matches, value):
            result.failures.append(f"{check.channel} {check.path} = {value!r} does not match {check.matches!r}")
    for state in test.states:
        if state not in states:
            result.failures.append(f"journal has no {state!r} row (has: {', '.join(sorted(states))})")


def _with_free_ports(config):
    channels = {
        n: c.model_copy(update={"port": 0, "host": "127.0.0.1"}) if c.type == "mllp-in" else c
        for n, c in config.channels.items()
    }
    return type(config)(root=config.root, engine=config.engine, channels=channels, routes=config.routes)


async def _settle(engine, clock, recorders, rounds: int = 200) -> None:
    """Advance time past every delay until nothing moves any more."""
    from twisted.internet import reactor

    stable, last = 0, -1
    for _ in range(rounds):
        clock.advance(86400)
        d = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d
        count = sum(len(r.payloads) for r in recorders.values())
        pending = await engine.journal.submit(lambda c, s: queue.open_work(c), logged=True)
        busy = pending or engine.dispatcher.follow_ups_in_flight
        stable = stable + 1 if count == last and not busy else 0
        last = count
        if stable >= 3:
            return


# -- the command ---------------------------------------------------------------------------


def register(sub) -> None:
    p = sub.add_parser("test", help="run route tests written in YAML")
    p.add_argument("paths", nargs="*", type=Path, help="YAML files or folders (default: tests/routes)")
    p.add_argument("--config", type=Path, default=Path("."))
    p.set_defaults(handler=run)


def run(args) -> int:
    from twisted.internet import defer, task

    from engine.commands.common import load_or_report
    from engine.log import configure_logging

    config = load_or_report(args.config)
    if config is None:
        return 2
    configure_logging("error")
    files = _files(args.paths or [args.config / "tests" / "routes"])

    async def main(reactor):
        failed = total = 0
        for path in files:
            for test in load_tests(path):
                total += 1
                result = await run_test(config, test, path.parent)
                status = "ok" if not result.failures else "FAIL"
                print(f"{status:4} {path.name}: {test.name}")
                for failure in result.failures:
                    print(f"       {failure}")
                failed += bool(result.failures)
        print(f"{total - failed} passed, {failed} failed")
        if failed or not total:
            raise SystemExit(1)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        out += sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
    return out
