"""Delivery status notifications (RFC 3464) and disposition notifications (RFC 8098).

* `parse_report` reads a DSN or an MDN arriving in the application mailbox;
  `outcomes_for_report` matches it to the sent mail (by Original-Message-ID / the original
  headers / ENVID) and yields `MailOutcome`s for ZAM^Z02 (DSN) and ZAM^Z03 (MDN).
* `build_mdn` writes the processing MDN the PFI sends back after the RIS's ACK
  (LPS struct-msg-mdn.md): subject `[KO Intégration système !][code] XDM/1.0/DDM+…` on error.
"""

from __future__ import annotations

import email
import email.header
import email.utils
import re
from email import policy
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import HeaderParser

import structlog

from engine.mss.models import MailOutcome

_DISPOSITION_ERROR = re.compile(r"/\s*error\s*:\s*([^\^|\s]+)\s*(?:\^([^\^|]*))?", re.I)
_SMTP_CODE = re.compile(r"\b([245]\d\d)\b")


# --------------------------------------------------------------------------- building MDNs


log = structlog.get_logger(__name__)


def mdn_subject(original_subject: str, error_code: str | None) -> str:
    """Subject of the MDN: the original XDM subject, prefixed on error."""
    subject = original_subject.strip()
    if error_code:
        return f"[KO Intégration système !][{error_code}] {subject}"
    return subject


def _disposition(error_code: str | None, error_label: str | None) -> str:
    base = "automatic-action/MDN-sent-automatically; processed"
    return f"{base}/Error: {error_code}^{error_label or ''}" if error_code else base


def _human_text(error_code, error_label) -> str:
    if error_code:
        return (
            "Le document n'a pas pu être intégré automatiquement dans le dossier du patient.\n"
            f"Le système a retourné l'erreur {error_code}^{error_label or ''}\n"
        )
    return "Le document a été intégré automatiquement dans le dossier du patient.\n"


def _report_fields(original: Message, final_recipient: str, error_code, error_label) -> str:
    # From the original's Original-Recipient header when present (RFC 8098 §3.2.3), else
    # the mailbox that received it, as in the volet's example.
    original_recipient = str(original.get("Original-Recipient") or f"rfc822;{final_recipient}")
    lines = [
        f"Original-Recipient: {original_recipient.strip()}",
        f"Final-Recipient: rfc822;{final_recipient}",
        f"Original-Message-ID: {(original.get('Message-ID') or '').strip()}",
        f"Disposition: {_disposition(error_code, error_label)}",
    ]
    return "\r\n".join(lines) + "\r\n"


def _attachments(original: Message) -> list[Message]:
    parts = []
    for part in original.walk():
        if part.get_filename() and not part.is_multipart():
            parts.append(part)
    return parts


def build_mdn(
    original_raw: bytes,
    *,
    from_address: str,
    to_address: str,
    error_code: str | None = None,
    error_label: str | None = None,
    message_id_domain: str = "localhost",
) -> MIMEMultipart:
    """The RFC 8098 processing MDN for `original_raw` (success when error_code is None)."""
    original = email.message_from_bytes(original_raw, policy=policy.compat32)
    report = MIMEMultipart("report", report_type="disposition-notification")
    report["From"] = from_address
    report["To"] = to_address
    subject = str(email.header.make_header(email.header.decode_header(str(original.get("Subject", "")))))
    report["Subject"] = email.header.Header(mdn_subject(subject, error_code), "utf-8")
    report["Date"] = email.utils.formatdate()
    report["Message-ID"] = email.utils.make_msgid(domain=message_id_domain)
    report["Auto-Submitted"] = "auto-replied"
    report.attach(MIMEText(_human_text(error_code, error_label), "plain", "utf-8"))
    notification = MIMEBase("message", "disposition-notification")
    notification.set_payload(_report_fields(original, from_address, error_code, error_label))
    report.attach(notification)
    report.attach(MIMEMessage(original))
    # The volet asks for the original attachments (IHE_XDM.zip, PDF) to be attached again.
    for part in _attachments(original):
        report.attach(part)
    return report


