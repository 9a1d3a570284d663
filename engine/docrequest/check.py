"""Document-request checks at intake time (`ack_mode: document-request` on an mllp-in channel).

    errors = check_document_message(raw)        # [] when the request is acceptable
    code = ack_code_for(errors)                 # "AA", or the MSA code the errors ask for

The check is the full one: `Message.parse` → `parse_document_request` → `check_consistency`
(which parses the CDA header(s)). It costs milliseconds per message (docs/document-requests.md),
so it runs in a worker thread and only on channels that opt in; `DocumentRequestGate` is what the
intake holds for such a channel: it says which messages are checked and keeps their order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import structlog
from twisted.internet import defer, threads

from engine.docrequest.errors import HL7Error, RequestError
from engine.errors import ParseError
from engine.hl7.ack import AckError, escape
from engine.hl7.scan import Header

DOCUMENT_MESSAGE_CODES = ("ORU", "MDM")
# Every version of the creator → PFI volet (V1 = 1.2, V2 = 2.0/2.1): superseded versions are
# checked too so that they get the parser's coded 203 instead of a silent AA.
TRANSMISSION_PROFILE_IDS = ("CISIS_CDA_HL7_V1", "CISIS_CDA_HL7_V2")
BLOCKING = ("E", "F")

log = structlog.get_logger("engine.docrequest.check")


@dataclass(frozen=True, slots=True)
class RequestAckError(AckError):
    """An AckError that also carries the MSA-1 code its HL7Error asks for (AE or AR)."""

    ack_code: str = "AE"


def is_document_message(header: Header) -> bool:
    """True for an ORU/MDM whose MSH-21 names the CI-SIS transmission volet (any version)."""
    if header.message_code not in DOCUMENT_MESSAGE_CODES:
        return False
    profile_id = header.profile.split(header.encoding_chars[0])[1:2]
    return bool(profile_id) and profile_id[0].strip() in TRANSMISSION_PROFILE_IDS


def check_document_message(raw: bytes, charset: str | None = None, cda_check=None) -> list[AckError]:
    """Parse `raw` as a document request and check it against its CDA(s).

    Returns the problems as ACK errors, blocking ones (severity E) first, then warnings (W);
    an empty list means the request is acceptable. Never raises on bad input.
    """
    from engine.docrequest import check_consistency, parse_document_request
    from engine.hl7.message import Message

    try:
        msg = Message.parse(raw, charset)
    except ParseError as exc:
        return [RequestAckError(100, "MSH^1", f"message could not be parsed: {exc}")]
    try:
        request = parse_document_request(msg)
    except RequestError as exc:
        return [to_ack_error(exc.error, msg.encoding.component)]
    problems = check_consistency(request) + list(request.warnings)
    problems.sort(key=lambda p: p.severity not in BLOCKING)
    errors = [to_ack_error(p, msg.encoding.component) for p in problems]
    if cda_check is not None and not blocking(errors):
        errors = _cda_errors(request, cda_check, msg.encoding.component) + errors
    return errors


def _cda_errors(request, cda_check, component: str) -> list[AckError]:
    """One ERR per embedded CDA that fails the kit (rule ids in ERR-8; 99PFI = our own check)."""
    found = []
    for index, document in enumerate(request.documents, 1):
        problems = cda_check(document.content)
        if problems:
            app = component.join(("CDA_INVALID", "document CDA non conforme", "99PFI"))
            found.append(
                RequestAckError(
                    207,
                    f"OBX^{index}^5",
                    "CDA invalid: " + "; ".join(problems),
                    app_code=app,
                    severity="E",
                    ack_code="AE",
                )
            )
    return found


def to_ack_error(error: HL7Error, component: str = "^") -> RequestAckError:
    """HL7Error → the intake's AckError (ERR-2, ERR-3, ERR-4, ERR-5, ERR-8), keeping its MSA code."""
    app_code = ""
    if error.app_code:
        enc = component + "~\\&"
        label = escape(error.app_label or "", enc)
        app_code = component.join((escape(error.app_code, enc), label, error.app_system))
    return RequestAckError(
        code=error.code,
        location=error.location or "",
        message=error.message,
        app_code=app_code,
        severity=error.severity,
        ack_code=error.ack_code,
    )


def blocking(errors: list[AckError]) -> list[AckError]:
    """The errors that make the request unacceptable (severity E or F)."""
    return [e for e in errors if e.severity in BLOCKING]


def ack_code_for(errors: list[AckError]) -> str:
    """MSA-1 for these check results: AA without blocking error, AR if one asks for AR, else AE."""
    refused = blocking(errors)
    if not refused:
        return "AA"
    return "AR" if any(getattr(e, "ack_code", "AE") == "AR" for e in refused) else "AE"


def describe(errors: list[AckError]) -> str:
    """Journal reason of a refused request (no patient data: HL7Error messages carry none)."""
    parts = []
    for e in errors:
        app = re.match(r"[A-Za-z0-9_]*", e.app_code).group()  # ERR-5.1, whatever the separator
        parts.append(f"{e.code}{' ' + app if app else ''} at {e.location or '-'}: {e.message}")
    return "document request: " + "; ".join(parts)


def _unexpected(failure) -> list[AckError]:
    """A defect of the checker must still give a coded NACK, never a dropped connection: AR 207,
    since the message may well be fine (sent again once the defect is fixed, it passes)."""
    log.error("docrequest.check_failed", error=failure.getErrorMessage(), type=failure.type.__name__)
    return [
        RequestAckError(
            207,
            "",
            f"document request could not be checked ({failure.type.__name__}): send it again later",
            ack_code="AR",
        )
    ]


@dataclass(eq=False)
class DocumentRequestGate:
    """The intake hook of a `document-request` channel: which messages to check, in which order.

    Checks run in the reactor's thread pool; `ordered` makes every message of the channel wait
    for the ones received before it, so the journal (and the routing that reads it) sees them in
    arrival order, as in `receipt` mode — an initial and its replacement must not swap.
    """

    charset: str | None = None
    cda_check: object | None = None  # engine.cda.checker.CdaChecker, or None: request checks only
    _order: defer.DeferredLock = field(default_factory=defer.DeferredLock, repr=False)

    def applies(self, header: Header) -> bool:
        """Whether this message gets the document-request check."""
        return is_document_message(header)

    def check_in_thread(self, raw: bytes) -> defer.Deferred:
        """Run `check_document_message` off the reactor thread; fires with the error list."""
        d = threads.deferToThread(check_document_message, raw, self.charset, self.cda_check)
        d.addErrback(_unexpected)
        return d

    ack_code = staticmethod(ack_code_for)
    blocking = staticmethod(blocking)
    describe = staticmethod(describe)

    @property
    def busy(self) -> bool:
        """True while an earlier message of the channel is still being checked."""
        return self._order.locked

    def ordered(self) -> defer.DeferredLock:
        """The channel's FIFO lock (acquire in arrival order, release once journaled)."""
        return self._order
