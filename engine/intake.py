"""Intake: scan MSH/PID, decide accept/reject, store durably, then answer the technical ACK.

The ACK of a message leaves only after its own journal commit. Rejected input is journaled too
(state `rejected`, raw bytes kept) so that an operator can see and replay it.
"""

from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import dataclass, field, replace

import structlog
from twisted.internet import defer
from twisted.python.failure import Failure

from engine.errors import JournalError, ParseError
from engine.hl7.ack import AckError, build_ack
from engine.hl7.scan import Header, scan
from engine.ids import new_id
from engine.journal.base import DUPLICATE, RECEIVED, REJECTED, InboundRecord

log = structlog.get_logger("engine.intake")

DEFAULT_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8")
PROCESSING_IDS = ("P", "T", "D")


@dataclass(frozen=True)
class IntakePolicy:
    """What one inbound channel accepts; built from its channel file."""

    channel: str
    versions: tuple[str, ...] = DEFAULT_VERSIONS
    message_types: tuple[str, ...] = ()  # empty: any; "ORU^R01" or "ORU" (any trigger)
    codec: str = "utf-8"
    duplicate_window: float = 7 * 24 * 3600.0
    local_app: str = "PFI"
    # ack_mode `document-request`: an engine.docrequest.check.DocumentRequestGate; None = receipt.
    document_check: object | None = None


@dataclass(slots=True)
class Verdict:
    code: str
    errors: tuple[AckError, ...] = ()
    reason: str = ""


class _ChannelMetrics:
    """The metric children of one channel, looked up once instead of per message."""

    def __init__(self, metrics, channel: str):
        self.received = metrics.received.labels(channel)
        self.acked = metrics.acked.labels(channel)
        self.duplicates = metrics.duplicates.labels(channel)
        self.ack_latency = metrics.ack_latency.labels(channel)


