"""A protocol-faithful DMP simulator: HTTPS with client certificates, ITI-41 / ITI-18 / ITI-57.

    sim = DmpSimulator(reactor, port=0, pki_dir=..., data_dir=None)
    sim.start(); sim.base_url  →  https://127.0.0.1:<port>/ (repository, registry)
    await sim.go_down(); sim.come_back(); sim.slow(2.0); sim.force_error("DMPClosed")
    await sim.stop()

It checks what it receives as strictly as the national service would (see engine.sim.dmp_checks) and
answers with RegistryResponse success/failure or SOAP faults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import serialization
from lxml import etree
from twisted.internet import defer, task
from twisted.web import resource, server

from engine.dmp import ebrim, soap
from engine.sim import dmp_checks as checks
from engine.dmp.ebrim import DE, RIM, SS, RegistryError, q
from engine.sim.dmp_checks import SoapFault
from engine.sim.dmp_store import DocumentStore, StoredEntry
from engine.sim.dmp_valuesets import ValueSets
from engine.errors import ValidationError
from engine.pki import TestPki
from engine.tls import server_options

log = structlog.get_logger("pfi.dmp.sim")
UPDATE_STATUSES = {ebrim.APPROVED, ebrim.DEPRECATED, ebrim.DMP_DELETED, ebrim.DMP_ARCHIVED}


@dataclass
class Answer:
    """HTTP answer of the simulator."""

    code: int
    content_type: str
    body: bytes


class DmpSimulator:
    """The simulated national DMP service (repository + registry)."""

    def __init__(
        self,
        reactor,
        port: int = 0,
        pki_dir: Path | None = None,
        data_dir: Path | None = None,
        valueset_dir: Path | None = None,
        known_patients: set[str] | None = None,
        interface: str = "127.0.0.1",
        require_submission_signature: bool = False,
        closed_patients: set[str] | None = None,
        no_dmp_patients: set[str] | None = None,
    ):
        if pki_dir is None:
            raise ValidationError("the DMP simulator needs a PKI directory (pfi.pki)")
        self._reactor = reactor
        self._port_number = port
        self._interface = interface
        self._pki = TestPki.in_directory(pki_dir)
        if data_dir:
            data_dir.mkdir(parents=True, exist_ok=True)
        self.store = DocumentStore(data_dir / "dmp-sim.sqlite" if data_dir else None)
        self._values = ValueSets(valueset_dir)
        self._known_patients = known_patients
        #: refuse ITI-41 submissions without the XAdES submission-set signature document
        self.require_submission_signature = require_submission_signature
        #: INS whose DMP is closed: submissions get the DMP code `DMPClosed` (ZAM example code)
        self.closed_patients = set(closed_patients or ())
        #: INS who have no DMP: submissions get XDSUnknownPatientId, the registry's "unknown patient"
        #: (the statistics count it as "no DMP", engine/stats/outcomes.py)
        self.no_dmp_patients = set(no_dmp_patients or ())
        self._listener = None
        self._down = False
        self._delay = 0.0
        self._forced: tuple[str, str] | None = None
        self._pending: set[defer.Deferred] = set()
        self.requests_seen = 0

    # -- lifecycle and knobs -------------------------------------------------------------

    def start(self) -> int:
        """Listen (TLS, client certificate required); return the port."""
        self._listener = self._reactor.listenSSL(
            self._port_number, server.Site(self._root()), self._tls_options(), interface=self._interface
        )
        self._port_number = self._listener.getHost().port
        self._down = False
        return self._port_number

    @property
    def port(self) -> int:
        """The listening port."""
        return self._port_number

    @property
    def base_url(self) -> str:
        """`https://host:port` (endpoints: /repository and /registry)."""
        return f"https://{self._interface}:{self._port_number}"

    async def stop(self) -> None:
        """Stop listening and close the store."""
        for pending in list(self._pending):
            pending.cancel()
        if self._listener is not None:
            await self._listener.stopListening()
            self._listener = None
        self.store.close()

    async def go_down(self) -> None:
        """Refuse new connections and drop the requests of open ones (outage)."""
        self._down = True
        if self._listener is not None:
            await self._listener.stopListening()
            self._listener = None

    def come_back(self) -> None:
        """End of the outage: listen again on the same port."""
        self.start()

    def slow(self, seconds: float) -> None:
        """Delay every answer by `seconds` (0 = normal)."""
        self._delay = seconds

    def force_error(self, code: str | None, context: str = "forced by the simulator") -> None:
        """Answer every submission with this registry error code (None = normal again)."""
        self._forced = (code, context) if code else None

    # -- plumbing ------------------------------------------------------------------------

    def _tls_options(self):
        return server_options(
            self._pki.server.cert.read_bytes(), self._pki.server.key.read_bytes(), self._pki.ca.cert.read_bytes()
        )

    def _root(self) -> resource.Resource:
        root = resource.Resource()
        root.putChild(b"repository", _Endpoint(self, {soap.ACTION_ITI41}))
        root.putChild(b"registry", _Endpoint(self, {soap.ACTION_ITI18, soap.ACTION_ITI57}))
        return root

    async def answer(self, content_type: str, body: bytes, peer_pem: bytes, actions: set[str]) -> Answer:
        """Process one POST (after the outage/slow knobs)."""
        self.requests_seen += 1
        if self._delay:
            delay = task.deferLater(self._reactor, self._delay, lambda: None)
            self._pending.add(delay)
            try:
                await delay
            finally:
                self._pending.discard(delay)
        try:
            return self._process(content_type, body, peer_pem, actions)
        except SoapFault as fault:
            log.info("dmp.sim.fault", subcode=fault.subcode)
            return _fault_answer(fault)

    def _process(self, content_type: str, body: bytes, peer_pem: bytes, actions: set[str]) -> Answer:
        root, parts = _unpack(content_type, body, soap.ACTION_ITI41 in actions)
        env = checks.parse_envelope(root)
        action, message_id = checks.check_addressing(env, actions)
        vihf = checks.check_vihf(env, peer_pem, self._now())
        body_node = soap.body_child(env)
        if body_node is None:
            raise SoapFault("soap:Sender", "empty SOAP Body")
        handler = {soap.ACTION_ITI41: self._iti41, soap.ACTION_ITI18: self._iti18, soap.ACTION_ITI57: self._iti57}[
            action
        ]
        response = handler(body_node, parts, checks.vihf_patient(vihf), peer_pem)
        reply = soap.envelope(soap.RESPONSE_ACTIONS[action], "", response, relates_to=message_id)
        data = etree.tostring(reply, xml_declaration=True, encoding="UTF-8")
        if action == soap.ACTION_ITI41:
            ctype, data = soap.mtom_pack(data, {}, soap.ACTION_ITI41_RESPONSE)
            return Answer(200, ctype, data)
        return Answer(200, f'application/soap+xml; charset=UTF-8; action="{soap.RESPONSE_ACTIONS[action]}"', data)

    def _now(self) -> float:
        return self._reactor.seconds()

    # -- ITI-41 --------------------------------------------------------------------------

    def _iti41(self, body: etree._Element, parts: dict[str, bytes], vihf_patient: str, peer_pem: bytes):
        if body.tag != q(ebrim.XDSB, "ProvideAndRegisterDocumentSetRequest"):
            raise SoapFault("soap:Sender", "Body is not xdsb:ProvideAndRegisterDocumentSetRequest")
        objects = body.find(f"{q(ebrim.LCM, 'SubmitObjectsRequest')}/{q(RIM, 'RegistryObjectList')}")
        if objects is None:
            return _failure([RegistryError(checks.META, "SubmitObjectsRequest/RegistryObjectList missing")])
        documents, errors = _documents(body, parts)
        entries = objects.findall(q(RIM, "ExtrinsicObject"))
        errors += _pairing_errors(entries, documents)
        pkg, ss_errors = checks.submission_set_errors(objects, self._values)
        errors += ss_errors
        for entry in entries:
            errors += checks.entry_errors(entry, self._values, documents.get(entry.get("id")))
        errors += self._patient_and_link_errors(objects, pkg, entries, vihf_patient)
        errors += checks.signature_errors(objects, pkg, entries, documents, peer_pem, self.require_submission_signature)
        errors += self._forced_errors()
        if errors:
            return _failure(errors)
        return self._register(objects, entries, documents)

    def _patient_and_link_errors(self, objects, pkg, entries, vihf_patient) -> list[RegistryError]:
        if pkg is None:
            return []
        ss_patient = ebrim.external_value(pkg, SS["patientId"])
        errors = checks.patient_errors(ss_patient, "submission set", self._known_patients)
        if ss_patient and ss_patient.split("^")[0] in self.closed_patients:
            errors.append(RegistryError("DMPClosed", "DMP fermé"))
        if ss_patient and ss_patient.split("^")[0] in self.no_dmp_patients:
            errors.append(RegistryError("XDSUnknownPatientId", "le patient n'a pas de DMP"))
        if ss_patient and ss_patient != vihf_patient:
            errors.append(
                RegistryError("XDSPatientIdDoesNotMatch", "VIHF resource-id differs from the submission set patientId")
            )
        for entry in entries:
            if ebrim.external_value(entry, DE["patientId"]) != ss_patient:
                errors.append(
                    RegistryError(
                        "XDSPatientIdDoesNotMatch", f"{entry.get('id')}: patientId differs from the submission set"
                    )
                )
            unique_id = ebrim.external_value(entry, DE["uniqueId"])
            if unique_id and self.store.by_unique_id(unique_id):
                errors.append(
                    RegistryError("XDSDuplicateUniqueIdInRegistry", f"uniqueId {unique_id} already registered")
                )
        errors += _membership_errors(objects, pkg, entries)
        errors += self._replace_errors(objects, ss_patient)
        return errors

    def _replace_errors(self, objects, ss_patient) -> list[RegistryError]:
        errors = []
        for assoc in _associations(objects, ebrim.RPLC):
            target = self.store.by_uuid(assoc.get("targetObject", ""))
            if target is None or target.status != ebrim.APPROVED:
                errors.append(
                    RegistryError(
                        "XDSUnresolvedReferenceException",
                        f"RPLC target {assoc.get('targetObject')} is not an approved document of the DMP",
                    )
                )
            elif target.patient_id != ss_patient:
                errors.append(RegistryError("XDSPatientIdDoesNotMatch", "RPLC target belongs to another patient"))
        return errors

    def _forced_errors(self) -> list[RegistryError]:
        if not self._forced:
            return []
        return [RegistryError(self._forced[0], self._forced[1])]

    def _register(self, objects, entries, documents) -> etree._Element:
        assigned = {}
        for entry in entries:
            symbolic = entry.get("id")
            entry_uuid = symbolic if symbolic.startswith("urn:uuid:") else ebrim.new_uuid()
            assigned[symbolic] = entry_uuid
            stored = _registered_copy(entry, entry_uuid, entry_uuid, 1)
            self.store.add(
                StoredEntry(
                    entry_uuid,
                    entry_uuid,
                    1,
                    ebrim.external_value(entry, DE["uniqueId"]),
                    ebrim.external_value(entry, DE["patientId"]),
                    ebrim.APPROVED,
                    etree.tostring(stored),
                    documents[symbolic],
                ),
                self._now(),
            )
        for assoc in _associations(objects, ebrim.RPLC):
            self.store.set_status(assoc.get("targetObject"), ebrim.DEPRECATED)
        self.store.commit()
        log.info("dmp.sim.registered", count=len(entries))
        return ebrim.registry_response(ebrim.SUCCESS, slots={"entryUUID": list(assigned.values())})

    # -- ITI-18 --------------------------------------------------------------------------

    def _iti18(self, body: etree._Element, parts, vihf_patient: str, peer_pem: bytes):
        if body.tag != q(ebrim.QUERY, "AdhocQueryRequest"):
            raise SoapFault("soap:Sender", "Body is not query:AdhocQueryRequest")
        query = body.find(q(RIM, "AdhocQuery"))
        option = body.find(q(ebrim.QUERY, "ResponseOption"))
        if query is None or option is None:
            return _query_failure([RegistryError("XDSRegistryError", "AdhocQuery or ResponseOption missing")])
        params = {s.get("name"): ebrim.slot_values(query, s.get("name")) for s in query.findall(q(RIM, "Slot"))}
        try:
            found = self._run_query(query.get("id"), params)
        except _QueryError as exc:
            return _query_failure([exc.error])
        visible = [e for e in found if e.patient_id == vihf_patient]
        return _query_success(visible, option.get("returnType", "LeafClass"))

    def _run_query(self, query_id: str, params: dict[str, list[str]]) -> list[StoredEntry]:
        if query_id == ebrim.GET_DOCUMENTS:
            unique_ids = _list_param(params.get("$XDSDocumentEntryUniqueId"))
            uuids = _list_param(params.get("$XDSDocumentEntryEntryUUID"))
            if bool(unique_ids) == bool(uuids):
                raise _QueryError(
                    "XDSStoredQueryParamNumber",
                    "GetDocuments needs exactly one of $XDSDocumentEntryUniqueId / $XDSDocumentEntryEntryUUID",
                )
            rows = [r for u in unique_ids for r in self.store.by_unique_id(u)]
            return rows + [r for u in uuids if (r := self.store.by_uuid(u))]
        if query_id == ebrim.FIND_DOCUMENTS:
            patient = (params.get("$XDSDocumentEntryPatientId") or [""])[0].strip("'")
            statuses = _list_param(params.get("$XDSDocumentEntryStatus"))
            if not patient or not statuses:
                raise _QueryError(
                    "XDSStoredQueryParamNumber",
                    "FindDocuments needs $XDSDocumentEntryPatientId and $XDSDocumentEntryStatus",
                )
            return self.store.for_patient(patient, statuses)
        raise _QueryError("XDSUnknownStoredQuery", f"stored query {query_id} not supported")

    # -- ITI-57 --------------------------------------------------------------------------

    def _iti57(self, body: etree._Element, parts, vihf_patient: str, peer_pem: bytes):
        if body.tag != q(ebrim.LCM, "SubmitObjectsRequest"):
            raise SoapFault("soap:Sender", "Body is not lcm:SubmitObjectsRequest")
        objects = body.find(q(RIM, "RegistryObjectList"))
        if objects is None:
            return _failure([RegistryError(checks.META, "RegistryObjectList missing")])
        pkg, errors = checks.submission_set_errors(objects, self._values)
        ss_patient = ebrim.external_value(pkg, SS["patientId"]) if pkg is not None else None
        if ss_patient and ss_patient != vihf_patient:
            errors.append(
                RegistryError("XDSPatientIdDoesNotMatch", "VIHF resource-id differs from the submission set patientId")
            )
        errors += self._forced_errors()
        if errors:
            return _failure(errors)
        return self._apply_updates(objects, ss_patient)

    def _apply_updates(self, objects, ss_patient) -> etree._Element:
        """Status updates and DocumentEntry updates, all or nothing."""
        status_updates = _associations(objects, ebrim.UPDATE_STATUS)
        entries = objects.findall(q(RIM, "ExtrinsicObject"))
        if not status_updates and not entries:
            return _failure(
                [RegistryError("XDSMetadataUpdateOperationError", "no UpdateAvailabilityStatus nor DocumentEntry")]
            )
        errors = [e for a in status_updates for e in self._status_update(a, ss_patient)]
        assigned = []
        for entry in entries:
            new_errors, entry_uuid = self._metadata_update(objects, entry, ss_patient)
            errors += new_errors
            assigned += [entry_uuid] if entry_uuid else []
        if errors:
            self.store.rollback()
            return _failure(errors)
        self.store.commit()
        return ebrim.registry_response(ebrim.SUCCESS, slots={"entryUUID": assigned} if assigned else None)

    def _status_update(self, assoc, ss_patient) -> list[RegistryError]:
        target = self.store.by_uuid(assoc.get("targetObject", ""))
        original = (ebrim.slot_values(assoc, "OriginalStatus") or [""])[0]
        new = (ebrim.slot_values(assoc, "NewStatus") or [""])[0]
        if target is None:
            return [
                RegistryError(
                    "XDSUnresolvedReferenceException", f"document {assoc.get('targetObject')} unknown to the DMP"
                )
            ]
        if target.patient_id != ss_patient:
            return [RegistryError("XDSPatientIdDoesNotMatch", "document of another patient")]
        if original != target.status:
            return [
                RegistryError(
                    "XDSMetadataUpdateError", f"OriginalStatus {original} but the document is {target.status}"
                )
            ]
        if new not in UPDATE_STATUSES or new == original:
            return [RegistryError("XDSMetadataUpdateOperationError", f"NewStatus {new} refused")]
        self.store.set_status(target.entry_uuid, new)
        return []

    def _metadata_update(self, objects, entry, ss_patient):
        errors = checks.entry_errors(entry, self._values, None)
        lid = entry.get("lid", "")
        current = self.store.latest_of(lid) if lid else None
        member = [a for a in _associations(objects, ebrim.HAS_MEMBER) if a.get("targetObject") == entry.get("id")]
        previous = (ebrim.slot_values(member[0], "PreviousVersion") or [""])[0] if member else ""
        if current is None:
            return errors + [RegistryError("XDSMetadataUpdateError", f"no document with logicalId {lid!r}")], None
        if current.status != ebrim.APPROVED or previous != str(current.version):
            return errors + [
                RegistryError(
                    "XDSMetadataVersionError",
                    f"PreviousVersion {previous!r} is not the approved version {current.version}",
                )
            ], None
        if current.patient_id != ss_patient:
            errors.append(RegistryError("XDSPatientIdDoesNotMatch", "document of another patient"))
        if errors:
            return errors, None
        entry_uuid = ebrim.new_uuid()
        stored = _registered_copy(entry, entry_uuid, lid, current.version + 1)
        self.store.add(
            StoredEntry(
                entry_uuid,
                lid,
                current.version + 1,
                current.unique_id,
                current.patient_id,
                ebrim.APPROVED,
                etree.tostring(stored),
                current.document,
            ),
            self._now(),
        )
        self.store.set_status(current.entry_uuid, ebrim.DEPRECATED)
        return [], entry_uuid


# -- helpers -------------------------------------------------------------------------------


class _QueryError(Exception):
    def __init__(self, code: str, context: str):
        self.error = RegistryError(code, context)
        super().__init__(context)


class _Endpoint(resource.Resource):
    isLeaf = True

    def __init__(self, simulator: DmpSimulator, actions: set[str]):
        super().__init__()
        self._sim = simulator
        self._actions = actions

    def render_POST(self, request):  # noqa: N802 (Twisted API)
        if self._sim._down:  # outage: drop the request without an answer
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        content_type = request.getHeader("content-type") or ""
        body = request.content.read()
        peer = _peer_pem(request)
        d = defer.Deferred.fromCoroutine(self._sim.answer(content_type, body, peer, self._actions))
        d.addCallback(lambda answer: _write(request, answer))
        d.addErrback(lambda failure: _internal_error(request, failure))
        return server.NOT_DONE_YET

    def render_GET(self, request):  # noqa: N802
        request.setResponseCode(405)
        return b"POST only\n"


def _peer_pem(request) -> bytes:
    cert = request.channel.transport.getPeerCertificate()
    return cert.to_cryptography().public_bytes(serialization.Encoding.PEM)


def _write(request, answer: Answer) -> None:
    if request.finished or request._disconnected:
        return
    request.setResponseCode(answer.code)
    request.setHeader(b"content-type", answer.content_type.encode())
    request.write(answer.body)
    request.finish()


def _internal_error(request, failure) -> None:
    if failure.check(defer.CancelledError):  # simulator stopped while a slow answer waited
        request.channel.transport.abortConnection()
        return
    log.error("dmp.sim.internal_error", error=failure.getErrorMessage())
    fault = SoapFault("soap:Receiver", "internal error of the simulator", code="Receiver")
    _write(request, _fault_answer(fault))


def _fault_answer(fault: SoapFault) -> Answer:
    body = etree.tostring(soap.fault(fault.code, fault.subcode, fault.reason), xml_declaration=True, encoding="UTF-8")
    status = 500 if fault.code == "Receiver" else 400
    return Answer(status, "application/soap+xml; charset=UTF-8", body)


def _unpack(content_type: str, body: bytes, mtom_required: bool) -> tuple[bytes, dict]:
    media, _ = soap.content_type_params(content_type)
    if media == "multipart/related":
        try:
            message = soap.mtom_unpack(content_type, body)
        except ValidationError as exc:
            raise SoapFault("soap:Sender", f"invalid MTOM package: {exc}") from exc
        return message.root, message.parts
    if mtom_required:
        raise SoapFault("soap:Sender", "ITI-41 must be an MTOM/XOP multipart/related message")
    if media != "application/soap+xml":
        raise SoapFault("soap:Sender", f"Content-Type {media or '(none)'} is not SOAP 1.2")
    return body, {}


def _documents(body, parts: dict[str, bytes]) -> tuple[dict[str, bytes], list[RegistryError]]:
    documents, errors = {}, []
    for node in body.findall(q(ebrim.XDSB, "Document")):
        include = node.find(q(ebrim.XOP, "Include"))
        href = include.get("href", "") if include is not None else ""
        cid = href[4:] if href.startswith("cid:") else ""
        if include is None:
            errors.append(
                RegistryError(
                    "XDSRepositoryError", f"Document {node.get('id')}: no xop:Include (MTOM attachment expected)"
                )
            )
        elif cid not in parts:
            errors.append(
                RegistryError(
                    "XDSMissingDocument", f"Document {node.get('id')}: xop:Include {href} references no MIME part"
                )
            )
        else:
            documents[node.get("id")] = parts[cid]
    return documents, errors


def _pairing_errors(entries, documents) -> list[RegistryError]:
    ids = {e.get("id") for e in entries}
    errors = [RegistryError("XDSMissingDocument", f"DocumentEntry {i} has no document") for i in ids - documents.keys()]
    errors += [
        RegistryError("XDSMissingDocumentMetadata", f"Document {i} has no DocumentEntry")
        for i in documents.keys() - ids
    ]
    if not entries:
        errors.append(RegistryError(checks.META, "no DocumentEntry in the submission"))
    return errors


def _associations(objects, kind: str) -> list[etree._Element]:
    return [a for a in objects.findall(q(RIM, "Association")) if a.get("associationType") == kind]


def _membership_errors(objects, pkg, entries) -> list[RegistryError]:
    members = {
        a.get("targetObject"): a
        for a in _associations(objects, ebrim.HAS_MEMBER)
        if a.get("sourceObject") == pkg.get("id")
    }
    errors = []
    for entry in entries:
        assoc = members.get(entry.get("id"))
        if assoc is None:
            errors.append(RegistryError(checks.META, f"no HasMember from the submission set to {entry.get('id')}"))
        elif ebrim.slot_values(assoc, "SubmissionSetStatus") != ["Original"]:
            errors.append(RegistryError(checks.META, "HasMember without SubmissionSetStatus Original"))
    return errors


def _registered_copy(entry, entry_uuid: str, lid: str, version: int) -> etree._Element:
    """The ExtrinsicObject as the registry stores and returns it."""
    stored = etree.fromstring(etree.tostring(entry))
    symbolic = stored.get("id")
    stored.set("id", entry_uuid)
    stored.set("lid", lid)
    stored.set("status", ebrim.APPROVED)
    for node in stored.iter(q(RIM, "VersionInfo")):
        stored.remove(node)
    stored.insert(0, etree.Element(q(RIM, "VersionInfo"), versionName=str(version)))
    for node in stored.iter(q(RIM, "Classification"), q(RIM, "ExternalIdentifier")):
        for attr in ("classifiedObject", "registryObject"):
            if node.get(attr) == symbolic:
                node.set(attr, entry_uuid)
    return stored


def _list_param(values: list[str] | None) -> list[str]:
    items = []
    for value in values or []:
        items += [v.strip().strip("'") for v in value.strip().strip("()").split(",") if v.strip()]
    return items


def _failure(errors: list[RegistryError]) -> etree._Element:
    return ebrim.registry_response(ebrim.FAILURE, errors)


def _query_failure(errors: list[RegistryError]) -> etree._Element:
    return ebrim.registry_response(ebrim.FAILURE, errors, tag="AdhocQueryResponse", ns=ebrim.QUERY)


def _query_success(entries: list[StoredEntry], return_type: str) -> etree._Element:
    response = ebrim.registry_response(ebrim.SUCCESS, tag="AdhocQueryResponse", ns=ebrim.QUERY)
    objects = etree.SubElement(response, q(RIM, "RegistryObjectList"))
    for entry in entries:
        if return_type == "ObjectRef":
            etree.SubElement(objects, q(RIM, "ObjectRef"), id=entry.entry_uuid)
            continue
        node = etree.fromstring(entry.metadata)
        node.set("status", entry.status)
        objects.append(node)
    return response
