"""The DMP client: initial (ITI-41), replace (ITI-18 then ITI-41 + RPLC), delete (ITI-18 then
ITI-57), and a later visibility change (ITI-57 metadata update)."""

from __future__ import annotations

import copy
import datetime as dt
import time
import uuid
from dataclasses import dataclass, field

import structlog
from lxml import etree

from engine.dmp import ebrim, soap, xades
from engine.dmp.config import DmpChannelSettings, OrgCertificate, resolve_certificates
from engine.dmp.metadata import Code, DocumentMetadata, MetadataError, MetadataExtractor
from engine.dmp.model import DmpFlags, DmpResult, PublishRequest, permanent, success, transient
from engine.dmp.transport import DmpPermanentError, DmpTransientError, HttpsPoster
from engine.dmp.vihf import VihfContext, VihfIdentity, VihfSigner, VihfSubject, roles_from_code
from engine.errors import ConfigurationError, ValidationError
from engine.xmlsafe import parse_untrusted

log = structlog.get_logger("pfi.dmp")

#: PV1-2 patient class → submission-set contentTypeCode (JDV_J59), per the IG proposal
CONTENT_TYPES = {"I": "03", "O": "07", "R": "19", "N": "97", "E": "07"}
CONTENT_TYPE_SCHEME = "1.2.250.1.213.2.2"


@dataclass
class Timings:
    """Cumulated seconds per phase, for the benchmark."""

    metadata: float = 0.0
    signing: float = 0.0
    http: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> None:
        """Accumulate `seconds` in `phase`."""
        setattr(self, phase, getattr(self, phase) + seconds)


class RegistryFailure(Exception):
    """A transaction answered with a failure status or a fault; carries the DmpResult."""

    def __init__(self, result: DmpResult):
        self.result = result
        super().__init__(result.detail)