@dataclass
class Intake:
    journal: object
    metrics: object
    clock: object
    on_accepted: object = None  # called after an accepted message is stored (wakes the dispatcher)
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    _channels: dict = field(default_factory=dict)
    _stamp: tuple = (None, "")  # (second, its HL7 timestamp): one strftime per second

    def receive(self, policy: IntakePolicy, raw: bytes) -> defer.Deferred:
        """Journal `raw` and fire with the ACK bytes to send back. Never fails: whatever the frame
        does to the parser, it gets an answer (see `_internal_fault`)."""
        return self.guarded(policy, raw, self._receive)

    def guarded(self, policy: IntakePolicy, raw: bytes, work) -> defer.Deferred:
        """Run `work(policy, raw)` (a Deferred of the ACK); a defect in it becomes an AR."""
        try:
            d = work(policy, raw)
        except Exception:
            d = defer.fail()
        return d.addErrback(self._internal_fault, policy, raw)

    def _receive(self, policy: IntakePolicy, raw: bytes) -> defer.Deferred:
        if policy.document_check is not None:
            return defer.Deferred.fromCoroutine(self._receive_document(policy, raw))
        started = time.perf_counter()
        now = self.clock.seconds()
        record = InboundRecord(uid=new_id(now), channel=policy.channel, received_at=now, raw=raw)
        try:
            header = scan(raw, policy.codec)
        except ParseError as exc:
            header, verdict = None, malformed(exc)
        else:
            verdict = judge(policy, header)
            _index(record, header, policy, accepted=verdict.code == "AA")
        record.state = RECEIVED if verdict.code == "AA" else REJECTED
        record.reason = verdict.reason
        record.ack_code = verdict.code
        record.ack = self._ack(header, verdict, now, policy)
        d = self.journal.append_inbound(record)
        # One callback pair per message: log, count and hand back the ACK.
        d.addCallbacks(self._stored, self._not_stored, callbackArgs=(policy, started, nack_reason(verdict)),
                       errbackArgs=(record, header, policy, now, started))
        return d

    async def _receive_document(self, policy: IntakePolicy, raw: bytes) -> bytes:
        """ack_mode document-request: check the request off the reactor thread before answering.

        Messages the gate does not apply to take the receipt path; all wait for the earlier
        messages of the channel (FIFO lock), so the journal keeps the arrival order.
        """
        gate, plain = policy.document_check, replace(policy, document_check=None)
        try:
            header = scan(raw, policy.codec)
        except ParseError:
            header = None
        checked = header is not None and judge(policy, header).code == "AA" and gate.applies(header)
        if not checked and not gate.busy:
            return await self.receive(plain, raw)
        started = time.perf_counter()
        lock = gate.ordered()
        await lock.acquire()
        try:
            errors = await gate.check_in_thread(raw) if checked else []
            code = gate.ack_code(errors)
            if code == "AA":
                stored = self.receive(plain, raw)
            else:
                refused = gate.blocking(errors)
                stored = self._reject_document(plain, raw, header, code, refused, gate.describe(refused),
                                               started)
        finally:
            lock.release()
        return await stored

    def _reject_document(self, policy: IntakePolicy, raw: bytes, header, code: str, errors,
                         reason: str, started: float):
        """Journal a message whose document request failed its checks (state rejected) and NACK."""
        now = self.clock.seconds()
        record = InboundRecord(uid=new_id(now), channel=policy.channel, received_at=now, raw=raw,
                               state=REJECTED, reason=reason, ack_code=code)
        _index(record, header, policy, accepted=False)
        verdict = Verdict(code, tuple(errors), reason)
        record.ack = self._ack(header, verdict, now, policy)
        d = self.journal.append_inbound(record)
        d.addCallbacks(self._stored, self._not_stored, callbackArgs=(policy, started, nack_reason(verdict)),
                       errbackArgs=(record, header, policy, now, started))
        return d

    def _ack(self, header, verdict: Verdict, now: float, policy: IntakePolicy) -> bytes:
        control = f"{int(now * 1000)}{next(self._counter) % 10000:04d}"
        return build_ack(header, verdict.code, control, self._timestamp(now), verdict.errors,
                         policy.local_app, policy.codec)

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if self._stamp[0] != second:
            self._stamp = (second, time.strftime("%Y%m%d%H%M%S", time.localtime(second)))
        return self._stamp[1]

    def _stored(self, record: InboundRecord, policy: IntakePolicy, started: float, reason: str) -> bytes:
        # The record is committed: its answer is due whatever happens to the bookkeeping below.
        try:
            self._after_store(record, policy, started, reason)
        except Exception:
            log.error("intake.bookkeeping_failed", message_id=record.uid, channel=record.channel,
                      **_fault_fields(Failure()))
        return record.ack

    def _after_store(self, record: InboundRecord, policy: IntakePolicy, started: float, reason: str) -> None:
        if record.state == DUPLICATE:
            log.info("message.duplicate", message_id=record.uid, channel=record.channel,
                     control_id=record.control_id, original=record.duplicate_of)
        elif record.state == REJECTED:
            log.warning("message.rejected", message_id=record.uid, channel=record.channel,
                        control_id=record.control_id, reason=record.reason)
        else:
            log.info("message.received", message_id=record.uid, channel=record.channel,
                     control_id=record.control_id, type=record.msg_type)
            if self.on_accepted is not None:
                self.on_accepted()
        self._observe(record, policy, started, reason)

    def _not_stored(self, failure, record, header, policy, now, started) -> bytes:
        failure.trap(JournalError)
        # AR: circumstantial, the same message may be resent once the journal is back.
        reason = "journal unavailable, message not stored: retry later"
        log.error("message.not_stored", message_id=record.uid, channel=record.channel,
                  control_id=record.control_id, error=failure.getErrorMessage())
        record.state, record.ack_code, record.reason = "not-stored", "AR", reason
        ack = self._ack(header, Verdict("AR", (AckError(207, "", reason),)), now, policy)
        self._observe(record, policy, started, "journal-unavailable")
        return ack

    def _internal_fault(self, failure, policy: IntakePolicy, raw: bytes) -> defer.Deferred:
        """A defect in the per-frame path: log it once (with its stack), journal the raw frame as
        rejected for replay, answer AR 207 (the frame itself may be fine: resend later)."""
        log.error("intake.internal_error", channel=policy.channel, **_fault_fields(failure))
        now = self.clock.seconds()
        header = _scan_or_none(raw, policy.codec)
        reason = f"internal error ({failure.type.__name__}): resend later"
        record = InboundRecord(uid=new_id(now), channel=policy.channel, received_at=now, raw=raw,
                               state=REJECTED, reason=reason, ack_code="AR")
        verdict = Verdict("AR", (AckError(207, "", "internal error, resend later"),), reason)
        record.ack = self._fault_ack(header, verdict, now, policy)
        d = defer.maybeDeferred(self.journal.append_inbound, record)
        d.addErrback(lambda f: log.error("intake.fault_not_stored", channel=policy.channel,
                                         error=f.type.__name__))
        d.addBoth(lambda _: self._count_nack(policy, "AR", "internal-error"))
        return d.addBoth(lambda _: record.ack)

    def _fault_ack(self, header, verdict: Verdict, now: float, policy: IntakePolicy) -> bytes:
        try:
            return self._ack(header, verdict, now, policy)
        except Exception:  # the header itself broke the ACK builder: answer without echoing it
            return self._ack(None, verdict, now, policy)

    def _count_nack(self, policy: IntakePolicy, code: str, label: str) -> None:
        try:
            self.metrics.nacked.labels(policy.channel, code, label).inc()
        except Exception:
            pass  # a metrics defect must not cost the answer

    def _observe(self, record: InboundRecord, policy: IntakePolicy, started: float, reason: str) -> None:
        m = self._channels.get(policy.channel)
        if m is None:
            m = self._channels[policy.channel] = _ChannelMetrics(self.metrics, policy.channel)
        m.received.inc()
        if record.state == DUPLICATE:
            m.duplicates.inc()
        if record.ack_code == "AA":
            m.acked.inc()
        else:
            self.metrics.nacked.labels(policy.channel, record.ack_code, reason).inc()
        m.ack_latency.observe(time.perf_counter() - started)


