"""The `mssante` connector: send document requests by MSSanté, integrate received mails.

Sending: a route's `deliver: {to: <mssante channel>}` hands the creator's HL7 document request
to `MssDeliveryConnector.deliver`, which maps it onto `MssDocumentRequest`, builds the XDM
`METADATA.XML` from the DMP's CDA → XDS extraction and submits the mails over SMTP. ZAM^Z02
(which need each recipient's address, so no route step can build them) are queued by the
connector itself to `zam_channel` through the `enqueue` hook the Engine injects.

Receiving (IMAP configured + `deliver_to`): `MailPoller` is the Engine service that runs
`MailboxPoller` and hands each LPS MDM to the RIS mllp-out channel, returning its ACK.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable, Coroutine

import structlog
from lxml import etree
from twisted.application import service
from twisted.internet import defer, threads

from engine.config.mssante import MssanteChannel
from engine.connectors.base import Action, Outcome, done, refused
from engine.errors import EngineError, TransientDeliveryError
from engine.mss.models import MssDocumentRequest, PatientIdentity, Recipient, RecipientResult

log = structlog.get_logger(__name__)

#: async (channel, payload, delivery) -> None: queue `payload` to `channel` for the creator
Enqueue = Callable[[str, bytes, object], Coroutine[Any, Any, None]]
CONTENT_TYPES = {"I": "03", "O": "07", "R": "19", "N": "97", "E": "07"}  # PV1-2 → J01 (as the DMP)
CONTENT_TYPE_SCHEME = "1.2.250.1.213.2.2"


# --------------------------------------------------------------------------- request mapping


def mss_request(request, action: str) -> MssDocumentRequest:
    """Map the typed HL7 document request (engine.docrequest) onto the connector's input."""
    f, p = request.flags, request.patient
    return MssDocumentRequest(
        control_id=request.header.control_id,
        action=action,
        document_title=request.document_type.label or request.document_type.code or "Document",
        cda=request.document.content,
        patient=PatientIdentity(
            family=p.family_name,
            given=p.given_names.split("^")[0],
            birth_date=p.birth_date[:8],
            ins=p.ins.value if p.ins else None,
            ins_oid=p.ins.oid if p.ins else None,
            identity_qualified=p.ins_qualified,
        ),
        flags=f.to_mss(),
        recipients=[_recipient(r) for r in request.recipients if r.address],
        reply_to=[r.address for r in request.reply_to if r.address],
        body_ps=f.corpsmail_ps,
        body_patient=f.corpsmail_patient,
    )


def _recipient(participant) -> Recipient:
    if participant.is_patient:
        kind = "patient"
    elif participant.person is not None and participant.person.id:
        kind = "professional"
    elif participant.organisation is not None and participant.organisation.id:
        kind = "organisation"
    else:
        kind = "application"
    return Recipient(address=participant.address, kind=kind, identifier=participant.identifier or None)


# --------------------------------------------------------------------------- XDM metadata


class XdmMetadata:
    """`METADATA.XML` from the DMP's CDA → XDS extraction: DocumentEntry + SubmissionSet."""

    def __init__(self, channel: MssanteChannel, clock, extractor=None):
        from engine.dmp.metadata import MetadataExtractor

        self.channel, self.clock = channel, clock
        self.extractor = extractor or MetadataExtractor(unique_id_with_extension="caret")

    def for_request(self, request: MssDocumentRequest, sender_xcn: str | None, patient_class: str) -> bytes:
        """The ebRIM SubmitObjectsRequest (raises MetadataError when the CDA header is incomplete)."""
        from engine.dmp import ebrim
        from engine.dmp.metadata import Code
        from engine.dmp.model import DmpFlags

        f = request.flags
        meta = self.extractor.extract(
            request.cda,
            DmpFlags(
                masque_ps=f.masque_ps,
                invisible_patient=f.invisible_patient,
                invisible_rep_legaux=f.invisible_rep_legaux,
            ),
        )
        content = CONTENT_TYPES.get(patient_class, self.channel.content_type_code)
        now = dt.datetime.fromtimestamp(self.clock.seconds(), dt.timezone.utc)
        info = ebrim.SubmissionSetInfo(
            patient_id=meta.patient_id,
            source_oid=self.channel.source_oid,
            content_type=Code(code=content, scheme=CONTENT_TYPE_SCHEME, display=content),
            submission_time=now.strftime("%Y%m%d%H%M%S"),
            author_person=sender_xcn or (meta.authors[0].person if meta.authors else None),
        )
        root = etree.Element(ebrim.q(ebrim.LCM, "SubmitObjectsRequest"), nsmap=ebrim.NSMAP)
        objects = etree.SubElement(root, ebrim.q(ebrim.RIM, "RegistryObjectList"))
        ebrim.document_entry(objects, meta, "Document01")
        ebrim.submission_set(objects, info)
        ebrim.association(objects, ebrim.HAS_MEMBER, info.entry_id, "Document01", {"SubmissionSetStatus": ["Original"]})
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _sender_xcn(request) -> str | None:
    person = request.sender.person if request.sender else None
    if person is None or not person.id:
        return None
    return f"{person.id}^{person.family_name}^{person.given_name}^^^^^^&{person.authority_oid}&ISO^D^^^{person.id_type}"


