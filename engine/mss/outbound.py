"""Sending a document by MSSanté: plan the mails from the flags, build them, submit by SMTP.

Rules applied (hl7v2-volets.md §a.8/§a.9, TR exemples.md example 1):
* DESTMSSANTEPS=Y → one mail to every PRT RCT that is not the patient (PS, organisation,
  application mailbox), body CORPSMAIL_PS.
* MASQUE_PS=Y → no mail at all to professionals/organisations (the document is masked to every
  professional, so no professional mailbox may receive it); the patient mail is still allowed.
* DESTMSSANTEPAT=Y → one separate mail to `<INS>@patient.mssante.fr`, only if the identity is
  qualified (PID-32 VALI), the INS OID is an accepted INS-NIR OID and INVISIBLE_PATIENT=N.
  Body CORPSMAIL_PATIENT, header `X-MSS-MES: FIN` when NTE-4 = FIN.
* DESTDMP=Y and INVISIBLE_PATIENT=Y → the mails wait for the DMP: sent once the DMP accepted the
  document (a route follow-up of the DMP delivery), the professional mail carrying a notice that
  the patient cannot see it there (`dmp_invisible_notice` of the channel).
"""

from __future__ import annotations

import email.utils
import io
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Callable

import structlog
from twisted.internet import defer, error as net_error
from twisted.internet.interfaces import IReactorTCP
from twisted.mail import smtp
from twisted.protocols.tls import TLSMemoryBIOFactory

from engine.errors import TransientDeliveryError, ValidationError
from engine.mss.models import MailOutcome, MssDocumentRequest, Recipient, RecipientResult
from engine.mss.settings import MssChannelSettings
from engine.mss.tls import client_tls, set_no_delay
from engine.mss.xdm import build_xdm

log = structlog.get_logger(__name__)

DMP_INVISIBLE_NOTICE = (
    "Information : ce document a été déposé dans le DMP du patient sans être visible par "
    "lui ; il ne doit pas lui être communiqué avant une consultation d'annonce."
)
DEFAULT_BODIES = {
    "initial": "Veuillez trouver ci-joint le document {title}.",
    "replace": "Le document {title} joint remplace la version précédemment transmise, qui ne doit plus être utilisée.",
    "delete": "Le document {title} joint a été supprimé par son auteur : merci de ne plus "
    "l'utiliser et de le retirer de vos dossiers.",
}
MetadataProvider = Callable[[MssDocumentRequest], bytes]


@dataclass
class OutgoingMail:
    """One mail ready to submit."""

    audience: str  # "professional" | "patient"
    recipients: list[str]
    message: EmailMessage
    message_id: str

    def as_bytes(self) -> bytes:
        """The RFC 5322 bytes with CRLF line ends."""
        return self.message.as_bytes(policy=self.message.policy.clone(linesep="\r\n"))


@dataclass
class MailPlan:
    """What will be sent, and which requested recipients are refused and why."""

    mails: list[OutgoingMail] = field(default_factory=list)
    refused: list[RecipientResult] = field(default_factory=list)


# --------------------------------------------------------------------------- planning


def is_patient(recipient: Recipient, settings: MssChannelSettings) -> bool:
    """A PRT RCT row for the patient (INS id type or patient.mssante.fr domain)."""
    return recipient.kind == "patient" or recipient.address.lower().endswith("@" + settings.patient_domain)


def check_flag_matrix(request: MssDocumentRequest) -> None:
    """The three allowed MSSanté combinations of regles-gestion-mssante (configurable)."""
    f = request.flags
    if not (f.dest_mssante_ps or f.dest_mssante_pat):
        return
    ps_and_patient = (
        not f.masque_ps
        and not f.invisible_patient
        and not f.invisible_rep_legaux
        and f.dest_mssante_ps
        and f.dest_mssante_pat
    )
    ps_only = (
        not f.masque_ps
        and f.invisible_patient
        and not f.invisible_rep_legaux
        and f.dest_mssante_ps
        and not f.dest_mssante_pat
    )
    patient_only = (
        not f.invisible_patient
        and not f.connexion_secrete
        and not f.dest_dmp
        and not f.dest_mssante_ps
        and f.dest_mssante_pat
    )
    if not (ps_and_patient or ps_only or patient_only):
        raise ValidationError("MetaDMPMSS flag combination not allowed for an MSSanté exchange")