#: `reason` label of pfi_messages_nacked_total: table 0357 codes by name, plus the engine's own
#: cases (journal-unavailable, internal-error). A closed set: the sender's text (MSH-9, MSH-12…)
#: goes to the journal row, never into a label (each distinct value would be a new series).
NACK_REASONS = {
    100: "segment-sequence", 101: "required-field-missing", 102: "data-type",
    103: "table-value-not-found", 198: "cardinality", 199: "other",
    200: "unsupported-message-type", 201: "unsupported-event", 202: "unsupported-processing-id",
    203: "unsupported-version", 205: "duplicate-key", 206: "record-locked", 207: "application-error",
}


def nack_reason(verdict: Verdict) -> str:
    """The metrics label of a NACK (AA: "")."""
    if verdict.code == "AA":
        return ""
    return NACK_REASONS.get(verdict.errors[0].code, "other") if verdict.errors else "other"


def _fault_fields(failure: Failure) -> dict:
    """Exception type and stack for the log, without the exception's message (it may quote the
    frame, hence patient data)."""
    return {"error": failure.type.__name__,
            "stack": "".join(traceback.format_tb(failure.getTracebackObject()))}


def _scan_or_none(raw: bytes, codec: str) -> Header | None:
    try:
        return scan(raw, codec)
    except Exception:
        return None


def malformed(exc: ParseError) -> Verdict:
    """An unreadable MSH is AE: the frame itself is wrong, resending it unchanged cannot help."""
    code, location = getattr(exc, "code", 100), getattr(exc, "location", "MSH^1")
    return Verdict("AE", (AckError(code, location, str(exc)),), str(exc))


