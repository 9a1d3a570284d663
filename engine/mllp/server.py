"""The inbound MLLP endpoint: frames in, ACKs out, in order, with back-pressure.

A connection may pipeline messages; ACKs go back in the order the messages arrived. Reading is
paused when too many messages await their journal commit, when the peer stops reading its
ACKs (our write buffer is full) or when the engine-wide budget for unfinished frames is spent,
so a misbehaving client cannot make the engine buffer forever. Limits per listener
(`ListenerLimits`): a number of connections, and a deadline for each frame to complete (a peer
trickling one byte a second would otherwise hold a connection and its buffer for ever).
See docs/listeners.md.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import partial

import structlog
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer
from twisted.internet.interfaces import IHandshakeListener, IPushProducer

from engine.mllp.intake import Intake, IntakePolicy, quarantine, reject_oversized
from engine.log import EveryFewSeconds
from engine.mllp.budget import BufferBudget
from engine.mllp.directwrite import write_now
from engine.mllp.framing import Frame, MLLPDecoder, Noise, Oversized, frame

log = structlog.get_logger("engine.mllp")


def _tls_error_text(error) -> str:
    """The OpenSSL reason of a failed handshake, short (e.g. 'peer did not return a certificate')."""
    reasons = [part[2] for part in getattr(error, "args", [[]])[0] if isinstance(part, tuple) and len(part) > 2]
    return "; ".join(reasons)[:200] or type(error).__name__


MAX_IN_FLIGHT = 64


@dataclass
class ListenerLimits:
    max_connections: int = 64
    frame_timeout: float | None = 120.0  # seconds from a frame's start block to its end block
    budget: BufferBudget = field(default_factory=lambda: BufferBudget(256 * 1024 * 1024))
    clock: object = None  # IReactorTime for frame deadlines; the global reactor when None

    def scheduler(self):
        if self.clock is None:
            from twisted.internet import reactor

            return reactor
        return self.clock


@implementer(IPushProducer, IHandshakeListener)
class MLLPServerProtocol(protocol.Protocol, TimeoutMixin):
    allowed_subjects: tuple[str, ...] = ()

    def __init__(
        self,
        intake: Intake,
        policy: IntakePolicy,
        max_size: int,
        idle_timeout: float | None,
        limits: ListenerLimits | None = None,
    ):
        self.intake = intake
        self.policy = policy
        self.decoder = MLLPDecoder(max_size)
        self.idle_timeout = idle_timeout
        self.limits = limits or ListenerLimits()
        self._pending: deque = deque()  # [ack bytes or None] in arrival order
        self._reading_paused = False
        self._peer_slow = False
        self._over_budget = False
        self._closing = False
        self._handshake_done = False
        self._deadline = None  # IDelayedCall of the unfinished frame
        self._deadline_frame = 0  # decoder.frames_started when the deadline was set

    # -- connection ------------------------------------------------------------------------
    def connectionMade(self):
        self.intake.metrics.connections.labels(self.policy.channel).inc()
        self.transport.registerProducer(self, True)
        self.setTimeout(self.idle_timeout)

    def connectionLost(self, reason=protocol.connectionDone):
        self.setTimeout(None)
        self._cancel_deadline()
        self.limits.budget.release(self)
        self._report_buffers()
        self.intake.metrics.connections.labels(self.policy.channel).dec()
        if getattr(self, "factory", None) is not None:
            self.factory.open_connections -= 1
        if self.decoder.pending:
            log.warning(
                "mllp.connection_lost_mid_frame", channel=self.policy.channel, bytes_lost_unacked=self.decoder.pending
            )
        if reason.check(SSL.Error) and not self._handshake_done:
            self._refused("tls_handshake_failed", error=_tls_error_text(reason.value))

    def _refused(self, event: str, **fields) -> None:
        """A peer turned away at the TLS layer: counted, and logged at most once per 10 s per
        channel (a scanner or a misconfigured RIS would otherwise flood the log)."""
        channel = self.policy.channel
        self._count_close(event)
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "?")
        limiter = self.factory.refusal_log if getattr(self, "factory", None) is not None else EveryFewSeconds()
        limiter(
            lambda suppressed: log.warning(
                f"mllp.{event}", channel=channel, peer_host=host, suppressed_since_last=suppressed, **fields
            )
        )

    def handshakeCompleted(self):
        """TLS channels: the peer certificate's CN must be one the channel allows."""
        self._handshake_done = True
        if not self.allowed_subjects:
            return
        cert = self.transport.getPeerCertificate()
        subject = cert.get_subject().commonName if cert is not None else None
        if subject not in self.allowed_subjects:
            self._refused("peer_refused", subject=str(subject)[:128])
            self._closing = True
            self.transport.abortConnection()

    def timeoutConnection(self):
        log.info("mllp.idle_timeout", channel=self.policy.channel)
        self._count_close("idle_timeout")
        self.transport.abortConnection()

    def _count_close(self, reason: str) -> None:
        self.intake.metrics.connections_closed.labels(self.policy.channel, reason).inc()

    # -- input -----------------------------------------------------------------------------
    def dataReceived(self, data: bytes):
        self.resetTimeout()
        for event in self.decoder.feed(data):
            if self._closing:
                return
            if isinstance(event, Frame):
                self._receive(event.payload)
            elif isinstance(event, Noise):
                quarantine(self.intake, self.policy, event.data, "bytes outside any MLLP frame")
            elif isinstance(event, Oversized):
                self._oversized(event)
        self._account()
        self._throttle()

    # -- limits ----------------------------------------------------------------------------
    def _account(self) -> None:
        """Report our unfinished bytes to the engine budget; arm or clear the frame deadline."""
        mid_frame, budget = self.decoder.mid_frame, self.limits.budget
        if not mid_frame and self._deadline is None and not budget.holds(self):
            return  # the usual read (whole frames): nothing held before or now, nothing to change
        budget.update(self, self.decoder.pending if mid_frame else 0)
        self._report_buffers()
        if not self.decoder.mid_frame or self._closing:
            self._cancel_deadline()
        elif self._deadline is None or self._deadline_frame != self.decoder.frames_started:
            self._arm_deadline()

    def _report_buffers(self) -> None:
        # Gauges change rarely (a message mid-frame, a paused reader): set only what moved, each
        # set takes the metric's lock.
        budget = self.limits.budget
        now = (budget.used, budget.paused)
        if now != budget.reported:  # one budget for the engine: what its gauges show
            budget.reported = now
            metrics = self.intake.metrics
            metrics.buffered_bytes.set(now[0])
            metrics.reads_paused.set(now[1])

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        if not self.limits.frame_timeout:
            return
        self._deadline_frame = self.decoder.frames_started
        self._deadline = self.limits.scheduler().callLater(self.limits.frame_timeout, self._frame_expired)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _frame_expired(self) -> None:
        """The frame did not end in time: keep its head in the journal, close once ACKs are out."""
        self._deadline = None
        head, size = self.decoder.partial_head(), self.decoder.pending
        reason = f"frame timeout: incomplete frame of {size} bytes after {self.limits.frame_timeout:g} s"
        log.warning("mllp.frame_timeout", channel=self.policy.channel, bytes_held=size)
        self._count_close("frame_timeout")
        if head:
            quarantine(self.intake, self.policy, head, reason)
        self.decoder = MLLPDecoder(self.decoder.max_size)  # frees the buffer now
        self.limits.budget.update(self, 0)
        self._report_buffers()
        self._close_after_acks()

    def pause_reading(self) -> None:
        """The engine budget is spent: stop reading this peer until bytes are released."""
        self._over_budget = True
        self._throttle()

    def resume_reading(self) -> None:
        self._over_budget = False
        self._throttle()

    def _oversized(self, event: Oversized) -> None:
        d = reject_oversized(self.intake, self.policy, event.head, event.size_seen, self.decoder.max_size)
        self._expect(d)
        d.addBoth(lambda _: self._close_after_acks())

    def _close_after_acks(self) -> None:
        self._closing = True
        if not self._pending:
            self.transport.loseConnection()

    def _receive(self, payload: bytes) -> None:
        """The hot path: a slot in the ACK order, filled when intake answers (no Deferred)."""
        slot = [None]
        self._pending.append(slot)
        self.intake.receive_then(self.policy, payload, partial(self._ready, slot))

    def _ready(self, slot: list, ack: bytes) -> None:
        slot[0] = ack
        self._flush()

    def _expect(self, d) -> None:
        slot = [None]
        self._pending.append(slot)

        def ready(ack: bytes):
            self._ready(slot, ack)

        def failed(failure):
            log.error("mllp.intake_failed", channel=self.policy.channel, error=failure.getErrorMessage())
            self.transport.abortConnection()

        d.addCallbacks(ready, failed)

    def _flush(self) -> None:
        ready = []
        while self._pending and self._pending[0][0] is not None:
            ready.append(frame(self._pending.popleft()[0]))
        if ready:  # one send for the ACKs ready now, without a reactor turn when possible
            write_now(self.transport, b"".join(ready))
        if self._closing and not self._pending:
            self.transport.loseConnection()
        self._throttle()

    # -- back-pressure ---------------------------------------------------------------------
    def _throttle(self) -> None:
        should_pause = self._peer_slow or self._over_budget or len(self._pending) >= MAX_IN_FLIGHT
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
    def __init__(
        self,
        intake: Intake,
        policy: IntakePolicy,
        max_size: int = 64 * 1024 * 1024,
        idle_timeout: float | None = 600.0,
        allowed_subjects: tuple[str, ...] = (),
        limits: ListenerLimits | None = None,
    ):
        self.allowed_subjects = tuple(allowed_subjects)
        self.intake = intake
        self.policy = policy
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.limits = limits or ListenerLimits()
        self.open_connections = 0
        self._refusal_log = EveryFewSeconds()  # connections over max_connections
        self.refusal_log = EveryFewSeconds()  # TLS handshakes failed, peers refused

    def buildProtocol(self, addr):
        if not self.admit():
            return None  # Twisted closes the accepted socket at once
        p = MLLPServerProtocol(self.intake, self.policy, self.max_size, self.idle_timeout, self.limits)
        p.allowed_subjects = self.allowed_subjects
        p.factory = self
        self.open_connections += 1
        return p

    def admit(self) -> bool:
        """Room for one more connection on this channel? Refusals are counted and logged (rate-limited)."""
        if self.open_connections < self.limits.max_connections:
            return True
        channel = self.policy.channel
        self.intake.metrics.connections_refused.labels(channel).inc()
        self._refusal_log(
            lambda suppressed: log.warning(
                "mllp.connection_refused",
                channel=channel,
                reason="max_connections",
                limit=self.limits.max_connections,
                suppressed_since_last=suppressed,
            )
        )
        return False
