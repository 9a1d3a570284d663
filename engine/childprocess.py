"""A child process of `pfi run` (the operator console, the routing process), supervised: started
with its service, started again when it dies, stopped with SIGTERM (SIGKILL after a grace).

It shares the engine's stdout and stderr (one log stream for the operator) and gets a pipe on its
stdin (`tell`); further descriptors it writes to reach `received`. A child that keeps dying young
(a broken install) is restarted less and less often instead of every second."""

from __future__ import annotations

import os
import signal
import sys

import structlog
from twisted.application import service
from twisted.internet import defer, protocol

log = structlog.get_logger("engine.childprocess")
RESTART_AFTER = 1.0  # seconds before a child that died is started again
RESTART_AFTER_MAX = 30.0  # ... doubled while it keeps dying young, up to this
LIVED_LONG = 10.0  # seconds after which a death is a crash again, not a failure to start
STOP_GRACE = 60.0  # seconds a stopping child has to finish its work before it is killed


class _Child(protocol.ProcessProtocol):
    def __init__(self, owner: SupervisedChild):
        self.owner = owner
        self.ended = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.owner.received(fd, data)

    def processEnded(self, reason) -> None:
        self.ended.callback(None)
        self.owner.ended(self, getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None))


class SupervisedChild(service.Service):
    """`python argv...` as a part of the service tree. `name` prefixes its log events
    (`<name>.process_started`, `.process_exited`, `.process_killed`); subclasses may read its
    other descriptors (`received`) and follow its life (`started`, `exited`)."""

    def __init__(self, name: str, reactor, argv: list[str], read_fds: tuple[int, ...] = ()):
        self.setName(f"{name}-process")
        self.label, self.reactor, self.argv = name, reactor, argv
        self.child_fds: dict = {0: "w", 1: 1, 2: 2, **{fd: "r" for fd in read_fds}}
        self.child: _Child | None = None
        self.stopping = False
        self.starts = 0
        self.restart_after = RESTART_AFTER
        self._started_at = 0.0

    def startService(self):
        super().startService()
        self.stopping = False
        self._spawn()

    def _spawn(self) -> None:
        if self.stopping:
            return
        self.child = _Child(self)
        self.starts += 1
        self._started_at = self.reactor.seconds()
        self.started()
        self.reactor.spawnProcess(self.child, sys.executable, self.argv, env=os.environ.copy(), childFDs=self.child_fds)
        log.info(f"{self.label}.process_started", pid=self.child.transport.pid, starts=self.starts)

    def tell(self, data: bytes) -> None:
        """Write to the running child's stdin (nothing when none runs)."""
        child = self.child
        if child is not None and child.transport is not None and not child.ended.called:
            child.transport.writeToChild(0, data)

    def ended(self, child: _Child, code, signal=None) -> None:
        if child is not self.child:
            return
        self.exited()
        if self.stopping:
            return
        lived = self.reactor.seconds() - self._started_at
        self.restart_after = RESTART_AFTER if lived >= LIVED_LONG else min(2 * self.restart_after, RESTART_AFTER_MAX)
        log.error(
            f"{self.label}.process_exited",
            code=code,
            signal=signal,
            lived_seconds=round(lived, 1),
            restart_in=self.restart_after,
        )
        self.reactor.callLater(self.restart_after, self._spawn)

    def stopService(self):
        super().stopService()
        self.stopping = True
        child = self.child
        if child is None or child.ended.called:
            return None
        child.transport.signalProcess("TERM")
        kill = self.reactor.callLater(STOP_GRACE, self._kill, child)
        child.ended.addBoth(lambda _: kill.cancel() if kill.active() else None)
        return child.ended

    def _kill(self, child: _Child) -> None:
        log.error(f"{self.label}.process_killed", after_seconds=STOP_GRACE)
        child.transport.signalProcess("KILL")

    # -- for subclasses ------------------------------------------------------------------------
    def received(self, fd: int, data: bytes) -> None:
        """Bytes the child wrote on one of `read_fds`."""

    def started(self) -> None:
        """A child is being started (the first one or a restart)."""

    def exited(self) -> None:
        """The current child has ended."""


def stop_once_on_signals(reactor) -> None:
    """Stop at SIGTERM/SIGINT as Twisted does, and ignore the next ones (call once the reactor
    runs): a terminal's Ctrl-C reaches every process of the group and systemd signals every
    process of the unit, so a child hears it besides its parent's SIGTERM, and Twisted logged a
    ReactorNotRunning traceback at the second one. For `pfi run` and each child it starts."""
    from twisted.internet import error

    def stop() -> None:
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: reactor.callFromThread(stop))