def judge(policy: IntakePolicy, h: Header) -> Verdict:
    """Accept or reject on what MSH says; a reject is AE with a table 0357 code."""
    if not h.control_id:
        return _reject(101, "MSH^1^10", "MSH-10 message control id is empty")
    if h.version not in policy.versions:
        return _reject(203, "MSH^1^12", f"HL7 version {h.version!r} not accepted on this channel")
    if not h.message_code:
        return _reject(101, "MSH^1^9", "MSH-9 message type is empty")
    if policy.message_types and not _type_accepted(policy.message_types, h):
        code = 201 if any(t.split("^")[0] == h.message_code for t in policy.message_types) else 200
        return _reject(code, "MSH^1^9", f"message type {h.message_type} not accepted on this channel")
    if h.processing_id and h.processing_id not in PROCESSING_IDS:
        return _reject(202, "MSH^1^11", f"processing id {h.processing_id!r} not supported")
    return Verdict("AA")


def _type_accepted(accepted: tuple[str, ...], h: Header) -> bool:
    return h.message_type in accepted or h.message_code in accepted


def _reject(code: int, location: str, reason: str) -> Verdict:
    # AE, not AR: the message itself is wrong (volets §c; the ANS example answers 203 with AE).
    return Verdict("AE", (AckError(code, location, reason),), reason)


def _index(record: InboundRecord, h: Header, policy: IntakePolicy, accepted: bool) -> None:
    record.sender, record.facility = h.sending_app, h.sending_facility
    record.receiver, record.receiver_facility = h.receiving_app, h.receiving_facility
    record.control_id, record.msg_type = h.control_id, h.message_type
    record.version, record.profile = h.version, h.profile
    record.patient_ids, record.charset = h.patient_ids, h.charset
    # Only accepted messages count for duplicates: a rejected one may be fixed and sent again.
    if accepted and policy.duplicate_window > 0:
        record.dup_key = "\x1f".join((policy.channel, h.sending_app, h.sending_facility, h.control_id))
        record.dup_window = policy.duplicate_window


def quarantine(intake: Intake, policy: IntakePolicy, data: bytes, reason: str) -> defer.Deferred:
    """Journal bytes that are not a message (noise between frames) so that nothing disappears."""
    now = intake.clock.seconds()
    record = InboundRecord(uid=new_id(now), channel=policy.channel, received_at=now, raw=data,
                           state=REJECTED, reason=reason)
    intake.metrics.quarantined.labels(policy.channel, reason.split(":")[0]).inc()
    d = defer.maybeDeferred(intake.journal.append_inbound, record)
    d.addCallback(lambda r: log.warning("input.quarantined", message_id=r.uid, channel=r.channel,
                                        reason=reason, size=len(data)))
    d.addErrback(lambda f: log.error("input.quarantine_failed", channel=policy.channel,
                                     error=f.getErrorMessage()))
    return d


def reject_oversized(intake: Intake, policy: IntakePolicy, head: bytes, size: int, limit: int) -> defer.Deferred:
    """AE for a frame over the size limit (the same bytes would be refused again); its first bytes
    are journaled for the operator."""
    return intake.guarded(policy, head, lambda p, raw: _oversized(intake, p, raw, size, limit))


def _oversized(intake: Intake, policy: IntakePolicy, head: bytes, size: int, limit: int) -> defer.Deferred:
    reason = f"message of {size} bytes or more exceeds the channel limit of {limit} bytes"
    now = intake.clock.seconds()
    header = _scan_or_none(head, policy.codec)
    record = InboundRecord(uid=new_id(now), channel=policy.channel, received_at=now, raw=head,
                           state=REJECTED, reason=reason, ack_code="AE")
    if header is not None:
        _index(record, header, policy, accepted=False)
    record.ack = intake._ack(header, Verdict("AE", (AckError(199, "", reason),), reason), now, policy)
    intake.metrics.quarantined.labels(policy.channel, "oversized").inc()
    d = intake.journal.append_inbound(record)
    d.addCallbacks(lambda r: r.ack, lambda f: record.ack)
    return d