def patient_address(request: MssDocumentRequest, settings: MssChannelSettings) -> tuple[str | None, str]:
    """The patient mailbox, or None and the reason it may not be used."""
    p = request.patient
    if request.flags.invisible_patient:
        return None, "INVISIBLE_PATIENT=Y: the document may not be sent to the patient"
    if not p.ins or not p.identity_qualified:
        return None, "patient identity not qualified (no INS or PID-32 is not VALI)"
    if p.ins_oid not in settings.accepted_ins_oids:
        return None, "INS OID not accepted for a patient mailbox"
    return f"{p.ins}@{settings.patient_domain}", ""


def _refuse(address: str, reason: str) -> RecipientResult:
    return RecipientResult(address=address, accepted=False, reason=reason)


def _professional_recipients(request, settings, plan: MailPlan) -> list[str]:
    wanted = [r.address for r in request.recipients if not is_patient(r, settings)]
    if not request.flags.dest_mssante_ps:
        plan.refused += [_refuse(a, "DESTMSSANTEPS=N") for a in wanted]
        return []
    if request.flags.masque_ps:
        plan.refused += [_refuse(a, "MASQUE_PS=Y: masked to professionals") for a in wanted]
        return []
    return list(dict.fromkeys(wanted))


def _patient_recipient(request, settings, plan: MailPlan) -> str | None:
    listed = [r.address for r in request.recipients if is_patient(r, settings)]
    if not request.flags.dest_mssante_pat:
        plan.refused += [_refuse(a, "DESTMSSANTEPAT=N") for a in listed]
        return None
    address, reason = patient_address(request, settings)
    if address is None:
        plan.refused += [_refuse(a, reason) for a in (listed or ["patient"])]
        return None
    mismatched = [a for a in listed if a.lower() != address.lower()]
    plan.refused += [_refuse(a, "patient address does not match the INS") for a in mismatched]
    return address


def confidentiality_codes(request: MssDocumentRequest) -> list[str]:
    """MetaDMPMSS flags as DMP confidentiality codes (JDV_J08 names) for the XDM metadata."""
    f = request.flags
    pairs = (
        ("MASQUE_PS", f.masque_ps),
        ("INVISIBLE_PATIENT", f.invisible_patient),
        ("INVISIBLE_REPRESENTANTS_LEGAUX", f.invisible_rep_legaux),
    )
    return [code for code, on in pairs if on]


def subject_for(request: MssDocumentRequest) -> str:
    """`XDM/1.0/DDM+<label> <FAMILY> <given> <dd/mm/yyyy>` (struct-msg-mdn.md)."""
    p = request.patient
    birth = p.birth_date
    birth_text = f"{birth[6:8]}/{birth[4:6]}/{birth[0:4]}" if len(birth) >= 8 else ""
    parts = [request.document_title, p.family.upper(), p.given, birth_text]
    return "XDM/1.0/DDM+" + " ".join(x for x in parts if x)


def _body(request: MssDocumentRequest, audience: str) -> str:
    given = request.body_ps if audience == "professional" else request.body_patient
    text = given or DEFAULT_BODIES[request.action].format(title=request.document_title)
    if audience == "professional" and request.dmp_notice:
        text = f"{text}\n\n{request.dmp_notice}"
    return text


def _new_message_id(settings: MssChannelSettings) -> str:
    return f"<{uuid.uuid4().hex}@{settings.id_domain}>"