class DmpClient:
    """Talks to one DMP channel. `publish` never raises: every outcome is a DmpResult."""

    def __init__(
        self,
        reactor,
        settings: DmpChannelSettings,
        extractor: MetadataExtractor | None = None,
        poster: HttpsPoster | None = None,
    ):
        self._reactor = reactor
        self._settings = settings
        self._extractor = extractor or MetadataExtractor(unique_id_with_extension=settings.unique_id_with_extension)
        structures, problems = resolve_certificates(settings)
        if problems:
            raise ConfigurationError(problems)
        self._default = structures.default
        #: {structure: not-after} of the certificates (expiry watch, docs/dmp.md)
        self.certificate_expiry = dict(structures.not_after)
        self._identities = {
            structure: self._identity(structure, entry, poster) for structure, entry in structures.by_structure.items()
        }
        self.timings = Timings()

    def _identity(self, structure: str, entry: OrgCertificate, poster) -> StructureIdentity:
        cert, key = _key_pair(entry)
        lps, settings = self._settings.lps, self._settings
        signer = VihfSigner(
            cert,
            key,
            VihfIdentity(
                settings.vihf_version, settings.auth_mode, lps.name, lps.version, lps.homologation_id, lps.lps_id
            ),
        )
        return StructureIdentity(
            structure,
            signer,
            poster or HttpsPoster(self._reactor, settings, entry),
            xades.SubmissionSigner(cert, key) if settings.submission_signature else None,
        )

    # the default structure's signers (tests swap them to play a misbehaving client)
    @property
    def _signer(self) -> VihfSigner:
        return self._identities[self._default].signer

    @_signer.setter
    def _signer(self, signer) -> None:
        self._identities[self._default].signer = signer

    @property
    def _submission_signer(self):
        return self._identities[self._default].submission_signer

    async def close(self) -> None:
        """Release pooled connections."""
        for poster in {id(i.poster): i.poster for i in self._identities.values()}.values():
            await poster.close()

    def identity_for(self, request: PublishRequest) -> StructureIdentity:
        """The certificate of the request's structure (PRT-8), or of the default structure when
        the request names none; RegistryFailure STRUCTURE_NOT_CONFIGURED otherwise (nothing is
        sent: the DMP refuses a VIHF whose structure is not the certificate's)."""
        structure = self._structure_of(request)
        identity = self._identities.get(structure)
        if identity is None:
            raise RegistryFailure(
                permanent(
                    "STRUCTURE_NOT_CONFIGURED",
                    "no certificate for the sending structure",
                    f"the request's structure {structure} has no organisation certificate on this "
                    f"DMP channel (configured: {', '.join(self._identities)})",
                )
            )
        return identity

    # -- public operations ---------------------------------------------------------------

    async def publish(self, request: PublishRequest) -> DmpResult:
        """Carry out `request.action`; map every failure to a coded DmpResult."""
        return await self._guarded(request, self._publish(request))

    async def set_visibility(self, request: PublishRequest) -> DmpResult:
        """ITI-57 metadata update: replace the DMP confidentiality codes of the registered
        document (identified by the CDA id) with those derived from `request.flags`."""
        return await self._guarded(request, self._set_visibility(request))

    async def _publish(self, request: PublishRequest) -> DmpResult:
        meta = self._metadata(request)
        self.identity_for(request)  # before anything is sent
        if request.action == "initial":
            return await self._provide(request, meta, None)
        if request.action == "replace":
            return await self._replace(request, meta)
        return await self._delete(request, meta)

    async def _set_visibility(self, request: PublishRequest) -> DmpResult:
        meta = self._metadata(request)
        self.identity_for(request)  # before anything is sent
        entry = await self._find_entry(request, meta, meta.unique_id)
        return await self._update_confidentiality(request, meta, entry)

    async def _guarded(self, request: PublishRequest, work) -> DmpResult:
        """Await `work`, turning every failure into a coded DmpResult (never raises)."""
        try:
            return await work
        except MetadataError as exc:
            return permanent("CDA_HEADER_INCOMPLETE", "CDA header incomplete", str(exc))
        except ValidationError as exc:
            return permanent("INVALID_INPUT", "invalid document or answer", str(exc))
        except RegistryFailure as exc:
            if exc.result.certificate_refused:
                return exc.result.model_copy(update={"detail": self._naming_structure(exc.result.detail, request)})
            return exc.result
        except DmpTransientError as exc:
            return transient(exc.code, "DMP unreachable", str(exc))
        except DmpPermanentError as exc:
            return permanent(exc.code, "DMP refused the connection", self._naming_structure(str(exc), request))
        except Exception as exc:  # a bug must not crash the route: coded, logged, dead-lettered
            log.error("dmp.internal_error", msg_id=request.message_control_id, error=type(exc).__name__)
            return permanent("INTERNAL_ERROR", "connector error", type(exc).__name__)

    def _structure_of(self, request: PublishRequest) -> str:
        org = request.sender_organisation
        return org.id if org else self._default

    def _naming_structure(self, detail: str, request: PublishRequest) -> str:
        """A refusal of our credentials says which structure's certificate (several may be)."""
        return f"{detail} (certificate of structure {self._structure_of(request)})"

    # -- steps ---------------------------------------------------------------------------

    def _metadata(self, request: PublishRequest) -> DocumentMetadata:
        started = time.perf_counter()
        try:
            meta = self._extractor.extract(request.cda, request.flags)
        finally:
            self.timings.add("metadata", time.perf_counter() - started)
        if (meta.patient_ins, meta.patient_ins_oid) != (request.ins, request.ins_oid):
            raise ValidationError("the CDA recordTarget INS differs from the INS of the request")
        return meta

    async def _provide(self, request: PublishRequest, meta: DocumentMetadata, replaces: str | None) -> DmpResult:
        env, attachments = self.iti41_envelope(request, meta, replaces)
        content_type, payload = soap.mtom_pack(
            etree.tostring(env, xml_declaration=True, encoding="UTF-8"), attachments, soap.ACTION_ITI41
        )
        url = self._settings.endpoints.provide_and_register
        try:
            outcome = await self._exchange(url, content_type, payload, "ITI-41", request)
        except RegistryFailure as failure:
            if failure.result.error_code != "XDSDuplicateUniqueIdInRegistry":
                raise
            return await self._already_registered(request, meta, failure)
        entry = (outcome.slots.get("entryUUID") or [None])[0]
        log.info("dmp.published", action=request.action, msg_id=request.message_control_id, status=outcome.status)
        return _result(outcome, entry)

    async def _already_registered(self, request, meta, failure: RegistryFailure) -> DmpResult:
        """A retry after a lost answer: the same bytes already approved count as published."""
        same = [
            e
            for e in await self._entries(request, meta, meta.unique_id)
            if e.get("status") == ebrim.APPROVED and ebrim.slot_values(e, "hash") == [meta.hash]
        ]
        if not same:
            raise failure
        return success(same[0].get("id"), "already registered (earlier attempt succeeded)")

    def iti41_envelope(
        self, request: PublishRequest, meta: DocumentMetadata, replaces: str | None = None
    ) -> tuple[etree._Element, dict[str, bytes]]:
        """The signed ITI-41 SOAP envelope and its MTOM attachments by Content-ID."""
        cid = f"doc.{uuid.uuid4().hex}@pfi"
        ss = self._submission_set(request, meta)
        body = ebrim.provide_and_register(meta, ss, cid, replaces)
        attachments = {cid: request.cda}
        if self.identity_for(request).submission_signer is not None:
            attachments.update(self._add_submission_signature(body, request, meta, ss))
        url = self._settings.endpoints.provide_and_register
        return self._envelope(soap.ACTION_ITI41, url, body, request, meta), attachments

    def _add_submission_signature(self, body, request, meta, ss) -> dict[str, bytes]:
        started = time.perf_counter()
        now = _now(self._reactor)
        signer = self.identity_for(request).submission_signer
        data = signer.sign({meta.unique_id: request.cda}, ss.unique_id, now)
        self.timings.add("signing", time.perf_counter() - started)
        cid = f"sig.{uuid.uuid4().hex}@pfi"
        sig_meta = xades.signature_metadata(meta, data, now, ebrim.oid_from_uuid())
        ebrim.add_signature_entry(body, sig_meta, ss, cid)
        return {cid: data}

    def metadata(self, request: PublishRequest) -> DocumentMetadata:
        """Public access to the metadata step (tests, tooling)."""
        return self._metadata(request)

    async def _replace(self, request: PublishRequest, meta: DocumentMetadata) -> DmpResult:
        previous_id = request.replaced_document_id or meta.replaced_document_id
        if not previous_id:
            return permanent(
                "REPLACED_ID_MISSING",
                "replaced document unknown",
                "replace without TXA-13 nor CDA relatedDocument RPLC",
            )
        previous = await self._find_entry(request, meta, previous_id)
        return await self._provide(request, meta, previous.get("id"))

    async def _delete(self, request: PublishRequest, meta: DocumentMetadata) -> DmpResult:
        entries = await self._entries(request, meta, meta.unique_id)
        deleted = [e for e in entries if e.get("status") == ebrim.DMP_DELETED]
        if deleted and not _approved(entries):  # a retry after a lost answer
            return success(deleted[0].get("id"), "already deleted (earlier attempt succeeded)")
        entry = _first_approved(entries)
        body = ebrim.update_availability(
            self._submission_set(request, meta),
            entry.get("id"),
            entry.get("status") or ebrim.APPROVED,
            ebrim.DMP_DELETED,
        )
        url = self._settings.endpoints.update_document_set
        env = self._envelope(soap.ACTION_ITI57, url, body, request, meta)
        outcome = await self._soap_exchange(url, soap.ACTION_ITI57, env, "ITI-57", request)
        log.info("dmp.deleted", msg_id=request.message_control_id, status=outcome.status)
        return _result(outcome, entry.get("id"))

    async def _update_confidentiality(self, request, meta, entry) -> DmpResult:
        new_entry = copy.deepcopy(entry)
        previous_version = _version(entry)
        new_entry.set("id", "Document01")
        for node in ebrim.classifications(new_entry, ebrim.DE["confidentialityCode"]):
            if ebrim.slot_values(node, "codingScheme") == ["1.2.250.1.213.1.1.4.13"]:
                new_entry.remove(node)
        for code in meta.confidentiality_codes:
            if code.scheme == "1.2.250.1.213.1.1.4.13":
                ebrim.classification(new_entry, ebrim.DE["confidentialityCode"], "Document01", code)
        _strip_registry_attributes(new_entry)
        body = ebrim.update_metadata(self._submission_set(request, meta), new_entry, previous_version)
        url = self._settings.endpoints.update_document_set
        env = self._envelope(soap.ACTION_ITI57, url, body, request, meta)
        outcome = await self._soap_exchange(url, soap.ACTION_ITI57, env, "ITI-57", request)
        return _result(outcome, (outcome.slots.get("entryUUID") or [None])[0])

    async def _find_entry(self, request, meta, unique_id: str) -> etree._Element:
        """ITI-18 GetDocuments by uniqueId → the approved ExtrinsicObject (its id = entryUUID)."""
        return _first_approved(await self._entries(request, meta, unique_id))

    async def _entries(self, request, meta, unique_id: str) -> list[etree._Element]:
        """ITI-18 GetDocuments (LeafClass) by uniqueId: every registered version."""
        body = ebrim.stored_query(ebrim.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": [ebrim.query_list([unique_id])]})
        url = self._settings.endpoints.registry_stored_query
        env = self._envelope(soap.ACTION_ITI18, url, body, request, meta)
        outcome = await self._soap_exchange(url, soap.ACTION_ITI18, env, "ITI-18", request)
        return [o for o in outcome.objects if o.tag == ebrim.q(ebrim.RIM, "ExtrinsicObject")]

    # -- plumbing ------------------------------------------------------------------------

    def _submission_set(self, request: PublishRequest, meta: DocumentMetadata):
        person, org = request.sender, request.sender_organisation
        content = CONTENT_TYPES.get(request.patient_class or "", self._settings.content_type_code)
        return ebrim.SubmissionSetInfo(
            patient_id=meta.patient_id,
            source_oid=self._settings.source_oid,
            content_type=Code(code=content, scheme=CONTENT_TYPE_SCHEME, display=content),
            submission_time=_now(self._reactor).strftime("%Y%m%d%H%M%S"),
            author_person=_xcn(person) if person else (meta.authors[0].person if meta.authors else None),
            author_institution=(f"{org.name}^^^^^&1.2.250.1.71.4.2.2&ISO^{org.id_type}^^^{org.id}") if org else None,
        )

    def _envelope(self, action: str, url: str, body, request: PublishRequest, meta: DocumentMetadata) -> etree._Element:
        started = time.perf_counter()
        signer = self.identity_for(request).signer
        assertion = signer.assertion(self._vihf_context(request, meta), _now(self._reactor))
        self.timings.add("signing", time.perf_counter() - started)
        return soap.envelope(action, url, body, assertion)

    def _vihf_context(self, request: PublishRequest, meta: DocumentMetadata) -> VihfContext:
        settings = self._settings
        structure = self.identity_for(request).structure
        return VihfContext(
            structure_id=structure,
            activity_sector=settings.activity_sector,
            subject=_subject(request, meta),
            resource_id=meta.patient_id,
            secret_connection=request.flags.connexion_secrete,
        )

    async def _soap_exchange(self, url: str, action: str, env, label: str, request: PublishRequest):
        content_type = f'application/soap+xml; charset=UTF-8; action="{action}"'
        return await self._exchange(
            url, content_type, etree.tostring(env, xml_declaration=True, encoding="UTF-8"), label, request
        )

    async def _exchange(self, url: str, content_type: str, payload: bytes, label: str, request: PublishRequest):
        started = time.perf_counter()
        try:
            response = await self.identity_for(request).poster.post(url, content_type, payload)
        finally:
            self.timings.add("http", time.perf_counter() - started)
            self.timings.calls[label] = self.timings.calls.get(label, 0) + 1
        return _read_answer(response, label)


@dataclass
class StructureIdentity:
    """What acts for one structure: its VIHF signer, its mutual-TLS poster, its XAdES signer."""

    structure: str
    signer: VihfSigner
    poster: HttpsPoster
    submission_signer: xades.SubmissionSigner | None


def _key_pair(entry: OrgCertificate) -> tuple[bytes, bytes]:
    """The organisation certificate and key (PEM); ConfigurationError when unusable."""
    try:
        cert, key = entry.cert.read_bytes(), entry.key.read_bytes()
        VihfSigner(cert, key, VihfIdentity("", "", "", "", ""))  # parses both
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError([f"DMP channel organisation certificate/key: {exc}"]) from exc
    return cert, key


def _approved(entries: list[etree._Element]) -> list[etree._Element]:
    return [e for e in entries if e.get("status") == ebrim.APPROVED]


def _first_approved(entries: list[etree._Element]) -> etree._Element:
    approved = _approved(entries)
    if not approved:
        raise RegistryFailure(
            permanent(
                "UNKNOWN_DOCUMENT",
                "document unknown to the DMP",
                "no approved DMP entry with the uniqueId of the document to replace or delete",
            )
        )
    return approved[0]


def _read_answer(response, label: str) -> ebrim.RegistryOutcome:
    root = _soap_root(response)
    if root is None:
        if response.code >= 500:
            raise DmpTransientError(f"HTTP_{response.code}", f"{label}: HTTP {response.code}")
        raise DmpPermanentError(f"HTTP_{response.code}", f"{label}: HTTP {response.code} without a SOAP answer")
    fault = soap.parse_fault(root)
    if fault is not None:
        result = (permanent if fault.sender_side else transient)(
            fault.subcode or fault.code, fault.reason, f"{label}: SOAP fault {fault.code}"
        ).model_copy(update={"from_dmp": True})
        raise RegistryFailure(result)
    child = soap.body_child(root)
    if child is None:
        raise DmpPermanentError("EMPTY_ANSWER", f"{label}: empty SOAP body")
    outcome = ebrim.parse_response(child)
    if outcome.status == ebrim.FAILURE:
        raise RegistryFailure(_failure(outcome, label))
    return outcome


def _soap_root(response) -> etree._Element | None:
    body = response.body
    if response.content_type.lower().startswith("multipart/related"):
        try:
            body = soap.mtom_unpack(response.content_type, body).root
        except ValidationError:
            return None
    if not body.strip():
        return None
    try:
        return parse_untrusted(body).getroot()
    except ValidationError:
        return None


#: registry error codes that are worth retrying (the registry says it is busy / broken)
TRANSIENT_CODES = {
    "XDSRegistryBusy",
    "XDSRepositoryBusy",
    "XDSRegistryOutOfResources",
    "XDSRepositoryOutOfResources",
    "XDSRegistryNotAvailable",
}


def _failure(outcome: ebrim.RegistryOutcome, label: str) -> DmpResult:
    errors = [e for e in outcome.errors if e.severity != ebrim.SEVERITY_WARNING] or outcome.errors
    first = errors[0] if errors else ebrim.RegistryError("XDSRegistryError", "no error detail")
    detail = f"{label}: " + " | ".join(f"{e.code}: {e.context}" for e in errors)
    maker = transient if first.code in TRANSIENT_CODES else permanent
    return maker(first.code, first.context, detail).model_copy(update={"from_dmp": True})


def _result(outcome: ebrim.RegistryOutcome, entry_uuid: str | None) -> DmpResult:
    if outcome.status == ebrim.PARTIAL:
        detail = " | ".join(f"{e.code}: {e.context}" for e in outcome.errors)
        first = outcome.errors[0] if outcome.errors else None
        return DmpResult(
            status="partial",
            entry_uuid=entry_uuid,
            detail=detail,
            from_dmp=True,
            error_code=first.code if first else None,
            error_label=first.context if first else None,
        )
    return success(entry_uuid)


def _subject(request: PublishRequest, meta: DocumentMetadata) -> VihfSubject:
    """PRT SB person when given, else the CDA legal authenticator (the responsible person)."""
    if request.sender:
        person = request.sender
        roles = list(person.roles) or roles_from_code(meta.legal_authenticator_code)
        return VihfSubject(person.national_id, f"{person.family} {person.given}".strip(), roles)
    xcn = (meta.legal_authenticator or (meta.authors[0].person if meta.authors else "")) or ""
    parts = xcn.split("^")
    name = " ".join(p for p in parts[1:3] if p)
    return VihfSubject(parts[0], name, roles_from_code(meta.legal_authenticator_code))


def _xcn(person) -> str:
    return f"{person.national_id}^{person.family}^{person.given}^^^^^^&{person.id_oid}&ISO^D^^^IDNPS"


def _version(entry: etree._Element) -> str:
    info = entry.find(ebrim.q(ebrim.RIM, "VersionInfo"))
    return info.get("versionName", "1") if info is not None else "1"


def _strip_registry_attributes(entry: etree._Element) -> None:
    for name in ("status", "home"):
        entry.attrib.pop(name, None)
    info = entry.find(ebrim.q(ebrim.RIM, "VersionInfo"))
    if info is not None:
        entry.remove(info)
    for node in entry.iter(ebrim.q(ebrim.RIM, "Classification"), ebrim.q(ebrim.RIM, "ExternalIdentifier")):
        node.set("id", ebrim.new_uuid())
        for attr in ("classifiedObject", "registryObject"):
            if node.get(attr):
                node.set(attr, "Document01")


def _now(reactor) -> dt.datetime:
    return dt.datetime.fromtimestamp(reactor.seconds(), dt.timezone.utc)


__all__ = ["DmpClient", "DmpFlags", "Timings"]
