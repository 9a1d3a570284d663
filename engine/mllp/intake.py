"""Intake: scan MSH/PID, decide accept/reject, store durably, then answer the technical ACK.

The ACK of a message leaves only after its own journal commit. Rejected input is journaled too
(state `rejected`, raw bytes kept) so that an operator can see and replay it.
"""

from __future__ import annotations

import hashlib
import itertools
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Callable

import structlog
from twisted.internet import defer
from twisted.python.failure import Failure

from engine.errors import JournalError, ParseError
from engine.hl7.ack import ERROR_TEXT, AckError, build_ack
from engine.hl7.scan import Header, scan
from engine.ids import new_id
from engine.journal.base import DUPLICATE, RECEIVED, REJECTED, InboundRecord
from engine.log import EveryFewSeconds

log = structlog.get_logger("engine.intake")  # the name operators filter on

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
    # Rejected frames are kept whole while the channel's rejected bytes of the last hour stay
    # under this quota; beyond, their first `rejected_head` bytes plus size and SHA-256.
    rejected_quota: int = 64 * 1024 * 1024
    rejected_head: int = 64 * 1024
    # Teleradiology orders (ORM^O01, OMI^O23) checked against their CI-SIS profile before the ACK.
    tlr_orders: bool = False


@dataclass(slots=True)
class Verdict:
    code: str
    errors: tuple[AckError, ...] = ()
    reason: str = ""


