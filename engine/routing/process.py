"""Routing and deliveries in a child process of `pfi run` (`routing_process: true`, SQLite journal;
docs/journal.md, "The routing process"): intake and routing each get a GIL of their own, so a
burst of sends never delays the ACKs.

The intake process (the parent) owns the segment log: it appends, syncs, indexes, recovers and
purges it. The routing process opens the same journal as a follower (it reads the log, writes
routing state in SQLite, never appends). Between them, two pipes:

* the child's stdin: one byte per wake-up, `r` for "routable messages were indexed" (the
  dispatcher looks), `q` for "deliveries were queued here" (a ZAM from the mailbox poller: every
  worker looks). Both also poll (0.25 s, 1 s) for what operators change. End of file: the parent
  is gone, the child stops.
* the child's fd 3: every second, a JSON line of the increments of its counters (deliveries by
  outcome, journal events of routing), added to the parent's: one /metrics for the engine.

The parent starts it once its journal is open and recovered, restarts it when it dies (the sends
it left in flight go back to the queue when the next one starts: at least once, the same MSH-10;
engine/childprocess.py), and stops it (SIGTERM: it finishes and records the sends in flight)
before closing the journal.
An exclusive lock on `routing.lock` in the data directory keeps one routing process per journal,
even while a parent that was killed leaves its child finishing.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import structlog
from twisted.internet import protocol, stdio, threads

from engine.childprocess import SupervisedChild

log = structlog.get_logger("engine.routing.process")
COUNTS_EVERY = 1.0  # seconds between two lines of counter increments
COUNTS_FD = 3
#: the counters the routing process moves, forwarded to the intake process's /metrics
FORWARDED = {"pfi_deliveries": "deliveries", "pfi_journal_events": "journal_events"}
ROUTABLE, QUEUED = b"r", b"q"  # the wake-ups the child reads on its stdin


# -- the intake process's side --------------------------------------------------------------
class RoutingChild(SupervisedChild):
    """The routing process, as a part of the intake process's service tree (supervised as every
    child of `pfi run`: engine/childprocess.py)."""

    def __init__(self, reactor, argv: list[str], metrics):
        super().__init__("routing", reactor, argv, read_fds=(COUNTS_FD,))
        self.metrics = metrics
        self._partial = b""

    def wake(self, *_) -> None:
        """Routable messages were indexed: the child's dispatcher looks now."""
        self.tell(ROUTABLE)

    def queued(self) -> None:
        """This process queued deliveries (a mailbox poller's ZAM): the child's workers look."""
        self.tell(QUEUED)

    def received(self, fd: int, data: bytes) -> None:
        if fd != COUNTS_FD:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            add_counts(self.metrics, line)

    def started(self) -> None:
        self._partial = b""
        if self.starts > 1:
            self.metrics.routing_process_restarts.inc()
        self.metrics.routing_process_up.set(1)

    def exited(self) -> None:
        self.metrics.routing_process_up.set(0)


def add_counts(metrics, line: bytes) -> None:
    """Add one line of the child's counter increments to this process's counters."""
    try:
        for family, labels, increment in json.loads(line):
            attribute = FORWARDED.get(family)
            if attribute is not None and increment > 0:
                getattr(metrics, attribute).labels(**labels).inc(increment)
    except (ValueError, TypeError, AttributeError) as exc:  # never let a bad line stop the engine
        log.warning("routing.counts_unreadable", error=str(exc)[:200])


# -- the routing process's side -------------------------------------------------------------
class CountsForwarder:
    """Sends the increments of the forwarded counters since the last line (fd 3)."""

    def __init__(self, metrics, fd: int = COUNTS_FD):
        self.metrics, self.fd = metrics, fd
        self._sent: dict[tuple, float] = {}

    def increments(self) -> list:
        lines = []
        for family, attribute in FORWARDED.items():
            for metric in getattr(self.metrics, attribute).collect():
                for sample in metric.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    key = (family, tuple(sorted(sample.labels.items())))
                    increment = sample.value - self._sent.get(key, 0.0)
                    if increment > 0:
                        self._sent[key] = sample.value
                        lines.append([family, sample.labels, increment])
        return lines

    def flush(self) -> None:
        counts = self.increments()
        if not counts:
            return
        try:
            os.write(self.fd, json.dumps(counts).encode() + b"\n")
        except OSError:  # the parent is gone: nobody to count for
            pass


class _WakeReader(protocol.Protocol):
    def __init__(self, dispatcher, parent_gone):
        self.dispatcher, self.parent_gone = dispatcher, parent_gone

    def dataReceived(self, data: bytes) -> None:
        if ROUTABLE in data:
            self.dispatcher.kick()
        if QUEUED in data:
            self.dispatcher.wake(list(self.dispatcher.workers))

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.parent_gone()


def listen_to_parent(reactor, dispatcher) -> None:
    """Wake-ups from the parent on stdin; its end (the parent died) stops this process."""

    def parent_gone() -> None:
        if reactor.running:
            log.warning("routing.parent_gone")
            reactor.stop()

    stdio.StandardIO(_WakeReader(dispatcher, parent_gone), reactor=reactor)


async def take_routing_lock(data_dir: Path) -> int:
    """An exclusive lock on data_dir/routing.lock, waited for in a thread (a previous routing
    process may still be finishing its sends); held until this process exits."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "routing.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("routing.waiting_for_previous_process")
        await threads.deferToThread(fcntl.flock, fd, fcntl.LOCK_EX)
    return fd