# --------------------------------------------------------------------------- the connector


class MssDeliveryConnector:
    """HL7 document request → MSSanté mails; Z02 to `zam_channel` through `enqueue`."""

    def __init__(
        self, reactor, channel: MssanteChannel, root: Path, enqueue: Enqueue | None = None, clock=None, store=None
    ):
        from engine.mss.outbound import MssSender
        from engine.mss.store import MssStore

        self.channel, self.reactor, self.clock = channel, reactor, clock or reactor
        self.settings = channel.mss_settings(root)
        self.settings.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.store = store or MssStore(self.settings.state_file)
        self.sender = MssSender(self.settings, reactor)
        self.metadata = XdmMetadata(channel, self.clock)
        self.enqueue = enqueue

    async def deliver(self, payload: bytes, delivery) -> Outcome:
        try:
            # parsing a large ORU/MDM and the XSLT extraction stay off the reactor thread
            request, mss, metadata = await threads.deferToThread(self._prepare, payload, delivery)
        except (EngineError, ValueError) as exc:
            return refused("NOT_SENDABLE", str(exc))
        waits_for_dmp = self.channel.wait_for_dmp_when_invisible and mss.flags.dest_dmp and mss.flags.invisible_patient
        after_dmp = "/ok/" in (getattr(delivery, "step", "") or "")  # a follow-up of an accepted delivery
        if waits_for_dmp and not after_dmp:
            return done("MSSanté: deferred until the DMP accepts the document invisibly to the patient")
        if after_dmp and not waits_for_dmp:
            return done("MSSanté: already mailed with the report (not invisible in the DMP)")
        if after_dmp:
            mss.dmp_notice = self.channel.dmp_invisible_notice
        self._remember_zam_target(request, mss, delivery)
        try:
            results = await self._send(mss, metadata)
        except TransientDeliveryError as exc:
            return Outcome(Action.RETRY, str(exc))
        await self._z02(request, mss, results, delivery)
        return outcome_of(mss, results)

    def _prepare(self, payload: bytes, delivery):
        request, mss = self._read(payload, delivery)
        return request, mss, self.metadata.for_request(mss, _sender_xcn(request), request.patient_class)

    def _read(self, payload: bytes, delivery):
        from engine.docrequest import parse_document_request
        from engine.hl7.message import Message

        request = parse_document_request(Message.parse(payload))  # RequestError: coded, dead
        action = getattr(delivery, "action", "") or request.action.value
        return request, mss_request(request, action)

    async def _send(self, mss: MssDocumentRequest, metadata: bytes) -> list[RecipientResult]:
        from engine.mss.outbound import send_document

        return await send_document(
            mss, self.settings, lambda _: metadata, self.sender, self.store, now=self.clock.seconds()
        )

    def _remember_zam_target(self, request, mss: MssDocumentRequest, delivery) -> None:
        """DSNs and MDNs arrive later through the poller: keep what their ZAM will need."""
        if (mss.flags.ack_reception or mss.flags.ack_lecture) and self.channel.zam_channel:
            self.store.record_zam_target(
                mss.control_id,
                {
                    "header": request.header.model_dump(),
                    "delivery": {k: getattr(delivery, k, "") for k in ("message_uid", "route", "step", "fifo_key")},
                },
            )

    def on_outcome(self, outcome) -> None:
        """A DSN/MDN matched by the poller → ZAM^Z02/Z03 queued to the creator."""
        from types import SimpleNamespace

        from engine.docrequest.model import Header

        target = self.store.zam_target(outcome.request_control_id or "")
        if target is None or not (self.enqueue and self.channel.zam_channel):
            log.warning("mss.outcome_unrouted", kind=outcome.kind)
            return
        payload = zam_bytes(Header.model_validate(target["header"]), outcome, self.clock)
        d: defer.Deferred[None] = defer.ensureDeferred(
            self.enqueue(self.channel.zam_channel, payload, SimpleNamespace(**target["delivery"]))
        )
        d.addErrback(lambda f: log.error("mss.zam_enqueue_failed", error=f.getErrorMessage()))

    async def _z02(self, request, mss: MssDocumentRequest, results, delivery) -> None:
        """One ZAM^Z02 per recipient known now: refusals, and acceptances when they count."""
        from engine.mss.outbound import submission_outcomes

        if not (mss.flags.ack_reception and self.channel.zam_channel and self.enqueue):
            return
        outcomes = submission_outcomes(
            results, mss.control_id, acceptance_is_receipt=self.channel.acceptance_is_receipt
        )
        for outcome in outcomes:
            await self.enqueue(self.channel.zam_channel, zam_bytes(request.header, outcome, self.clock), delivery)

    async def close(self) -> None:
        self.store.close()