def build_mail(request, settings, audience, recipients, xdm_zip: bytes, now: float | None) -> OutgoingMail:
    """Assemble the MIME message for one audience."""
    msg = EmailMessage()
    message_id = _new_message_id(settings)
    msg["From"] = settings.mailbox_address
    msg["To"] = ", ".join(recipients)
    reply_to = request.reply_to or ([settings.reply_to] if settings.reply_to else [])
    if reply_to:
        msg["Reply-To"] = ", ".join(reply_to)
    msg["Subject"] = subject_for(request)
    msg["Date"] = email.utils.formatdate(now, localtime=False)
    msg["Message-ID"] = message_id
    if request.flags.ack_lecture:
        msg["Disposition-Notification-To"] = settings.mailbox_address
    if audience == "patient" and request.flags.patient_no_reply:
        msg["X-MSS-MES"] = "FIN"
    for name, value in settings.statistics_headers.items():
        msg[name] = value
    msg.set_content(_body(request, audience), charset="utf-8")
    msg.add_attachment(xdm_zip, maintype="application", subtype="zip", filename="IHE_XDM.zip")
    for file_name, mime, content in request.extra_attachments:
        maintype, _, subtype = mime.partition("/")
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=file_name)
    return OutgoingMail(audience, recipients, msg, message_id)


def plan_mails(
    request: MssDocumentRequest, settings: MssChannelSettings, metadata: MetadataProvider, now: float | None = None
) -> MailPlan:
    """Decide recipients and build the mails (one for professionals, one for the patient)."""
    if settings.enforce_flag_matrix:
        check_flag_matrix(request)
    plan = MailPlan()
    professionals = _professional_recipients(request, settings, plan)
    patient = _patient_recipient(request, settings, plan)
    if not professionals and patient is None:
        return plan
    xdm_zip = build_xdm(
        request.cda,
        metadata(request),
        sender=settings.mailbox_address,
        title=request.document_title,
        action=request.action,
        file_name=request.cda_file_name,
        confidentiality=confidentiality_codes(request),
    )
    if professionals:
        plan.mails.append(build_mail(request, settings, "professional", professionals, xdm_zip, now))
    if patient is not None:
        plan.mails.append(build_mail(request, settings, "patient", [patient], xdm_zip, now))
    return plan


# --------------------------------------------------------------------------- SMTP submission


class _Sender(smtp.ESMTPSender):
    """ESMTPSender that keeps per-recipient replies and asks for DSNs when offered."""

    def connectionMade(self):
        set_no_delay(self.transport)
        super().connectionMade()

    def esmtpState_serverConfig(self, code, resp):
        self.factory.server_dsn = any(line.split(None, 1)[:1] == [b"DSN"] for line in resp.splitlines())
        return super().esmtpState_serverConfig(code, resp)

    def sendLine(self, line):
        factory = self.factory
        if getattr(factory, "server_dsn", False) and factory.dsn_envid:
            if line.startswith(b"MAIL FROM:"):
                line += b" RET=HDRS ENVID=" + factory.dsn_envid
            elif line.startswith(b"RCPT TO:"):
                line += b" NOTIFY=SUCCESS,FAILURE,DELAY"
        return super().sendLine(line)

    def sentMail(self, code, resp, numOk, addresses, log):
        self.factory.recipient_replies = list(addresses)
        return super().sentMail(code, resp, numOk, addresses, log)


class _SenderFactory(smtp.ESMTPSenderFactory):
    protocol = _Sender
    recipient_replies: list = []
    server_dsn = False
    dsn_envid = b""