@dataclass
class Intake:
    journal: object
    metrics: object
    clock: object
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    _stamp: tuple = (None, "")  # (second, its HL7 timestamp): one strftime per second
    _rejected: dict = field(default_factory=dict)  # channel -> RejectedBytes of the last hour
    _tally: dict = field(default_factory=dict)  # channel -> Counter of states since the last summary
    _rejection_logs: dict = field(default_factory=dict)  # channel -> EveryFewSeconds

    def _append(self, record: InboundRecord, policy: IntakePolicy, then=None):
        """Journal `record`; a rejected frame beyond the channel's hourly quota keeps its head.
        A Deferred, or None with `then` (see the journal's append_inbound)."""
        if record.state == REJECTED:
            self._bound_rejected(record, policy)
        return self.journal.append_inbound(record, then)

    def _bound_rejected(self, record: InboundRecord, policy: IntakePolicy) -> None:
        size = len(record.raw)
        budget = self._rejected.setdefault(policy.channel, RejectedBytes(policy.rejected_quota))
        self.metrics.rejected_bytes.labels(policy.channel).inc(size)
        if budget.keep_whole(size, self.clock.seconds()) or size <= policy.rejected_head:
            return
        digest = hashlib.sha256(record.raw).hexdigest()
        record.raw = record.raw[: policy.rejected_head]
        record.reason = (
            f"{TRUNCATED_MARK} first {policy.rejected_head} of {size} bytes kept, sha256 {digest}] {record.reason}"
        )
        self.metrics.rejected_truncated.labels(policy.channel).inc()
        budget.warn(
            lambda suppressed: log.warning(
                "intake.rejected_quota_exceeded",
                channel=policy.channel,
                quota_bytes=policy.rejected_quota,
                suppressed_since_last=suppressed,
            )
        )

    def receive(self, policy: IntakePolicy, raw: bytes) -> defer.Deferred:
        """Journal `raw` and fire with the ACK bytes to send back. Total: whatever the bytes do to
        the parser or the checks, the frame is answered and kept (AR 207 on an internal fault)."""
        try:
            if policy.document_check is not None:
                d = defer.Deferred.fromCoroutine(self._receive_document(policy, raw))
            else:
                d = self._receive_plain(policy, raw)
        except Exception:  # noqa: BLE001 — a frame must never take the connection down
            return self._internal_fault(policy, raw)
        d.addErrback(lambda failure: self._internal_fault(policy, raw, failure))
        return d

    def receive_then(self, policy: IntakePolicy, raw: bytes, answer: Callable[[bytes], None]) -> None:
        """`receive` for the listener's hot path: calls `answer(ack)` on the reactor thread once
        the frame is journaled (or refused), without a Deferred per message on the plain path
        (~4 us of callback chain each). Total, as `receive`: every frame is answered and kept."""
        if policy.document_check is not None:
            self.receive(policy, raw).addCallback(answer)
            return
        try:
            record, header, now, started = self._read_plain(policy, raw)
            self._append(
                record,
                policy,
                lambda result: self._settled(result, record, header, policy, raw, now, started, answer),
            )
        except Exception:  # noqa: BLE001 — a frame must never take the connection down
            self._internal_fault(policy, raw).addCallback(answer)

    def _settled(self, result, record, header, policy, raw, now, started, answer) -> None:
        """The journal's verdict on a record of `receive_then`: answer its ACK, the AR of a
        journal that could not store it, or the AR 207 of an internal fault."""
        try:
            if isinstance(result, JournalError):
                ack = self._not_stored_ack(record, header, policy, now, started, str(result))
            elif isinstance(result, Exception):
                raise result
            else:
                ack = self._stored(record, policy, started)
        except Exception:  # noqa: BLE001
            self._internal_fault(policy, raw).addCallback(answer)
            return
        answer(ack)

    def _receive_plain(self, policy: IntakePolicy, raw: bytes) -> defer.Deferred:
        record, header, now, started = self._read_plain(policy, raw)
        return self._journal(record, header, policy, now, started)

    def _read_plain(self, policy: IntakePolicy, raw: bytes) -> tuple:
        """Scan, judge and answer a frame: (its record, with the ACK; header; now; started)."""
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
        self._answer(record, header, verdict, now, policy)
        return record, header, now, started

    def _journal(self, record: InboundRecord, header, policy: IntakePolicy, now: float, started: float):
        """Journal the answered record; fires with its ACK (or the AR if it could not be stored).
        One callback pair per message: log, count and hand back the ACK."""
        d = self._append(record, policy)
        d.addCallbacks(
            self._stored,
            self._not_stored,
            callbackArgs=(policy, started),
            errbackArgs=(record, header, policy, now, started),
        )
        return d

    def _internal_fault(self, policy: IntakePolicy, raw: bytes, failure=None) -> defer.Deferred:
        """An unexpected exception while handling a frame: AR 207 (may be resent once fixed), the
        raw bytes journaled as rejected with the exception type (its text may quote the message)."""
        failure = failure or Failure()
        error = failure.value
        # The stack, not the exception's text: it may quote the frame (patient data).
        log.error(
            "intake.internal_error",
            channel=policy.channel,
            error_type=type(error).__name__,
            stack="".join(traceback.format_tb(failure.getTracebackObject())),
        )
        now = self.clock.seconds()
        reason = f"internal error while reading the message ({type(error).__name__}): send it again later"
        record = InboundRecord(
            uid=new_id(now),
            channel=policy.channel,
            received_at=now,
            raw=raw,
            state=REJECTED,
            reason=reason,
            ack_code="AR",
        )
        record.ack = self._ack(None, Verdict("AR", (AckError(207, "", reason),), reason), now, policy)
        self.metrics.nacked.labels(policy.channel, "AR", "207").inc()
        d = self._append(record, policy)
        d.addErrback(
            lambda f: log.error(
                "intake.internal_error_not_journaled", channel=policy.channel, error=f.getErrorMessage()
            )
        )
        d.addBoth(lambda _: record.ack)
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
                stored = self._reject_document(plain, raw, header, code, refused, gate.describe(refused), started)
        finally:
            lock.release()
        return await stored

    def _reject_document(
        self, policy: IntakePolicy, raw: bytes, header, code: str, errors, reason: str, started: float
    ):
        """Journal a message whose document request failed its checks (state rejected) and NACK."""
        now = self.clock.seconds()
        record = InboundRecord(
            uid=new_id(now),
            channel=policy.channel,
            received_at=now,
            raw=raw,
            state=REJECTED,
            reason=reason,
            ack_code=code,
        )
        _index(record, header, policy, accepted=False)
        self._answer(record, header, Verdict(code, tuple(errors), reason), now, policy)
        return self._journal(record, header, policy, now, started)

    def _answer(self, record: InboundRecord, header, verdict: Verdict, now: float, policy: IntakePolicy) -> None:
        record.ack = self._ack(header, verdict, now, policy)
        record.error_code = verdict.errors[0].code if verdict.errors else 0

    def _ack(self, header, verdict: Verdict, now: float, policy: IntakePolicy) -> bytes:
        control = f"{int(now * 1000)}{next(self._counter) % 10000:04d}"
        return build_ack(
            header, verdict.code, control, self._timestamp(now), verdict.errors, policy.local_app, policy.codec
        )

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if self._stamp[0] != second:
            self._stamp = (second, time.strftime("%Y%m%d%H%M%S", time.localtime(second)))
        return self._stamp[1]

    def _stored(self, record: InboundRecord, policy: IntakePolicy, started: float) -> bytes:
        # The record is committed: its answer is due whatever happens to the bookkeeping below
        # (an exception here would turn a stored message's AA into an AR and journal it twice).
        try:
            self._after_store(record, policy, started)
        except Exception as exc:  # noqa: BLE001
            log.error(
                "intake.bookkeeping_failed",
                message_id=record.uid,
                channel=record.channel,
                error_type=type(exc).__name__,
            )
        return record.ack

    def _after_store(self, record: InboundRecord, policy: IntakePolicy, started: float) -> None:
        # No log line per accepted message on the hot path (the journal has one event each, `pfi
        # tail` shows them): counts per channel go out every few seconds (`flush_summary`), and a
        # rejection is logged at once, at most once a second per channel with the count suppressed.
        tally = self._tally.get(record.channel)
        if tally is None:  # not setdefault: no Counter built per message
            tally = self._tally[record.channel] = Counter()
        tally[record.state] += 1
        if record.state == REJECTED:
            self._log_rejection(record)
        self._observe(record, policy, started)

    def _log_rejection(self, record: InboundRecord) -> None:
        limiter = self._rejection_logs.setdefault(record.channel, EveryFewSeconds(1.0))
        limiter(
            lambda suppressed: log.warning(
                "message.rejected",
                message_id=record.uid,
                channel=record.channel,
                control_id=record.control_id,
                reason=record.reason[:300],
                suppressed_since_last=suppressed,
            )
        )

    def flush_summary(self) -> None:
        """One line per channel with what intake stored since the last call (received, rejected,
        duplicate counts)."""
        for channel, tally in self._tally.items():
            if tally:
                log.info("intake.summary", channel=channel, **dict(tally))
        self._tally.clear()

    def _not_stored(self, failure, record, header, policy, now, started) -> bytes:
        failure.trap(JournalError)
        return self._not_stored_ack(record, header, policy, now, started, failure.getErrorMessage())

    def _not_stored_ack(self, record, header, policy, now, started, error: str) -> bytes:
        # AR: refused for a circumstantial reason (disk full, journal down); the same message
        # sent again later will be accepted.
        reason = "journal unavailable, message not stored: send it again later"
        log.error("message.not_stored", message_id=record.uid, channel=record.channel, error=error)
        record.state, record.ack_code, record.reason = "not-stored", "AR", reason
        ack = self._ack(header, Verdict("AR", (AckError(207, "", reason),)), now, policy)
        self._observe(record, policy, started)
        return ack

    def _observe(self, record: InboundRecord, policy: IntakePolicy, started: float) -> None:
        counts = self.metrics.intake.counts(policy.channel)
        counts.received += 1
        if record.state == DUPLICATE:
            counts.duplicates += 1
        if record.ack_code == "AA":
            counts.acked += 1
        else:
            self.metrics.nacked.labels(policy.channel, record.ack_code, _reason_label(record)).inc()
        counts.observe_latency(time.perf_counter() - started)