def mdn_recipient(original: Message) -> str | None:
    """Where to send the MDN: Disposition-Notification-To when it is the sender's address or in
    the sender's (MSSanté) domain, else the sender's own address; None when no MDN was requested.

    A mail naming a third party in Disposition-Notification-To must not turn the engine into a
    bounce relay towards that party (RFC 8098 §2.1 lets a receiver decline such requests)."""
    value = original.get("Disposition-Notification-To")
    if not value:
        return None
    requested = email.utils.parseaddr(str(value))[1].lower()
    sender = email.utils.parseaddr(str(original.get("From") or ""))[1].lower()
    if not requested or not sender:
        return None
    if requested == sender or _domain(requested) == _domain(sender):
        return requested
    log.warning("mss.mdn_redirected_to_sender", reason="Disposition-Notification-To outside the sender's domain")
    return sender


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


# --------------------------------------------------------------------------- parsing reports


def _fields(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload
    text = payload if isinstance(payload, str) else ""
    return [HeaderParser().parsestr(block.strip() + "\n") for block in re.split(r"\r?\n\r?\n", text) if block.strip()]


def _address(value: str | None) -> str:
    if not value:
        return ""
    _, _, address = str(value).partition(";")
    return address.strip() or str(value).strip()


def _original_id_from_parts(message: Message) -> str | None:
    for part in message.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, Message) and inner.get("Message-ID"):
                return str(inner["Message-ID"]).strip()
        if ctype == "text/rfc822-headers":
            headers = HeaderParser().parsestr(part.get_payload(decode=True).decode("utf-8", "replace"))
            if headers.get("Message-ID"):
                return str(headers["Message-ID"]).strip()
    return None


def _xtext_decode(value: str) -> str:
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _dsn_outcomes(message: Message, part: Message) -> list[MailOutcome]:
    blocks = _fields(part)
    per_message, recipients = (blocks[0], blocks[1:]) if blocks else (Message(), [])
    original_id = _original_id_from_parts(message)
    if not original_id and per_message.get("Original-Envelope-Id"):
        original_id = _xtext_decode(str(per_message["Original-Envelope-Id"]).strip())
    outcomes = []
    for block in recipients:
        action = str(block.get("Action", "")).strip().lower()
        if action not in ("failed", "delivered", "relayed", "expanded"):
            continue  # "delayed" is not a final outcome
        address = _address(block.get("Original-Recipient")) or _address(block.get("Final-Recipient"))
        success = action != "failed"
        diagnostic = str(block.get("Diagnostic-Code", ""))
        code = _SMTP_CODE.search(diagnostic)
        outcomes.append(
            MailOutcome(
                kind="Z02",
                success=success,
                address=address,
                original_message_id=original_id or "",
                error_code=None if success else (code.group(1) if code else str(block.get("Status", "")).strip()),
                error_label=None if success else (diagnostic.partition(";")[2].strip() or action),
            )
        )
    return outcomes


def _mdn_outcomes(part: Message) -> list[MailOutcome]:
    blocks = _fields(part)
    if not blocks:
        return []
    fields = blocks[0]
    disposition = str(fields.get("Disposition", ""))
    error = _DISPOSITION_ERROR.search(disposition)
    failed = error is not None or "deleted" in disposition.lower() or "/failed" in disposition.lower()
    return [
        MailOutcome(
            kind="Z03",
            success=not failed,
            address=_address(fields.get("Final-Recipient")) or _address(fields.get("Original-Recipient")),
            original_message_id=str(fields.get("Original-Message-ID", "")).strip(),
            error_code=error.group(1) if error else None,
            error_label=(error.group(2) or "").strip() if error else None,
        )
    ]


def parse_report(raw: bytes) -> list[MailOutcome] | None:
    """Outcomes in a DSN/MDN (without the request id), or None if the mail is not a report."""
    message = email.message_from_bytes(raw, policy=policy.compat32)
    if message.get_content_type() != "multipart/report":
        return None
    for part in message.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            return _dsn_outcomes(message, part)
        if ctype in ("message/disposition-notification", "message/global-disposition-notification"):
            return _mdn_outcomes(part)
    return []


def outcomes_for_report(raw: bytes, store) -> list[MailOutcome] | None:
    """Match a report to the sent mail; keep only the acks the creator asked for."""
    outcomes = parse_report(raw)
    if outcomes is None:
        return None
    matched = []
    for outcome in outcomes:
        sent = store.sent(outcome.original_message_id)
        if sent is None:
            continue
        wanted = sent["want_z02"] if outcome.kind == "Z02" else sent["want_z03"]
        if wanted:
            matched.append(outcome.model_copy(update={"request_control_id": sent["control_id"]}))
    return matched
