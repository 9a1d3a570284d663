"""Destination connectors: what `deliver` steps send through, one per destination channel.

Every connector answers `async deliver(payload, delivery) -> outcome` where outcome has
`action` ("done" | "retry" | "dead") and `reason`; the queue does the rest (retry timing,
dead letter, follow-ups).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.channels import ChannelSettings, OutcomeAction, RetrySettings, channel_type
from engine.dmp.config import DmpChannelSettings, DmpEndpoints, LpsIdentity, OrgCertificate
import engine.connectors_mss  # noqa: E402,F401  (registers the mssante channel type)


@dataclass(frozen=True)
class Outcome:
    """What a connector made of one delivery: the queue's action and the journal's reason."""

    action: OutcomeAction
    reason: str


class CertificateSettings(BaseModel):
    """One structure's ORG certificate in `certificates:` of a DMP channel."""

    model_config = ConfigDict(extra="forbid")
    cert: str
    key: str
    structure_id: str | None = Field(default=None, description="Default: read from the certificate "
                                     "(subject OU); refused when it contradicts the certificate")


@channel_type("dmp")
class DmpChannel(ChannelSettings):
    """The national DMP (or the local simulator): IHE XDS.b ITI-41/18/57 with VIHF over mTLS."""

    type: Literal["dmp"]
    endpoint: str = Field(description="Base URL; the transactions' paths are appended")
    client_cert: str | None = Field(default=None, description="Single-structure form: the ORG certificate")
    client_key: str | None = None
    certificates: list[CertificateSettings] = Field(
        default_factory=list, description="One ORG certificate per structure, chosen by the request's "
        "PRT-8 organisation (docs/dmp.md)")
    ca_bundle: str
    structure_id: str | None = Field(default=None, description="Structure of requests without PRT-8; "
                                     "default: the first certificate's")
    source_oid: str
    lps: LpsIdentity
    activity_sector: str = "SA07^1.2.250.1.71.4.2.4"
    response_timeout: float = 60.0
    retry: RetrySettings = RetrySettings()
    #: VIHF role(s) of the PRT SB sender, "code^codeSystem" (e.g. "10^1.2.250.1.71.1.2.7" for a
    #: physician, "SM44^1.2.250.1.71.4.2.5" radiology). HL7 does not carry the profession and
    #: the ANS examples' CDA gives no author code either; the DMP refuses a VIHF without a role.
    #: Empty: the CDA legalAuthenticator code is used.
    sender_roles: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_certificate(self):
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if self.client_cert is None and not self.certificates:
            raise ValueError("an organisation certificate is required: client_cert/client_key or "
                             "certificates")
        return self

    @field_validator("sender_roles")
    @classmethod
    def _coded(cls, roles: list[str]) -> list[str]:
        for role in roles:
            code, sep, system = role.partition("^")
            if not (code and sep and system):
                raise ValueError(f"sender role {role!r} must be `code^codeSystem`")
        return roles

    def role_pairs(self) -> tuple[tuple[str, str], ...]:
        """`sender_roles` as (code, codeSystem) pairs."""
        return tuple(tuple(role.split("^", 1)) for role in self.sender_roles)

    def client_settings(self, root: Path) -> DmpChannelSettings:
        resolve = lambda p: (root / p).resolve() if p is not None else None  # noqa: E731
        return DmpChannelSettings(
            endpoints=DmpEndpoints.from_base(self.endpoint), client_cert=resolve(self.client_cert),
            client_key=resolve(self.client_key), ca_bundle=resolve(self.ca_bundle),
            certificates=tuple(OrgCertificate(cert=resolve(c.cert), key=resolve(c.key),
                                              structure_id=c.structure_id)
                               for c in self.certificates),
            structure_id=self.structure_id, source_oid=self.source_oid, lps=self.lps,
            activity_sector=self.activity_sector, response_timeout=self.response_timeout)


