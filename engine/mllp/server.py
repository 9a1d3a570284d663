"""The inbound MLLP endpoint: frames in, ACKs out, in order, with back-pressure.

A connection may pipeline messages; ACKs go back in the order the messages arrived. Reading is
paused when too many messages await their journal commit or when the peer stops reading its
ACKs (our write buffer is full), so a misbehaving client cannot make the engine buffer forever.
"""

from __future__ import annotations

from collections import deque

import structlog
from twisted.internet import protocol
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from OpenSSL import SSL

from engine.intake import Intake, IntakePolicy, quarantine, reject_oversized
from engine.log import RateLimitedLog
from engine.mllp.framing import Frame, MLLPDecoder, Noise, Oversized, frame

log = structlog.get_logger("engine.mllp")

MAX_IN_FLIGHT = 64


@implementer(IPushProducer, IHandshakeListener)
class MLLPServerProtocol(protocol.Protocol, TimeoutMixin):
    allowed_subjects: tuple[str, ...] = ()

    def __init__(self, intake: Intake, policy: IntakePolicy, max_size: int, idle_timeout: float | None):
        self.intake = intake
        self.policy = policy
        self.decoder = MLLPDecoder(max_size)
        self.idle_timeout = idle_timeout
        self._pending: deque = deque()  # [ack bytes or None] in arrival order
        self._reading_paused = False
        self._peer_slow = False
        self._closing = False
        self._handshake_done = False

    # -- connection ------------------------------------------------------------------------
    def connectionMade(self):
        self.intake.metrics.connections.labels(self.policy.channel).inc()
        self.transport.registerProducer(self, True)
        self.setTimeout(self.idle_timeout)

    def connectionLost(self, reason=protocol.connectionDone):
        self.setTimeout(None)
        self.intake.metrics.connections.labels(self.policy.channel).dec()
        if not self._handshake_done and reason.check(SSL.Error):
            self._limited_warning("mllp.tls_handshake_failed", error=_tls_error(reason.value))
        if self.decoder.pending:
            log.warning("mllp.connection_lost_mid_frame", channel=self.policy.channel,
                        bytes_lost_unacked=self.decoder.pending)

    def handshakeCompleted(self):
        """TLS channels: the peer certificate's CN must be one the channel allows."""
        self._handshake_done = True
        if not self.allowed_subjects:
            return
        cert = self.transport.getPeerCertificate()
        subject = cert.get_subject().commonName if cert is not None else None
        if subject not in self.allowed_subjects:
            self._limited_warning("mllp.peer_refused", subject=subject)
            self._closing = True
            self.transport.abortConnection()

    def _limited_warning(self, event: str, **fields) -> None:
        """Peers can trigger these at will: at most one line per channel and kind per window."""
        peer = self.transport.getPeer()
        self.factory.log_limiter.warning((self.policy.channel, event), event, channel=self.policy.channel,
                                         peer=getattr(peer, "host", str(peer)), **fields)

    def timeoutConnection(self):
        log.info("mllp.idle_timeout", channel=self.policy.channel)
        self.transport.abortConnection()

    # -- input -----------------------------------------------------------------------------
    def dataReceived(self, data: bytes):
        self.resetTimeout()
        for event in self.decoder.feed(data):
            if self._closing:
                return
            if isinstance(event, Frame):
                self._expect(self.intake.receive(self.policy, event.payload))
            elif isinstance(event, Noise):
                quarantine(self.intake, self.policy, event.data, "bytes outside any MLLP frame")
            elif isinstance(event, Oversized):
                self._oversized(event)
        self._throttle()

    def _oversized(self, event: Oversized) -> None:
        d = reject_oversized(self.intake, self.policy, event.head, event.size_seen, self.decoder.max_size)
        self._expect(d)
        d.addBoth(lambda _: self._close_after_acks())

    def _close_after_acks(self) -> None:
        self._closing = True
        if not self._pending:
            self.transport.loseConnection()

    def _expect(self, d) -> None:
        slot = [None]
        self._pending.append(slot)

        def ready(ack: bytes):
            slot[0] = ack
            self._flush()

        def failed(failure):
            log.error("mllp.intake_failed", channel=self.policy.channel, error=failure.getErrorMessage())
            self.transport.abortConnection()

        d.addCallbacks(ready, failed)

    def _flush(self) -> None:
        while self._pending and self._pending[0][0] is not None:
            self.transport.write(frame(self._pending.popleft()[0]))
        if self._closing and not self._pending:
            self.transport.loseConnection()
        self._throttle()

    # -- back-pressure ---------------------------------------------------------------------
    def _throttle(self) -> None:
        should_pause = self._peer_slow or len(self._pending) >= MAX_IN_FLIGHT
        if should_pause and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif not should_pause and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def pauseProducing(self):
        """Our ACK writes are backing up: the peer does not read them."""
        self._peer_slow = True
        self._throttle()

    def resumeProducing(self):
        self._peer_slow = False
        self._throttle()

    def stopProducing(self):
        self._pending.clear()


class MLLPServerFactory(protocol.ServerFactory):
    def __init__(self, intake: Intake, policy: IntakePolicy, max_size: int = 64 * 1024 * 1024,
                 idle_timeout: float | None = 600.0, allowed_subjects: tuple[str, ...] = ()):
        self.allowed_subjects = tuple(allowed_subjects)
        self.log_limiter = RateLimitedLog(log, intake.clock)
        self.intake = intake
        self.policy = policy
        self.max_size = max_size
        self.idle_timeout = idle_timeout

    def doStop(self):
        self.log_limiter.close()

    def buildProtocol(self, addr):
        p = MLLPServerProtocol(self.intake, self.policy, self.max_size, self.idle_timeout)
        p.allowed_subjects = self.allowed_subjects
        p.factory = self
        return p


def _tls_error(error) -> str:
    """OpenSSL's reason strings (e.g. `certificate verify failed`), short: no certificate content."""
    reasons = [r[-1] for r in getattr(error, "args", [[]])[0] if isinstance(r, tuple) and r]
    return ("; ".join(reasons) or type(error).__name__)[:200]
