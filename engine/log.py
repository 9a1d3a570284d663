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


def configure_logging(level: str = "info", stream=None, json: bool = True, reactor=None) -> None:
    """Log at `level` and above to `stream` (stderr); pass the running reactor (from its thread)
    to write the lines of each reactor turn together."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    out = stream or sys.stderr
    if reactor is not None:
        out = TurnBufferedStream(out, reactor)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


class RateLimitedLog:
    """At most one line per key every `interval` seconds (e.g. per channel and kind of event).

    The first event of a quiet key is logged at once; the ones in the following `interval` are
    held back and counted, and when that window ends one line reports the last of them with
    `suppressed=N`. For events a peer can trigger at will (failed TLS handshakes, refused
    certificates): a scanner must not flood the log, and the operator still learns how often it
    happened. `clock` is an IReactorTime.
    """

    def __init__(self, logger, clock, interval: float = 10.0):
        self.logger = logger
        self.clock = clock
        self.interval = interval
        self._windows: dict = {}  # key -> _Window

    def warning(self, key, event: str, **fields) -> None:
        now = self.clock.seconds()
        window = self._windows.get(key)
        if window is None or (now >= window.end and not window.held):
            self._emit(key, event, 0, fields)
            return
        window.held += 1
        window.last = (event, fields)
        if window.timer is None:
            window.timer = self.clock.callLater(max(window.end - now, 0), self._window_end, key)

    def _emit(self, key, event: str, suppressed: int, fields: dict) -> None:
        self.logger.warning(event, suppressed=suppressed, **fields)
        self._windows[key] = _Window(self.clock.seconds() + self.interval)

    def _window_end(self, key) -> None:
        window = self._windows[key]
        self._emit(key, window.last[0], window.held, window.last[1])

    def close(self) -> None:
        """Cancel pending window ends (the listener stops)."""
        for window in self._windows.values():
            if window.timer is not None and window.timer.active():
                window.timer.cancel()
        self._windows.clear()


class _Window:
    __slots__ = ("end", "held", "last", "timer")

    def __init__(self, end: float):
        self.end, self.held, self.last, self.timer = end, 0, None, None