class MllpDestination:
    """`parallel_keys` connections; a FIFO key always uses the same one (see lane_of)."""

    def __init__(self, reactor, settings):
        from engine.mllp.sender import MLLPSender

        self.senders = [MLLPSender(reactor, settings) for _ in range(settings.parallel_keys)]
        self.lanes = len(self.senders)
        self.ipp_repetition = settings.ipp_repetition

    async def deliver(self, payload: bytes, delivery) -> Outcome:
        from engine.hl7.pid3 import place_ipp
        from engine.routing.dispatcher import lane_of

        if self.ipp_repetition:
            payload = place_ipp(payload, self.ipp_repetition)
        outcome = await self.senders[lane_of(delivery.fifo_key, self.lanes)].send(payload)
        return Outcome(outcome.action, outcome.reason)

    async def close(self) -> None:
        for sender in self.senders:
            await sender.close()


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
        from engine.docrequest import parse_document_request
        from engine.docrequest.errors import RequestError
        from engine.hl7.message import Message

        try:
            request = parse_document_request(Message.parse(payload))
            publish = publish_request(request, delivery.action or request.action.value, self.sender_roles)
        except (RequestError, ValueError) as exc:
            return Outcome("dead", f"{LOCAL_PREFIX}NOT_PUBLISHABLE: {exc}")
        result = await self.destination.deliver(publish)
        if result.ok:
            return Outcome("done", f"DMP accepted ({result.status})")
        if result.certificate_refused:  # the detail names the structure and the TLS alert / fault
            return Outcome("pause", f"{failure_reason(result)}: {result.detail}")
        if result.error_code == "INS_NOT_QUALIFIED":  # waits for a PAM.fr update, never a dead letter
            return Outcome("wait-identity", failure_reason(result))
        return Outcome("retry" if result.transient else "dead", failure_reason(result))

    async def close(self) -> None:
        await self.destination.close()


#: marks a code of the PFI's own (journal detail, ZAM ERR-5 coding system 99PFI)
LOCAL_PREFIX = "PFI:"

#: our own codes whose detail names CDA elements (never patient data): the creator must learn which
#: element is missing, not only "CDA header incomplete"
DETAILED_CODES = frozenset({"CDA_HEADER_INCOMPLETE"})


def failure_reason(result) -> str:
    """`CODE: label` for the journal and the ZAM^Z01 ERR-5 (see engine/routing/zamstep.py); a
    refusal by the PFI itself (checks, gates, transport) is `PFI:CODE: label`, never a DMP code."""
    label = result.error_label or result.detail
    if result.error_code in DETAILED_CODES and result.detail and result.detail != label:
        label = f"{label}: {result.detail}"
    return f"{'' if result.from_dmp else LOCAL_PREFIX}{result.error_code}: {label}"


def publish_request(request, action: str, sender_roles: tuple = ()):
    """Map the typed HL7 document request onto the DMP connector's input."""
    from engine.dmp.model import DmpFlags, Person, PublishRequest

    ins = request.patient.ins
    if ins is None:
        raise ValueError("no INS in PID-3: the DMP needs the patient's INS")
    f = request.flags
    sender = request.sender
    person = sender.person if sender else None
    org = sender.organisation if sender else None
    return PublishRequest(
        action=action, cda=request.document.content, ins=ins.value, ins_oid=ins.oid,
        ins_qualified=request.patient.identity_status == "VALI",
        flags=DmpFlags(masque_ps=bool(f.masque_ps), invisible_patient=bool(f.invisible_patient),
                       invisible_rep_legaux=bool(f.invisible_rep_legaux),
                       connexion_secrete=bool(f.connexion_secrete), modif_conf_code=bool(f.modif_conf_code)),
        replaced_document_id=entity_id(request.replaced_document_id) or None,
        sender=Person(id=person.id, family=person.family_name, given=person.given_name,
                      id_type=person.id_type or "IDNPS", roles=sender_roles)
        if person and person.id else None,
        sender_organisation=organisation(org) if org and org.id else None,
        patient_class=request.patient_class or None, message_control_id=request.header.control_id)


def entity_id(ei: str | None) -> str:
    """EI-1 of TXA-12/13: the ANS examples put a namespace name in EI-2 (`<oid>^Organisation-Y`),
    which is not part of the DMP uniqueId."""
    return (ei or "").split("^", 1)[0].strip()


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


def build_connectors(config, reactor, consent=None) -> dict:
    """One connector per destination channel used by the routes."""
    connectors = {}
    for channel in config.channels.values():
        if channel.type == "mllp-out":
            connectors[channel.name] = MllpDestination(reactor, channel)
        elif channel.type == "dmp":
            connectors[channel.name] = DmpDeliveryConnector(reactor, channel, config.root, consent)
    return connectors


def retry_settings(config) -> dict:
    return {c.name: c.retry for c in config.channels.values() if hasattr(c, "retry")}
