"""Outbound MLLP connector: delivers one message at a time to one destination and says what happened.

One persistent connection per sender, reused across sends; sends are serialised (FIFO). Each send
waits for the ACK up to `ack_timeout` and only accepts an ACK whose MSA-2 equals the MSH-10 just
sent. Whenever the stream may be out of step with our requests (timeout, mismatched or garbage
answer, unsolicited data) the connection is dropped, so a late ACK dies with it and can never be
paired with a later message. The sender never sleeps or retries by itself: a failure comes back
as a `SendOutcome` with action "retry" and the caller's queue waits (engine/retry.py backoff).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import structlog
from twisted.internet import defer, error, protocol, ssl
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from zope.interface import implementer

from engine.config.channels import MllpOutSettings, ReplyAction, TlsSettings
from engine.mllp.client import AckInfo, control_id_of, read_ack
from engine.mllp.directwrite import write_now
from engine.mllp.framing import Frame, MLLPDecoder, Noise, frame
from engine.tls import client_options

log = structlog.get_logger(__name__)

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
MAX_ACK_BYTES = 1024 * 1024  # an ACK is a few hundred bytes; anything huge is not one

Action = ReplyAction  # one definition, engine/config/channels.py


@dataclass(frozen=True)
class SendOutcome:
    """What one send produced.

    `kind` says which case applied: an MSA-1 code (AA, AE...), or timeout, mismatch, garbage,
    refused (could not connect), lost (connection closed before the ACK), invalid (not sendable).
    """

    action: Action
    reason: str
    ack_code: str | None = None
    ack: bytes | None = None
    kind: str = ""


@implementer(IHandshakeListener)
class _SenderProtocol(protocol.Protocol):
    """One connection: hands the first event after a request to the waiting send."""

    def __init__(self, tls: bool):
        self.decoder = MLLPDecoder(MAX_ACK_BYTES)
        self.tls = tls
        self.ready: defer.Deferred = defer.Deferred()  # connected (and TLS handshake done)
        self.lost: defer.Deferred = defer.Deferred()
        self._answer: defer.Deferred | None = None
        self._dropped = False

    @property
    def usable(self) -> bool:
        """Connected, handshake done, and not being closed."""
        return self.ready.called and not self._dropped and not self.lost.called

    def connectionMade(self):
        if not self.tls:
            self.ready.callback(self)

    def handshakeCompleted(self):
        if not self.ready.called:
            self.ready.callback(self)

    def request(self, payload: bytes) -> defer.Deferred:
        """Write one frame; the Deferred fires with the next decoder event (Frame, Noise...)."""
        self._answer = defer.Deferred(lambda _: self._forget_answer())
        answer = self._answer
        # At once when nothing is buffered (as intake's ACKs): no epoll registration and no
        # extra reactor turn per message sent.
        write_now(self.transport, frame(payload))
        return answer

    def _forget_answer(self) -> None:
        self._answer = None

    def dataReceived(self, data: bytes):
        events = self.decoder.feed(data)
        if not events:
            return
        answer, self._answer = self._answer, None
        if answer is None or len(events) > 1:
            # A late, extra or unsolicited answer: the stream is out of step with our requests,
            # so this connection must not carry the next message.
            log.warning("mllp.out.unsolicited", events=len(events), waiting=answer is not None)
            self.drop()
        if answer is not None:
            answer.callback(events[0])

    def connectionLost(self, reason=protocol.connectionDone):
        self.lost_reason = reason
        self._dropped = True  # before the errbacks below: they may resume a send synchronously
        if not self.ready.called:
            self.ready.errback(reason)
        if self._answer is not None:
            answer, self._answer = self._answer, None
            answer.errback(reason)
        self.lost.callback(None)

    def drop(self) -> None:
        """Close at once, discarding unsent bytes (the peer may not be reading). Idempotent."""
        if self._dropped:
            return
        self._dropped = True
        if self.transport is not None:
            self.transport.abortConnection()


class MLLPSender:
    """Delivers messages to one MLLP destination over one reused connection.

    `reactor` makes the connections; `clock` (default: the reactor) times the ACK wait, so tests
    can inject a `task.Clock`.
    """

    def __init__(self, reactor, settings: MllpOutSettings, clock=None):
        self.reactor = reactor
        self.clock = clock or reactor
        self.settings = settings
        self._lock = defer.DeferredLock()
        self._proto: _SenderProtocol | None = None
        self._live: set[_SenderProtocol] = set()
        self._connecting: defer.Deferred | None = None
        self._closed = False
        self.connections_made = 0
        self._log = log.bind(channel=settings.name)

    async def send(self, message: bytes) -> SendOutcome:
        """Deliver `message` (one HL7 message, CR separators) and report the outcome."""
        control_id = control_id_of(message).strip()
        await self._lock.acquire()
        try:
            outcome = await self._send_locked(message, control_id)
        finally:
            self._lock.release()
        self._log_outcome(control_id, outcome)
        return outcome

    async def close(self) -> None:
        """Close the connection; a send in progress comes back with action "retry"."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        for proto in list(self._live):
            proto.drop()
        await defer.DeferredList([p.lost for p in list(self._live)])

    async def _send_locked(self, message: bytes, control_id: str) -> SendOutcome:
        if not message.startswith(b"MSH") or not control_id:
            # Without MSH-10 no ACK can be checked; retrying cannot fix the message.
            return SendOutcome("dead", "invalid message: no MSH segment or empty MSH-10", kind="invalid")
        if self._closed:
            return SendOutcome(self._action("refused"), "sender closed", kind="refused")
        proto = self._proto
        try:
            if proto is None or not proto.usable:
                proto = await self._connection()
        except Exception as exc:  # every connect failure is worth a later retry
            return SendOutcome(self._action("refused"), _connect_failure(exc), kind="refused")
        if not self.settings.expect_ack:
            return await self._write_and_close(proto, message)
        return await self._exchange(proto, message, control_id)

    async def _write_and_close(self, proto: _SenderProtocol, message: bytes) -> SendOutcome:
        """A destination that never answers (the reference DRIMbox reads until its peer closes):
        sent = written, flushed and the connection closed cleanly; one connection per message."""
        from twisted.internet.error import ConnectionDone

        proto.transport.write(frame(message))
        proto.transport.loseConnection()  # after the pending bytes are written
        closed = proto.lost
        closed.addTimeout(self.settings.ack_timeout, self.clock)
        try:
            await closed
        except defer.TimeoutError:
            proto.drop()
            return self._by_policy("timeout", f"not flushed within {self.settings.ack_timeout:g} s")
        reason = getattr(proto, "lost_reason", None)
        if reason is not None and not reason.check(ConnectionDone):
            return SendOutcome(
                self._action("lost"), f"connection lost while writing: {_describe(reason.value)}", kind="lost"
            )
        return SendOutcome("done", "written and flushed (this destination sends no ACK)", kind="written")

    async def _exchange(self, proto: _SenderProtocol, message: bytes, control_id: str) -> SendOutcome:
        answer = proto.request(message)
        answer.addTimeout(self.settings.ack_timeout, self.clock)
        try:
            event = await answer
        except defer.TimeoutError:
            proto.drop()  # a late ACK must die with this connection
            return self._by_policy("timeout", f"no ACK within {self.settings.ack_timeout:g} s")
        except Exception as exc:
            return SendOutcome(self._action("lost"), f"connection lost before the ACK: {_describe(exc)}", kind="lost")
        outcome = self._judge(event, control_id)
        if outcome.kind in ("mismatch", "garbage"):
            proto.drop()  # out of step with the peer: start afresh
        return outcome

    def _judge(self, event, control_id: str) -> SendOutcome:
        if not isinstance(event, Frame):
            what = "unframed bytes" if isinstance(event, Noise) else "an oversized frame"
            return self._by_policy("garbage", f"answer is not an HL7 ACK: {what}")
        if not event.payload.startswith(b"MSH"):
            return self._by_policy("garbage", "answer is not an HL7 ACK: no MSH segment", event.payload)
        info = read_ack(event.payload)
        if info.code not in ACK_CODES:
            return self._by_policy("garbage", f"answer is not an HL7 ACK: MSA-1 {info.code[:8]!r}", event.payload)
        if info.control_id.strip() != control_id:
            return self._by_policy(
                "mismatch", f"ACK for MSH-10 {info.control_id[:64]!r}, sent {control_id!r}", event.payload, info.code
            )
        return self._by_ack(info)

    def _by_ack(self, info: AckInfo) -> SendOutcome:
        action = getattr(self.settings.reply_policy, info.code)
        detail = "; ".join(info.errors)[:500]
        reason = f"{info.code} from destination" + (f": {detail}" if detail else "")
        return SendOutcome(action, reason, info.code, info.raw, kind=info.code)

    def _by_policy(self, kind: str, reason: str, ack: bytes | None = None, code: str | None = None) -> SendOutcome:
        return SendOutcome(self._action(kind), f"{kind}: {reason}", code, ack, kind=kind)

    def _action(self, kind: str) -> Action:
        # ReplyPolicy has no entry for refused/lost today: those are always worth a retry.
        return getattr(self.settings.reply_policy, kind, "retry")

    async def _connection(self) -> _SenderProtocol:
        if self._proto is not None and self._proto.usable:
            return self._proto
        self._proto = None
        self._connecting = defer.ensureDeferred(self._connect())
        try:
            proto = await self._connecting
        finally:
            self._connecting = None
        self._proto = proto
        return proto

    async def _connect(self) -> _SenderProtocol:
        proto = _SenderProtocol(tls=self.settings.tls is not None)
        await connectProtocol(self._endpoint(), proto)
        self._live.add(proto)
        proto.lost.addBoth(lambda _: self._live.discard(proto))
        try:
            await proto.ready.addTimeout(self.settings.connect_timeout, self.clock)
        except Exception as exc:
            proto.drop()
            raise HandshakeError(_describe(exc)) from exc
        self.connections_made += 1
        self._log.info("mllp.out.connected", host=self.settings.host, port=self.settings.port, tls=proto.tls)
        return proto

    def _endpoint(self):
        s = self.settings
        tcp = HostnameEndpoint(self.reactor, s.host, s.port, timeout=s.connect_timeout)
        if s.tls is None:
            return tcp
        return wrapClientTLS(client_tls_options(s.host, s.tls), tcp)

    def _log_outcome(self, control_id: str, outcome: SendOutcome) -> None:
        # A success is counted in delivery.summary and journaled: its own line only at debug
        # level, and nothing built for it otherwise (one per message sent).
        done = outcome.action == "done"
        if done and not _debug_enabled(self._log):
            return
        # MSH-10 and codes only: ERR text in the reason may quote patient data.
        fields = dict(control_id=control_id[:64], action=outcome.action, kind=outcome.kind)
        if outcome.kind not in ACK_CODES:
            fields["reason"] = outcome.reason
        (self._log.debug if done else self._log.warning)("mllp.out.sent", **fields)