TRUNCATED_MARK = "[truncated:"  # starts the reason of a rejected frame kept in part (pfi replay refuses it)


class RejectedBytes:
    """Bytes of rejected frames kept whole by one channel over the last hour (a sliding window)."""

    WINDOW = 3600.0

    def __init__(self, quota: int):
        self.quota = quota
        self._kept: deque = deque()  # (time, bytes)
        self._total = 0
        self._last_warning = float("-inf")
        self._suppressed = 0

    def keep_whole(self, size: int, now: float) -> bool:
        while self._kept and self._kept[0][0] < now - self.WINDOW:
            self._total -= self._kept.popleft()[1]
        if self._total + size > self.quota:
            return False
        self._kept.append((now, size))
        self._total += size
        return True

    def warn(self, emit) -> None:
        """At most one warning every 10 minutes per channel, with the count suppressed."""
        now = time.monotonic()
        if now - self._last_warning < 600:
            self._suppressed += 1
            return
        self._last_warning = now
        emit(suppressed=self._suppressed)
        self._suppressed = 0


def malformed(exc: ParseError) -> Verdict:
    """An unreadable MSH is AE (the frame itself is wrong, resending it unchanged cannot help),
    with the table 0357 code and location the scanner found (101/102 at MSH-1 or MSH-2, 100)."""
    code, location = getattr(exc, "code", 100), getattr(exc, "location", "MSH^1")
    return Verdict("AE", (AckError(code, location, str(exc)),), str(exc))


def _reason_label(record: InboundRecord) -> str:
    """A label from a closed set: the HL7 table 0357 code of the NACK (never sender text)."""
    if record.state == "not-stored":
        return "journal"
    return str(record.error_code) if record.error_code in ERROR_TEXT else "other"


