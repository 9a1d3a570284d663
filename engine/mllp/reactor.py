"""The reactor `pfi run` installs: Twisted's epoll reactor, its event dispatch without the legacy
log context.

Twisted's `doPoll` hands every ready socket to `log.callWithLogger`, which asks the transport for
its log prefix and runs the read inside `callWithContext({"system": prefix})`: four nested calls
and a context dictionary per event, ~7 % of the reactor thread's GIL time under 8-connection
intake (py-spy). The engine logs through structlog and installs no Twisted log observer, so that
context is never read. `_doReadOrWrite` (Twisted's own) still catches what a read or write
raises and closes that connection with the failure; anything escaping it is logged here and the
loop goes on, as before.
"""

from __future__ import annotations

import errno

import structlog
from twisted.internet.epollreactor import EPollReactor

log = structlog.get_logger(__name__)


class LeanEPollReactor(EPollReactor):
    def doPoll(self, timeout):
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except InterruptedError:
            return
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables, dispatch = self._selectables, self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                dispatch(selectable, fd, event)
            except Exception as exc:  # noqa: BLE001 - one connection's defect must not stop the loop
                log.error("reactor.dispatch_failed", error_type=type(exc).__name__)

    doIteration = doPoll


def install() -> LeanEPollReactor:
    """Install it as the global reactor; call before anything imports `twisted.internet.reactor`."""
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor
