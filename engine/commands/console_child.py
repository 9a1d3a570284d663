"""The operator console as a child process of `pfi run` (docs/console.md: why a process and not
the engine's reactor). It is started after the engine, restarted if it dies, stopped with it."""

from __future__ import annotations

import os
import sys

import structlog
from twisted.internet import defer, protocol

log = structlog.get_logger("engine.console_child")
RESTART_AFTER = 5.0


class _Watch(protocol.ProcessProtocol):
    def __init__(self, child):
        self.child = child
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)
        self.child.ended(reason.value.exitCode)


class ConsoleChild:
    def __init__(self, reactor, args):
        self.reactor = reactor
        self.argv = [sys.executable, "-m", "engine.cli", "console", "--config", str(args.config)]
        if args.data:
            self.argv += ["--data", str(args.data)]
        if args.journal:
            self.argv += ["--journal", args.journal]
        self.watch: _Watch | None = None
        self.stopping = False

    def start(self) -> None:
        self.watch = _Watch(self)
        # stdout/stderr shared with the engine: one log stream for the operator
        self.reactor.spawnProcess(
            self.watch, sys.executable, self.argv, env=os.environ.copy(), childFDs={0: "w", 1: 1, 2: 2}
        )

    def ended(self, code) -> None:
        if self.stopping:
            return
        log.error("console.exited", code=code, restart_in=RESTART_AFTER)
        self.reactor.callLater(RESTART_AFTER, lambda: None if self.stopping else self.start())

    def stop(self):
        self.stopping = True
        if self.watch is None or self.watch.ended.called:
            return None
        self.watch.transport.signalProcess("TERM")
        return self.watch.ended
