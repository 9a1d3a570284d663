"""structlog configuration: one JSON object per line on stderr, ISO timestamps, level names.

With a reactor, lines logged on the reactor thread are written once per reactor turn: the ACKs
of a journal batch are answered in one turn, and their log lines leave in one write() instead of
one system call each (a system call on the reactor thread also means waiting for the GIL while
the journal writer thread runs). Lines from other threads, and everything at shutdown, are
written at once. A crash (SIGKILL) can lose the lines of the current turn only; the journal
remains the record of every message.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class TurnBufferedStream:
    """A text stream that gathers the lines written during one reactor turn into one write."""

    def __init__(self, stream, reactor):
        self._stream = stream
        self._reactor = reactor
        self._reactor_thread = threading.get_ident()
        self._lines: list[str] = []
        reactor.addSystemEventTrigger("after", "shutdown", self.flush_turn)
        atexit.register(self.flush_turn)  # lines logged by later shutdown triggers

    def write(self, text: str) -> int:
        if not self._buffering():
            self._stream.write(text)
            return len(text)
        if not self._lines:
            self._reactor.callLater(0, self.flush_turn)
        self._lines.append(text)
        return len(text)

    def flush(self) -> None:
        """Called by print() after each line: only lines written outside a turn go out now."""
        if self._buffering():
            return
        if threading.get_ident() == self._reactor_thread:
            self.flush_turn()
        else:  # the buffered lines belong to the reactor thread, which writes them itself
            self._stream.flush()

    def flush_turn(self) -> None:
        if self._lines:
            text, self._lines = "".join(self._lines), []
            self._stream.write(text)
        self._stream.flush()

    def _buffering(self) -> bool:
        return self._reactor.running and threading.get_ident() == self._reactor_thread


def configure_logging(
    level: str = "info", stream=None, json: bool = True, reactor=None, process: str | None = None
) -> None:
    """Log at `level` and above to `stream` (stderr); pass the running reactor (from its thread)
    to write the lines of each reactor turn together. `process` names the process on every line
    (the routing process shares the engine's log stream)."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    out = stream or sys.stderr
    if reactor is not None:
        out = TurnBufferedStream(out, reactor)
    named = [_naming(process)] if process else []
    structlog.configure(
        processors=[
            *named,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


def _naming(process: str):
    def add_process(logger, method, event: dict) -> dict:
        event["process"] = process
        return event

    return add_process


class EveryFewSeconds:
    """Rate limit for a log line a hostile peer could otherwise repeat thousands of times a second:
    at most one line per `interval`, carrying how many were suppressed since the last one."""

    def __init__(self, interval: float = 10.0, now=time.monotonic):
        self.interval = interval
        self.now = now
        self._last = float("-inf")
        self.suppressed = 0

    def __call__(self, emit) -> None:
        t = self.now()
        if t - self._last < self.interval:
            self.suppressed += 1
            return
        self._last = t
        emit(suppressed=self.suppressed)
        self.suppressed = 0
