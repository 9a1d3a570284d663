"""The outbound send path's reactor-thread Python alone, per message: a destination worker sends
a claimed batch through the real `mllp-out` connector (4 lanes, one MLLPSender each, the real
ACK reading and judging), and a peer answers every frame with its ACK on the next turn; the
journal answers the record of the successes at once.

    .venv/bin/python bench/send_path.py [--rounds 6] [--messages 4000]

No sockets, no writer thread: the thread CPU it prints is the Python cost of one delivery on the
reactor thread (compare two versions by their fastest rounds, from runs made one after the
other; bench/route.py gives the whole engine).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402

from bench.common import adt_message  # noqa: E402
from engine.config.channels import MllpOutSettings  # noqa: E402
from engine.connectors.mllp import MllpDestination  # noqa: E402
from engine.journal.deliveries import Delivery  # noqa: E402
from engine.log import configure_logging  # noqa: E402
from engine.metrics import EngineMetrics  # noqa: E402
from engine.mllp.framing import frame  # noqa: E402
from engine.mllp.sender import _SenderProtocol  # noqa: E402
from engine.routing.dispatcher import Dispatcher  # noqa: E402

LANES = 4


class RecordingJournal:
    """Answers every operation at once: the record of a batch's successes (no follow-ups)."""

    def submit(self, operation, logged=False, indexed_only=False):
        return defer.succeed([None] * 100_000)


class AnsweringPeer:
    """The transport of one lane: keeps each frame's ACK until `answer_all` (the next turn)."""

    TLS = False
    disconnecting = False

    def __init__(self, waiting: list):
        self.waiting = waiting
        self.proto = None

    def write(self, data: bytes) -> None:
        control = data.split(b"|", 10)[9]
        ack = frame(b"MSH|^~\\&|RIS|X|PFI|Y|20260101||ACK|A" + control + b"|P|2.5\rMSA|AA|" + control + b"\r")
        self.waiting.append((self.proto, ack))

    def getPeer(self):
        return None

    def getHost(self):
        return None


def connected_destination(clock, waiting: list) -> MllpDestination:
    settings = MllpOutSettings(name="ris", type="mllp-out", host="127.0.0.1", port=1, parallel_keys=LANES)
    destination = MllpDestination(clock, settings)
    for sender in destination.senders:
        peer = AnsweringPeer(waiting)
        proto = _SenderProtocol(tls=False)
        peer.proto = proto
        proto.makeConnection(peer)
        sender._proto = proto
    return destination


def batch(template: bytes, start: int, count: int) -> list:
    control = template.split(b"|")[9]
    return [
        (
            Delivery(start + i, f"M{start + i}", "r", "deliver", "ris", f"IPP{i % 97}", "", "initial", None, 0, 0.0),
            template.replace(control, f"s{start + i}".encode(), 1),
        )
        for i in range(count)
    ]


def one_round(worker, waiting: list, claimed: list) -> float:
    started = time.thread_time()
    worker._hand_to_lanes(claimed, {})  # as the worker's drain hands a claimed batch over
    while waiting:
        answers, waiting[:] = list(waiting), []
        for proto, ack in answers:
            proto.dataReceived(ack)
    assert not worker._parts, "the batch did not finish"
    return (time.thread_time() - started) / len(claimed) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--messages", type=int, default=4000, help="per round")
    args = parser.parse_args()
    configure_logging("info")  # as `pfi run` in production: a success logs nothing
    clock, waiting = task.Clock(), []
    destination = connected_destination(clock, waiting)
    dispatcher = Dispatcher(RecordingJournal(), [], None, clock, {"ris": destination}, {}, "bench", random.Random(1))
    dispatcher.metrics = EngineMetrics(node="bench")
    worker = dispatcher.workers["ris"]
    template = adt_message()
    rounds = [one_round(worker, waiting, batch(template, r * args.messages, args.messages)) for r in range(args.rounds)]
    rounds = rounds[1:]  # the first one warms up
    print(
        f"send path, ADT, {LANES} lanes: {min(rounds):.1f} µs/msg thread CPU, fastest round"
        f" (median {statistics.median(rounds):.1f}; rounds {', '.join(f'{r:.1f}' for r in rounds)})"
    )


if __name__ == "__main__":
    main()