def _debug_enabled(logger) -> bool:
    """structlog's filtering loggers say whether a level would be written; others: assume so."""
    check = getattr(logger, "is_enabled_for", None)
    return check is None or check(logging.DEBUG)


def client_tls_options(host: str, tls: TlsSettings):
    """Client TLS: verify the destination against `tls.ca` (system roots when unset) and present
    our certificate, so that links to teleradiology platforms can be mutual TLS."""
    ours = ssl.PrivateCertificate.loadPEM(Path(tls.certificate).read_bytes() + b"\n" + Path(tls.key).read_bytes())
    trust = ssl.Certificate.loadPEM(Path(tls.ca).read_bytes()) if tls.ca else None
    return client_options(host, trust, ours)


class HandshakeError(Exception):
    """The TCP connection was made but the TLS handshake failed or did not finish in time."""


def _connect_failure(exc: BaseException) -> str:
    if isinstance(exc, HandshakeError):
        return f"TLS handshake failed: {exc}"
    if isinstance(exc, error.ConnectionRefusedError):
        return f"connection refused: {_describe(exc)}"
    if isinstance(exc, (error.TimeoutError, defer.TimeoutError)):
        return f"connect timeout: {_describe(exc)}"
    return f"connection failed: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Failure):
        exc = exc.value
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