def zam_bytes(header, outcome, clock) -> bytes:
    """ER7 of the ZAM^Z02/Z03 for one MailOutcome (OBX-4 = the request's MSH-10)."""
    from engine.ids import new_id
    from engine.docrequest.zam import build_zam

    now = dt.datetime.fromtimestamp(clock.seconds())
    return build_zam(
        outcome.kind,
        header,
        outcome.success,
        control_id=new_id(clock.seconds())[-20:],
        now=now,
        error_code=outcome.error_code or (None if outcome.success else "REFUSED"),
        error_label=outcome.error_label,
        address=outcome.address,
    )


def outcome_of(mss: MssDocumentRequest, results: list[RecipientResult]):
    """done when any mail was accepted; retry on 4xx only refusals; dead when every submitted
    recipient got a 5xx (reason `CODE: label`) or nobody could be mailed at all. Done and dead
    details end with what became of each audience's mail (`audience_summary`)."""
    submitted = [r for r in results if r.smtp_code is not None]
    accepted = [r for r in submitted if r.accepted]
    summary = audience_summary(results)
    if accepted:
        return done(f"MSSanté: {len(accepted)} recipient(s) accepted, {len(results) - len(accepted)} refused{summary}")
    if any(400 <= (r.smtp_code or 0) < 500 for r in submitted):
        first = next(r for r in submitted if 400 <= (r.smtp_code or 0) < 500)
        return Outcome(Action.RETRY, first.reason, str(first.smtp_code))
    if submitted:
        return refused(str(submitted[0].smtp_code), f"{submitted[0].reason}{summary}", local=False)
    if not (mss.flags.dest_mssante_ps or mss.flags.dest_mssante_pat):
        return done("MSSanté: not requested (DESTMSSANTEPS=N, DESTMSSANTEPAT=N)")
    reasons = "; ".join(sorted({r.reason for r in results})) or "no PRT RCT address"
    return refused("NO_RECIPIENT", f"{reasons}{summary}")


def audience_summary(results: list[RecipientResult]) -> str:
    """` (professionals: 2 accepted, 0 refused, 0 not sent; patient: 0 accepted, 1 refused, 0 not
    sent)`: per audience, recipients the server accepted, refused, and that a PFI rule kept from
    being submitted. The programme statistics read it (engine/stats/outcomes.py); '' without results."""
    parts = []
    for name, patient in (("professionals", False), ("patient", True)):
        mine = [r for r in results if r.address.lower().endswith("@patient.mssante.fr") == patient]
        if mine:
            accepted = sum(1 for r in mine if r.accepted)
            refusals = sum(1 for r in mine if r.smtp_code is not None and not r.accepted)
            parts.append(f"{name}: {accepted} accepted, {refusals} refused, {len(mine) - accepted - refusals} not sent")
    return f" ({'; '.join(parts)})" if parts else ""


# --------------------------------------------------------------------------- receiving


