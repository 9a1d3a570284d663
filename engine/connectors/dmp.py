"""The `dmp` connector: an HL7 document request published to the DMP (IHE XDS.b ITI-41/57
with VIHF over mTLS, engine/dmp/). The ZAM^Z01 comes from the route's follow-ups, built from the
structured outcome (the DMP's own error code, or a PFI code marked local)."""

from __future__ import annotations

from pathlib import Path

import structlog

from engine.config.dmp import DmpChannel
from engine.connectors.base import Action, Outcome, done, refused
from engine.docrequest.consistency import entity_id

log = structlog.get_logger("engine.connectors.dmp")


class DmpDeliveryConnector:
    """HL7 document request -> DMP publication; the ZAM^Z01 comes from the route's follow-ups.
    A refused organisation certificate pauses the destination (see engine/journal/deliveries.py)."""

    pausable = True

    def __init__(self, reactor, settings: DmpChannel, root: Path, consent=None):
        from engine.dmp.config import check_settings
        from engine.dmp.destination import DmpDestination
        from engine.errors import ConfigurationError

        client_settings = settings.client_settings(root)
        problems = check_settings(client_settings, None)
        if problems:  # the same checks as `pfi check`, but an expired certificate does not stop
            raise ConfigurationError([f"channel {settings.name}: {p}" for p in problems])
        self.destination = DmpDestination(reactor, client_settings, consent)
        self.sender_roles = settings.role_pairs()

    @property
    def certificate_expiry(self) -> dict:
        """{structure: not-after datetime} of the channel's organisation certificates."""
        return self.destination.certificate_expiry

    async def deliver(self, payload: bytes, delivery) -> Outcome:
        from engine.docrequest.errors import RequestError

        try:
            publish = self._publish_request(payload, delivery.action)
        except (RequestError, ValueError) as exc:
            return refused("NOT_PUBLISHABLE", str(exc))
        result = await self.destination.deliver(publish)
        if result.ok:
            return done(f"DMP accepted ({result.status})")
        if result.certificate_refused:  # the detail names the structure and the TLS alert / fault
            return failure(Action.PAUSE, result, also_detail=True)
        if result.error_code == "INS_NOT_QUALIFIED":  # waits for a PAM.fr update, never a dead letter
            return failure(Action.WAIT_IDENTITY, result)
        return failure(Action.RETRY if result.transient else Action.DEAD, result)

    def _publish_request(self, payload: bytes, action: str):
        from engine.docrequest import parse_document_request
        from engine.hl7.message import Message

        request = parse_document_request(Message.parse(payload))
        return publish_request(request, action or request.action.value, self.sender_roles)

    def identity_keys_if_qualified(self, payload: bytes) -> set[str]:
        """After a send was held for its identity: the patient's INS and IPP when the gate would
        now let it through (a PAM.fr update landed between the gate's look-up and the hold), else
        an empty set. Blocking (parses the message): call it off the reactor thread."""
        try:
            publish = self._publish_request(payload, "")
        except Exception:  # noqa: BLE001 - it was readable a moment ago; the hold stands
            return set()
        if self.destination.gate(publish).code == "INS_NOT_QUALIFIED":
            return set()
        return {publish.ins, publish.ipp} - {""}

    async def close(self) -> None:
        await self.destination.close()


#: our own codes whose detail names CDA elements (never patient data): the creator must learn which
#: element is missing, not only "CDA header incomplete"
DETAILED_CODES = frozenset({"CDA_HEADER_INCOMPLETE"})


def failure(action: Action, result, also_detail: bool = False) -> Outcome:
    """The DMP's error code for the ZAM^Z01 ERR-5; a refusal by the PFI itself (checks, gates,
    transport) is marked local (coding system 99PFI), never passed off as a DMP code."""
    label = result.error_label or result.detail
    if result.error_code in DETAILED_CODES and result.detail and result.detail != label:
        label = f"{label}: {result.detail}"
    if also_detail:  # a paused destination: the operator needs the structure and the TLS alert
        label = f"{label}: {result.detail}"
    return Outcome(action, label, result.error_code, local=not result.from_dmp)


def publish_request(request, action: str, sender_roles: tuple = ()):
    """Map the typed HL7 document request onto the DMP connector's input."""
    from engine.dmp.model import Person, PublishRequest

    ins = request.patient.ins
    if ins is None:
        raise ValueError("no INS in PID-3: the DMP needs the patient's INS")
    ipp = request.patient.ipp
    sender = request.sender
    person = sender.person if sender else None
    org = sender.organisation if sender else None
    return PublishRequest(
        action=action,
        cda=request.document.content,
        ins=ins.value,
        ins_oid=ins.oid,
        ins_qualified=request.patient.identity_status == "VALI",
        ipp=ipp.value if ipp else "",
        ipp_domain=(ipp.oid or ipp.authority) if ipp else "",
        flags=request.flags.to_dmp(),
        replaced_document_id=entity_id(request.replaced_document_id) or None,
        sender=Person(
            id=person.id,
            family=person.family_name,
            given=person.given_name,
            id_type=person.id_type or "IDNPS",
            roles=sender_roles,
        )
        if person and person.id
        else None,
        sender_organisation=organisation(org) if org and org.id else None,
        patient_class=request.patient_class or None,
        message_control_id=request.header.control_id,
    )


#: PRT-8.7 id type -> prefix of the national structure id (IDNST = type digit + number, e.g.
#: FINESS 750100125 -> 1750100125 in the ANS identifier types spec; SIRET -> 3 + SIRET)
IDNST_PREFIX = {"FINEG": "1", "FINEJ": "1", "SIRET": "3"}


def organisation(org):
    """PRT-8 -> the DMP's IDNST (VIHF Identifiant_Structure, authorInstitution)."""
    from engine.dmp.model import Organisation

    prefix = IDNST_PREFIX.get((org.id_type or "").upper())
    if prefix is not None:
        return Organisation(name=org.name, id=prefix + org.id, id_type="IDNST")
    return Organisation(name=org.name, id=org.id, id_type=org.id_type or "IDNST")
