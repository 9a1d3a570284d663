"""Intake's reactor-thread Python alone, per message: frames through the real listener protocol
(MLLP framing, limits, ACK order) and the real Intake (scan, judge, ACK, metrics), with a journal
that answers each group of 8 records at once, as the group-commit writer's resolution does.

    .venv/bin/python bench/reactor_path.py [--rounds 6] [--messages 2000]

No sockets, no writer thread, no fsync: the thread CPU it prints is the Python cost of one
message on the reactor thread, steadier than anything measured under load on a shared machine
(compare two versions of the intake path by their fastest rounds, from runs made one after the
other; bench/intake.py gives the whole engine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402

from bench.common import adt_message  # noqa: E402
from engine.journal.groupcommit import _resolve  # noqa: E402
from engine.metrics import EngineMetrics  # noqa: E402
from engine.mllp.framing import frame  # noqa: E402
from engine.mllp.intake import Intake, IntakePolicy  # noqa: E402
from engine.mllp.server import MLLPServerProtocol  # noqa: E402

CONNECTIONS = 8


class AnsweringJournal:
    """Keeps the records of a turn; `answer_all` resolves them as the writer's batch would."""

    def __init__(self):
        self.pending: list = []

    def append_inbound(self, record, then=None):
        waiter = defer.Deferred() if then is None else then
        self.pending.append((waiter, record))
        return waiter if then is None else None

    def answer_all(self) -> None:
        batch, self.pending = self.pending, []
        _resolve([w for w, _ in batch], [r for _, r in batch])


class DiscardingTransport:
    TLS = False

    def write(self, data: bytes) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def getPeer(self):
        return None


def frames(connection: int, count: int) -> list[bytes]:
    template = adt_message()
    control = template.split(b"|")[9]
    return [frame(template.replace(control, f"c{connection}-{i}".encode(), 1)) for i in range(count)]


def one_round(protocols, journal, clock, per_connection: list[list[bytes]]) -> float:
    started = time.thread_time()
    for i in range(len(per_connection[0])):
        for proto, messages in zip(protocols, per_connection):
            proto.dataReceived(messages[i])
        journal.answer_all()
        clock.advance(0)
    return (time.thread_time() - started) / (len(per_connection[0]) * len(protocols)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--messages", type=int, default=2000, help="per connection and round")
    args = parser.parse_args()
    clock, journal = task.Clock(), AnsweringJournal()
    intake = Intake(journal=journal, metrics=EngineMetrics(node="bench"), clock=clock)
    protocols = []
    for _ in range(CONNECTIONS):
        proto = MLLPServerProtocol(intake, IntakePolicy(channel="bench"), 1 << 20, None)
        proto.transport = DiscardingTransport()
        protocols.append(proto)
    per_connection = [frames(c, args.messages) for c in range(CONNECTIONS)]
    rounds = [one_round(protocols, journal, clock, per_connection) for _ in range(args.rounds)][1:]  # 1st: warm-up
    # The fastest round is the one least disturbed by the machine's other tenants (they only ever
    # add time): compare two versions by it, from runs made one after the other.
    print(
        f"intake reactor path, ADT, {CONNECTIONS} connections: {min(rounds):.1f} µs/msg thread CPU, fastest round"
        f" (median {statistics.median(rounds):.1f}; rounds {', '.join(f'{r:.1f}' for r in rounds)})"
    )


if __name__ == "__main__":
    main()