def _xtext(text: str) -> bytes:
    """RFC 3461 xtext encoding for ENVID."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in text).encode()


def _results(replies, recipients: list[str]) -> list[RecipientResult]:
    by_address = {}
    for address, code, text in replies:
        address = address.decode() if isinstance(address, bytes) else str(address)
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        by_address[address.lower()] = RecipientResult(
            address=address, accepted=200 <= code < 300, smtp_code=code, reason=text
        )
    return [
        by_address.get(a.lower(), RecipientResult(address=a, accepted=False, reason="no reply")) for a in recipients
    ]


class MssSender:
    """Submits mails to the operator's SMTP server with Twisted's ESMTP client."""

    def __init__(self, settings: MssChannelSettings, reactor: IReactorTCP):
        self.settings = settings
        self.reactor = reactor
        self._tls = client_tls(settings.smtp.tls, settings.smtp.host)

    async def send(self, mail: OutgoingMail, request_dsn: bool = True) -> list[RecipientResult]:
        """Submit one mail; per-recipient acceptance (→ ZAM^Z02 on refusal, DSN later)."""
        smtp_settings = self.settings.smtp
        done: defer.Deferred = defer.Deferred()
        user = smtp_settings.username.encode() if smtp_settings.username else None
        secret = smtp_settings.password.encode() if smtp_settings.password else None
        factory = _SenderFactory(
            user,
            secret,
            self.settings.mailbox_address,
            mail.recipients,
            # Twisted's client turns every LF into CRLF itself: hand it LF line ends.
            io.BytesIO(mail.as_bytes().replace(b"\r\n", b"\n")),
            done,
            retries=0,
            timeout=smtp_settings.timeout_s,
            contextFactory=self._tls,
            requireAuthentication=user is not None,
            requireTransportSecurity=True,
        )
        factory.dsn_envid = _xtext(mail.message_id) if request_dsn else b""
        if smtp_settings.security == "implicit":
            factory = _wrap_tls(self._tls, factory)
        self.reactor.connectTCP(smtp_settings.host, smtp_settings.port, factory, timeout=smtp_settings.timeout_s)
        return await self._outcome(done, _inner(factory), mail.recipients)

    async def _outcome(self, done, factory, recipients) -> list[RecipientResult]:
        try:
            await done
        except smtp.SMTPDeliveryError as exc:
            if factory.recipient_replies:
                return _results(factory.recipient_replies, recipients)
            if 400 <= (exc.code or 0) < 500:
                raise TransientDeliveryError(f"SMTP temporary failure {exc.code}") from exc
            return [
                RecipientResult(address=a, accepted=False, smtp_code=exc.code, reason=_text(exc.resp))
                for a in recipients
            ]
        except (smtp.SMTPClientError, net_error.ConnectError, net_error.ConnectionLost, net_error.TimeoutError) as exc:
            raise TransientDeliveryError(f"SMTP submission failed: {type(exc).__name__}: {exc}") from exc
        results = _results(factory.recipient_replies, recipients)
        log.info(
            "mss.sent",
            accepted=sum(r.accepted for r in results),
            refused=len(results) - sum(r.accepted for r in results),
        )
        return results


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _wrap_tls(creator, factory):
    """Implicit TLS (port 465): TLS from the first byte; connection failures reach `factory`."""
    wrapper = TLSMemoryBIOFactory(creator, True, factory)
    wrapper.inner_sender_factory = factory
    return wrapper


def _inner(factory):
    return getattr(factory, "inner_sender_factory", factory)


async def send_document(
    request: MssDocumentRequest,
    settings: MssChannelSettings,
    metadata: MetadataProvider,
    sender: MssSender,
    store=None,
    now: float | None = None,
) -> list[RecipientResult]:
    """Plan, send and remember: the results cover refused and submitted recipients."""
    plan = plan_mails(request, settings, metadata, now)
    results = list(plan.refused)
    for mail in plan.mails:
        # Recorded before submission: a DSN may come back before this coroutine resumes.
        if store is not None:
            store.record_sent(
                mail.message_id,
                request.control_id,
                mail.recipients,
                request.flags.ack_reception,
                request.flags.ack_lecture,
            )
        results += await sender.send(mail, request_dsn=request.flags.ack_reception)
    return results


def submission_outcomes(
    results: list[RecipientResult], control_id: str, message_id: str = "", acceptance_is_receipt: bool = False
) -> list[MailOutcome]:
    """ZAM^Z02 material from the SMTP submission itself.

    A recipient refused by the server (or by the PFI's own rules) is a Z02 failure now; an
    accepted one normally waits for the DSN, unless `acceptance_is_receipt` (operators that
    send no DSN) makes the 250 itself the receipt.
    """
    outcomes = []
    for result in results:
        if result.accepted and not acceptance_is_receipt:
            continue
        outcomes.append(
            MailOutcome(
                kind="Z02",
                success=result.accepted,
                address=result.address,
                error_code=None if result.accepted else (str(result.smtp_code) if result.smtp_code else None),
                error_label=None if result.accepted else result.reason,
                original_message_id=message_id,
                request_control_id=control_id,
            )
        )
    return outcomes