class MailPoller(service.Service):
    """Engine service: polls the application mailbox, each LPS MDM goes to the RIS over MLLP."""

    def __init__(
        self,
        reactor,
        channel: MssanteChannel,
        root: Path,
        ris,
        connector: MssDeliveryConnector,
        clock=None,
        journal=None,
    ):
        from engine.mllp.sender import MLLPSender
        from engine.mss.inbound import MailboxPoller

        self.setName(f"{channel.name}-poller")
        self.channel_name, self.journal, self.clock = channel.name, journal, clock or reactor
        self.ris = MLLPSender(reactor, ris)
        self.poller = MailboxPoller(
            connector.settings,
            reactor,
            self.deliver,
            connector.sender,
            connector.store,
            on_outcome=connector.on_outcome,
            clock=clock,
        )

    async def deliver(self, mdm: bytes) -> bytes:
        """The RIS's ACK bytes; no ACK (down, timeout) → the mail waits for the next poll.

        The LPS MDM is journaled first (channel = this mailbox, state `mail-integration`), with
        the RIS's answer as an event: visible in `pfi tail`, and `pfi replay` sends it again
        through the routes (the shipped `mailbox-to-ris` route). The poller answers the sender's
        MDN from the RIS's ACK, so it delivers itself rather than through the queue."""
        uid = await self._journal(mdm)
        if uid is not None:
            await self._classify(uid, mdm)
        outcome = await self.ris.send(mdm)
        if uid is not None:
            state = "sent" if outcome.ack is not None else "retry"
            d = self.journal.record_event(
                uid, state, self.ris.settings.name, f"to the RIS by the mailbox poller: {outcome.reason}"
            )
            d.addErrback(lambda f: log.error("mss.journal_event_failed", error=f.getErrorMessage()))
        if outcome.ack is None:
            raise TransientDeliveryError(f"RIS: {outcome.reason}")
        return outcome.ack

    async def _journal(self, mdm: bytes) -> str | None:
        from engine.hl7.scan import scan
        from engine.ids import new_id
        from engine.journal.base import InboundRecord
        from engine.mllp.intake import index_header

        if self.journal is None:
            return None
        now = self.clock.seconds()
        record = InboundRecord(
            uid=new_id(now),
            channel=self.channel_name,
            received_at=now,
            raw=mdm,
            state=MAIL_INTEGRATION,
            reason="LPS MDM built from a mail of the application mailbox",
        )
        index_header(record, scan(mdm))
        stored = await self.journal.append_inbound(record)
        return stored.uid

    async def _classify(self, uid: str, mdm: bytes) -> None:
        """What the programme statistics count of this document (engine/stats), journaled before
        its RIS answer: the answer's event then counts it integrated or failed."""
        from engine.journal.stats import record_messages
        from engine.stats.facts import facts_of_raw

        try:
            facts = await threads.deferToThread(facts_of_raw, uid, mdm, self.clock.seconds())
            if facts is not None:
                await self.journal.submit(lambda conn, store: record_messages(conn, [facts]))
        except Exception as exc:  # the statistics must never hold a document back from the RIS
            log.error("stats.classify_failed", message_id=uid, error=str(exc))

    def startService(self):
        super().startService()
        self.poller.start()

    def stopService(self):
        super().stopService()
        self.poller.stop()
        return defer.Deferred.fromCoroutine(self.ris.close())


def channel_problems(config, channel) -> list[str]:
    problems = _dmp_wait_problems(config, channel)
    if channel.imap is not None and not channel.deliver_to:
        problems.append(f"channel {channel.name!r}: IMAP needs deliver_to = an mllp-out channel")
    for setting in ("zam_channel", "deliver_to"):
        target = getattr(channel, setting)
        other = config.channels.get(target) if target else None
        if target and (other is None or other.type != "mllp-out"):
            problems.append(f"channel {channel.name!r}: {setting} {target!r} is not an mllp-out channel")
    return problems


def _dmp_wait_problems(config, channel) -> list[str]:
    """`wait_for_dmp_when_invisible` defers some mails to a DMP delivery's on_success: without such a
    step in the routes those mails would never leave, silently."""
    if not getattr(channel, "wait_for_dmp_when_invisible", False):
        return []

    def after_dmp(steps, in_success: bool) -> bool:
        # The connector mails deferred reports from any follow-up of an accepted delivery (the
        # shipped routes: the DMP's); what must exist is such a step naming this channel.
        for step in steps:
            targets = (
                []
                if step.deliver is None
                else ([step.deliver.to] if isinstance(step.deliver.to, str) else list(step.deliver.to))
            )
            if in_success and channel.name in targets:
                return True
            if after_dmp(step.on_success, True) or after_dmp(step.on_failure, False):
                return True
        return False

    if any(after_dmp(route.steps, False) for route in config.routes):
        return []
    return [
        f"channel {channel.name!r}: wait_for_dmp_when_invisible needs a `deliver: {{to: {channel.name}}}` "
        "step in the on_success of a DMP delivery, or reports invisible to the patient are never mailed"
    ]


#: journal state of an LPS MDM the mailbox poller delivered itself (`pfi replay` routes it again)
MAIL_INTEGRATION = "mail-integration"
