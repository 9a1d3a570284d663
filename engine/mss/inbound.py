"""Receiving: poll the application mailbox, turn each XDM mail into LPS MDMs for the RIS.

Per mail (identified by its Message-ID, or a SHA-256 of the raw bytes when it has none):
1. already finished in the SQLite store → only (re)apply the IMAP "processed" marking;
2. a DSN/MDN → `MailOutcome`s for the ZAMs (on_outcome callback), then processed;
3. unusable (malformed, too large, zip bomb, path traversal, not a CDA, no XDM) → moved to
   the quarantine folder with the reason, KO MDN (906) to the sender when one was requested;
4. otherwise one MDM per document to `deliver`; AA → processed (+ success MDN if requested);
   AE with ERR-5 900–906 → KO MDN with that code, processed; other AE → quarantine without
   MDN (a local technical problem); AR or a delivery failure → left untouched, retried at the
   next poll. Documents already accepted by the RIS are never sent again (inbound_docs table).
"""

from __future__ import annotations

import datetime as dt
import email
import email.errors
import email.header
import email.parser
import email.utils
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from typing import Awaitable, Callable

import structlog
from twisted.internet import defer, endpoints, task
from twisted.mail import imap4

from engine.errors import EngineError
from engine.mss.lps import ReceivedMail, build_lps_mdm, parse_ack
from engine.mss.models import MailOutcome
from engine.mss.notifications import build_mdn, mdn_recipient, outcomes_for_report
from engine.mss.outbound import MssSender, OutgoingMail
from engine.mss.settings import MssChannelSettings
from engine.mss.store import MssStore
from engine.mss.tls import client_tls, set_no_delay
from engine.mss.xdm import XdmError, read_xdm

log = structlog.get_logger(__name__)

Deliver = Callable[[bytes], Awaitable[bytes]]
APPLICATION_ERRORS = {str(c) for c in range(900, 907)}
QUARANTINE_CODE, QUARANTINE_LABEL = "906", "Autre"


@dataclass
class Analysis:
    """Result of reading one mail: MDMs to deliver, a quarantine reason, or report outcomes."""

    mail_key: str
    message: Message | None
    mdms: list[bytes] = field(default_factory=list)
    quarantine: str | None = None
    detail: str = ""
    outcomes: list[MailOutcome] | None = None
    mdn_raw: bytes | None = None  # what the MDN quotes back (headers only for a huge mail)


def mail_key(raw: bytes, message: Message | None) -> str:
    """Stable identity of a received mail."""
    message_id = str(message.get("Message-ID", "")).strip() if message is not None else ""
    return message_id or "sha256:" + hashlib.sha256(raw).hexdigest()


def _headers(raw: bytes) -> Message:
    return email.parser.BytesHeaderParser(policy=policy.compat32).parsebytes(raw)


def _addresses(message: Message, *headers: str) -> list[str]:
    values = [str(v) for h in headers for v in message.get_all(h, [])]
    return [a for _, a in email.utils.getaddresses(values) if a]


def _decoded_header(message: Message, name: str) -> str:
    value = message.get(name, "")
    return str(email.header.make_header(email.header.decode_header(str(value)))) if value else ""