def judge(policy: IntakePolicy, h: Header) -> Verdict:
    """Accept or reject on what MSH says; a reject is AE (the message has errors: sending it again
    unchanged is pointless) with a table 0357 code, as the volets answer an unsupported version."""
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
    if policy.tlr_orders and h.message_code in TLR_ORDER_CODES:
        return _judge_tlr_order(h)
    return Verdict("AA")


TLR_ORDER_CODES = ("ORM", "OMI")
TLR_PROFILE = "CISIS_TLR_HL7_V2"


def _judge_tlr_order(h: Header) -> Verdict:
    """A teleradiology order against its profile (HL7 2.5.1, MSH-21 1.0^CISIS_TLR_HL7_V2, the
    patient's INS in PID-3 and its identity status in PID-32): AE naming the field, not an order a
    platform would refuse later, or read with the wrong patient."""
    if h.version_field.split(h.encoding_chars[0])[0] != "2.5.1":
        return _reject(203, "MSH^1^12", f"teleradiology orders use HL7 2.5.1, not {h.version!r}")
    if TLR_PROFILE not in h.profile.split(h.encoding_chars[0]):
        return _reject(101, "MSH^1^21", f"MSH-21 must name the teleradiology profile 1.0^{TLR_PROFILE}")
    repetitions = h.patient_ids.split(h.encoding_chars[1])
    if not any(r.split(h.encoding_chars[0])[4:5] == ["INS"] for r in repetitions):
        return _reject(101, "PID^1^3", "PID-3 has no INS (identifier type INS): teleradiology needs the patient's INS")
    if not h.identity_status:
        return _reject(101, "PID^1^32", "PID-32 (identity reliability status) is empty")
    return Verdict("AA")


def _type_accepted(accepted: tuple[str, ...], h: Header) -> bool:
    return h.message_type in accepted or h.message_code in accepted


def _reject(code: int, location: str, reason: str) -> Verdict:
    return Verdict("AE", (AckError(code, location, reason),), reason)


def index_header(record: InboundRecord, h: Header) -> None:
    """The journal's index fields of a record, from its scanned MSH/PID (every intake path)."""
    record.sender, record.facility = h.sending_app, h.sending_facility
    record.receiver, record.receiver_facility = h.receiving_app, h.receiving_facility
    record.control_id, record.msg_type = h.control_id, h.message_type
    record.version, record.profile = h.version, h.profile
    record.patient_ids, record.charset = h.patient_ids, h.charset


def _index(record: InboundRecord, h: Header, policy: IntakePolicy, accepted: bool) -> None:
    index_header(record, h)
    # Only accepted messages count for duplicates: a rejected one may be fixed and sent again.
    if accepted and policy.duplicate_window > 0:
        record.dup_key = "\x1f".join((policy.channel, h.sending_app, h.sending_facility, h.control_id))
        record.dup_window = policy.duplicate_window


def quarantine(intake: Intake, policy: IntakePolicy, data: bytes, reason: str) -> defer.Deferred:
    """Journal bytes that are not a message (noise between frames) so that nothing disappears."""
    now = intake.clock.seconds()
    record = InboundRecord(
        uid=new_id(now), channel=policy.channel, received_at=now, raw=data, state=REJECTED, reason=reason
    )
    intake.metrics.quarantined.labels(policy.channel, reason.split(":")[0]).inc()
    d = intake._append(record, policy)
    d.addCallback(
        lambda r: log.warning("input.quarantined", message_id=r.uid, channel=r.channel, reason=reason, size=len(data))
    )
    d.addErrback(lambda f: log.error("input.quarantine_failed", channel=policy.channel, error=f.getErrorMessage()))
    return d


def reject_oversized(intake: Intake, policy: IntakePolicy, head: bytes, size: int, limit: int) -> defer.Deferred:
    """AE for a frame over the size limit (sent again unchanged it would be refused again); its
    first bytes are journaled for the operator."""
    reason = f"message of {size} bytes or more exceeds the channel limit of {limit} bytes"
    now = intake.clock.seconds()
    try:
        header = scan(head, policy.codec)
    except ParseError:
        header = None
    record = InboundRecord(
        uid=new_id(now), channel=policy.channel, received_at=now, raw=head, state=REJECTED, reason=reason, ack_code="AE"
    )
    if header is not None:
        _index(record, header, policy, accepted=False)
    intake._answer(record, header, Verdict("AE", (AckError(199, "", reason),), reason), now, policy)
    intake.metrics.quarantined.labels(policy.channel, "oversized").inc()
    d = intake._append(record, policy)
    d.addCallbacks(lambda r: r.ack, lambda f: record.ack)
    return d