def _body_text(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain" and not part.get_filename():
            payload = part.get_payload(decode=True) or b""
            # The final line break is added by MIME encoding, not written by the sender.
            text = payload.decode(part.get_content_charset() or "utf-8", "replace")
            return text.rstrip("\r\n")
    return ""


def received_mail(message: Message) -> ReceivedMail:
    """The mail fields the LPS MDM carries."""
    date = None
    if message.get("Date"):
        try:
            date = email.utils.parsedate_to_datetime(str(message["Date"]))
        except (TypeError, ValueError):
            date = None
    return ReceivedMail(
        message_id=str(message.get("Message-ID", "")).strip(),
        subject=_decoded_header(message, "Subject"),
        sender=(_addresses(message, "From") or [""])[0],
        recipients=_addresses(message, "To", "Cc"),
        reply_to=_addresses(message, "Reply-To"),
        body=_body_text(message),
        date=date,
    )


_FATAL_DEFECTS = (
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
    email.errors.NoBoundaryInMultipartDefect,
)


def _malformed(message: Message) -> str | None:
    if not _addresses(message, "From"):
        return "no From address"
    for part in message.walk():
        if any(isinstance(d, _FATAL_DEFECTS) for d in part.defects):
            return "broken MIME structure"
    return None


def _xdm_attachment(message: Message) -> tuple[bytes | None, bool]:
    """(IHE_XDM.zip bytes or None, whether the mail has any attachment at all)."""
    has_attachment = False
    for part in message.walk():
        name = part.get_filename()
        if not name or part.is_multipart():
            continue
        has_attachment = True
        if name.strip().upper() == "IHE_XDM.ZIP" or part.get_content_type() == "application/zip":
            return part.get_payload(decode=True) or b"", True
    return None, has_attachment


class MailIntake:
    """Pure, synchronous analysis of one raw mail (no network)."""

    def __init__(
        self,
        settings: MssChannelSettings,
        store: MssStore,
        control_ids: Callable[[], str],
        now: Callable[[], dt.datetime],
    ):
        self.settings, self.store = settings, store
        self.control_ids, self.now = control_ids, now

    def analyse(self, raw: bytes, size: int | None = None) -> Analysis:
        """Never raises on bad input: the reason lands in `Analysis.quarantine`.

        `size` is the server-announced size when only the header was fetched.
        """
        try:
            return self._analyse(raw, size)
        except Exception as exc:  # a bug or an input nobody foresaw must not stop the poller
            log.error("mss.analysis_failed", error=type(exc).__name__)
            return Analysis(
                mail_key(raw, None), _headers(raw), quarantine="unexpected-input", detail=type(exc).__name__
            )

    def _analyse(self, raw: bytes, size: int | None) -> Analysis:
        size = max(size or 0, len(raw))
        if size > self.settings.limits.max_mail_bytes:
            return self._too_large(raw, size)
        message = email.message_from_bytes(raw, policy=policy.compat32)
        key = mail_key(raw, message)
        outcomes = outcomes_for_report(raw, self.store)
        if outcomes is not None:
            return Analysis(key, message, outcomes=outcomes)
        problem = _malformed(message)
        if problem:
            log.warning("mss.malformed", detail=problem)
            return Analysis(key, message, quarantine="malformed-mail", detail=problem)
        return self._documents(key, message)

    def _too_large(self, raw: bytes, size: int) -> Analysis:
        head = re.split(rb"\r?\n\r?\n", raw[: 256 * 1024], maxsplit=1)[0] + b"\r\n\r\n"
        message = email.message_from_bytes(head, policy=policy.compat32)
        return Analysis(
            mail_key(head, message), message, quarantine="mail-too-large", detail=f"{size} bytes", mdn_raw=head
        )

    def _documents(self, key: str, message: Message) -> Analysis:
        zip_bytes, has_attachment = _xdm_attachment(message)
        if zip_bytes is None:
            reason = "not-xdm-attachment" if has_attachment else "no-attachment"
            return Analysis(key, message, quarantine=reason, detail="no IHE_XDM.zip in the mail")
        try:
            package = read_xdm(zip_bytes, self.settings.limits)
            mail = received_mail(message)
            mdms = [
                build_lps_mdm(mail, package, doc, self.settings.lps, self.control_ids(), self.now())
                for doc in package.documents
            ]
        except XdmError as exc:
            return Analysis(key, message, quarantine=exc.reason, detail=str(exc))
        except EngineError as exc:
            return Analysis(key, message, quarantine="cda-unusable", detail=str(exc))
        return Analysis(key, message, mdms=mdms)


class _Client(imap4.IMAP4Client):
    def __init__(self):
        super().__init__()
        self.greeted: defer.Deferred = defer.Deferred()

    def serverGreeting(self, caps):
        self.greeted.callback(caps)


def _literal_bytes(value) -> bytes:
    # Twisted hands literals back as str decoded byte-for-byte; undo it exactly.
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclass
class PollStats:
    """What one poll did (for logs, tests and the benchmark)."""

    seen: int = 0
    integrated: int = 0
    rejected: int = 0
    quarantined: int = 0
    reports: int = 0
    skipped: int = 0
    retried: int = 0


class MailboxPoller:
    """Polls the application mailbox over IMAP4rev1/TLS and integrates the mails."""

    def __init__(
        self,
        settings: MssChannelSettings,
        reactor,
        deliver: Deliver,
        sender: MssSender,
        store: MssStore,
        on_outcome: Callable[[MailOutcome], None] | None = None,
        control_ids: Callable[[], str] | None = None,
        now: Callable[[], dt.datetime] | None = None,
        clock=None,
    ):
        if settings.imap is None:
            raise EngineError("MSSanté channel without IMAP settings cannot receive")
        self.settings, self.imap, self.reactor = settings, settings.imap, reactor
        self.deliver, self.sender, self.store = deliver, sender, store
        self.on_outcome = on_outcome or (lambda outcome: None)
        counter = itertools.count(1)
        self.intake = MailIntake(
            settings, store, control_ids or (lambda: f"MSS{next(counter):06d}"), now or (lambda: dt.datetime.now())
        )
        self._tls = client_tls(self.imap.tls, self.imap.host)
        self.clock = clock or reactor
        self._loop: task.LoopingCall | None = None

    # -- scheduling
    def start(self) -> None:
        """Poll now, then every poll_interval_s; a failed poll is logged, the loop goes on."""
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.imap.poll_interval_s, now=True)

    def stop(self) -> None:
        """Stop polling (the current poll finishes)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _tick(self):
        d = defer.Deferred.fromCoroutine(self.poll_once())
        d.addErrback(lambda f: log.warning("mss.poll_failed", error=f.getErrorMessage()))
        return d

    # -- one poll
    async def _connect(self) -> _Client:
        endpoint = endpoints.wrapClientTLS(
            self._tls,
            endpoints.TCP4ClientEndpoint(self.reactor, self.imap.host, self.imap.port, timeout=self.imap.timeout_s),
        )
        client = await endpoints.connectProtocol(endpoint, _Client())
        set_no_delay(client.transport)
        await client.greeted
        await client.login(self.imap.username.encode(), self.imap.password.encode())
        await client.select(self.imap.mailbox)
        return client

    async def poll_once(self) -> PollStats:
        """Handle every not-yet-processed mail of the mailbox once."""
        stats = PollStats()
        client = await self._connect()
        try:
            query = imap4.Query(undeleted=True, unkeyword=self.imap.processed_keyword)
            uids = await client.search(query, uid=True)
            for uid in uids:
                stats.seen += 1
                await self._handle(client, uid, stats)
        finally:
            client.transport.loseConnection()
        log.info("mss.polled", **stats.__dict__)
        return stats

    async def _fetch(self, client: _Client, uid: int) -> tuple[bytes | None, int]:
        """The raw mail, or only its header when the server announces a huge size."""
        sizes = await client.fetchSize(str(uid), uid=True)
        size = int(next(iter(sizes.values()))["RFC822.SIZE"]) if sizes else 0
        part = {} if size <= self.settings.limits.max_mail_bytes else {"headerType": "HEADER"}
        result = await client.fetchSpecific(str(uid), uid=True, peek=True, **part)
        for items in result.values():
            for entry in items:
                if isinstance(entry, list) and "BODY" in entry:
                    return _literal_bytes(entry[entry.index("BODY") + 2]), size
        return None, size

    async def _handle(self, client: _Client, uid: int, stats: PollStats) -> None:
        raw, size = await self._fetch(client, uid)
        if raw is None:
            return
        state = self.store.inbound_state(mail_key(raw, _headers(raw)))
        if state is not None:  # finished before a restart: only the IMAP marking is missing
            stats.skipped += 1
            await self._mark(client, uid, quarantine=state == "quarantined")
            return
        analysis = self.intake.analyse(raw, size)
        if analysis.outcomes is not None:
            for outcome in analysis.outcomes:
                self.on_outcome(outcome)
            stats.reports += 1
            await self._finish(client, uid, analysis.mail_key, "report")
        elif analysis.quarantine:
            await self._quarantine(client, uid, analysis, raw, stats)
        else:
            await self._integrate(client, uid, analysis, raw, stats)

    async def _quarantine(self, client, uid, analysis: Analysis, raw: bytes, stats, mdn: bool = True):
        log.warning("mss.quarantined", reason=analysis.quarantine, uid=uid)
        if mdn and analysis.message is not None:
            await self._send_mdn(
                analysis.mdn_raw or raw,
                analysis.message,
                QUARANTINE_CODE,
                f"{QUARANTINE_LABEL} : {analysis.quarantine}",
            )
        stats.quarantined += 1
        await self._finish(client, uid, analysis.mail_key, "quarantined", analysis.quarantine or "")

    async def _integrate(self, client, uid, analysis: Analysis, raw: bytes, stats) -> None:
        for index, mdm in enumerate(analysis.mdms):
            if self.store.document_delivered(analysis.mail_key, index):
                continue
            try:
                ack = parse_ack(await self.deliver(mdm))
            except Exception as exc:  # RIS down, timeout, garbage ACK: the mail waits for the next poll
                log.warning("mss.delivery_failed", error=type(exc).__name__, uid=uid)
                stats.retried += 1
                return
            if ack.code == "AA":
                self.store.mark_document_delivered(analysis.mail_key, index)
            elif ack.code == "AE" and ack.error_code in APPLICATION_ERRORS:
                await self._send_mdn(raw, analysis.message, ack.error_code, ack.error_label)
                stats.rejected += 1
                await self._finish(client, uid, analysis.mail_key, "rejected", ack.error_code)
                return
            elif ack.code == "AE":
                analysis.quarantine = f"ris-error-{ack.hl7_error or 'unknown'}"
                await self._quarantine(client, uid, analysis, raw, stats, mdn=False)
                return
            else:
                stats.retried += 1
                return
        await self._send_mdn(raw, analysis.message, None, None)
        stats.integrated += 1
        await self._finish(client, uid, analysis.mail_key, "integrated")

    async def _finish(self, client, uid, key: str, state: str, reason: str = "") -> None:
        self.store.finish_inbound(key, state, reason)
        await self._mark(client, uid, quarantine=state == "quarantined")

    async def _mark(self, client: _Client, uid: int, quarantine: bool = False) -> None:
        """Keyword (+\\Seen), then move when configured (COPY + \\Deleted + EXPUNGE)."""
        await client.addFlags(str(uid), [self.imap.processed_keyword, "\\Seen"], uid=True)
        folder = (
            self.imap.quarantine_folder
            if quarantine
            else (self.imap.processed_folder if self.imap.processed == "move" else None)
        )
        if folder is None:
            return
        try:
            await client.create(folder)
        except imap4.IMAP4Exception:
            pass  # already exists
        await client.copy(str(uid), folder, uid=True)
        await client.addFlags(str(uid), ["\\Deleted"], uid=True)
        await client.expunge()

    async def _send_mdn(self, raw: bytes, message: Message, code: str | None, label: str | None):
        """Send the RFC 8098 MDN when the sender asked for one; a failure is only logged."""
        target = mdn_recipient(message)
        if target is None or message.get("Auto-Submitted", "no").strip().lower() != "no":
            return
        mdn = build_mdn(
            raw,
            from_address=self.settings.mailbox_address,
            to_address=target,
            error_code=code,
            error_label=label,
            message_id_domain=self.settings.id_domain,
        )
        mail = OutgoingMail("mdn", [target], mdn, str(mdn["Message-ID"]))
        try:
            await self.sender.send(mail, request_dsn=False)
        except Exception as exc:  # the mail's own outcome is already recorded; only log
            log.warning("mss.mdn_failed", error=type(exc).__name__)
