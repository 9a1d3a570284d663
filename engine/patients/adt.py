"""Read PAM.fr 2.11 ADT messages (HL7 2.5) into an `AdtUpdate`: identity, INS status, DMP consent.

Supported events: A01, A04, A05, A08, A14, A28, A31, Z99 (identity + ZFA consent), A40 (merge:
MRG-1 is the IPP that disappears into the PID-3 IPP), A47 (identifier change: INS withdrawal or
IPP change) and the movements (A02, A03, A06...: identity only). Every problem is an `AdtError` (a ValidationError)
carrying an HL7Error ready for the ERR segment of a NACK; nothing else escapes `read_adt`.
Sources: ../shared/docs/specs/hl7v2-volets.md §a.4 (PID-3, INS, PID-32) and §f (ZFA).
"""

from __future__ import annotations

import re
from datetime import datetime

from engine.docrequest.errors import HL7Error
from engine.docrequest.identity import INS_OIDS, LEGACY_INSC_OIDS, nir_key_valid
from engine.docrequest.model import InsKind
from engine.errors import ValidationError
from engine.hl7.message import Message, Segment
from engine.patients.model import (
    AdtUpdate,
    ConsentValue,
    Consultation,
    DmpStatus,
    Feeding,
    InsId,
    PatientId,
)

# A14 (pending admission) and Z99 (update of a movement) carry PID and ZFA like A01/A05 (PAM.fr §f).
UPDATE_EVENTS = frozenset({"A01", "A04", "A05", "A08", "A14", "A28", "A31", "Z99"})
MERGE_EVENTS = frozenset({"A40"})
# A47 (change of the identifier list): PAM.fr signals a downgrade of a qualified identity with the
# INS in MRG-1 and no INS in PID-3: the registry withdraws the patient's INS (no longer qualified)
# and remembers it; an IPP in MRG-1 is a change of IPP (the old one keeps leading to the patient).
IDENTIFIER_CHANGE_EVENTS = frozenset({"A47"})
# Movements (IHE PAM ITI-31: transfer, discharge, class change, cancellations, leaves of absence,
# pending events, movement updates) carry the patient's current identity in PID but no ZFA
# (PAM.fr §f): the registry takes the identity (PID-3, PID-32: an identity qualified during the
# stay releases the DMP sends waiting for it) and leaves the consent alone.
MOVEMENT_EVENTS = frozenset(
    {
        "A02",
        "A03",
        "A06",
        "A07",
        "A11",
        "A12",
        "A13",
        "A16",
        "A21",
        "A22",
        "A25",
        "A26",
        "A27",
        "A32",
        "A33",
        "A38",
        "A52",
        "A53",
        "A54",
        "A55",
    }
)
SUPPORTED_EVENTS = UPDATE_EVENTS | MERGE_EVENTS | IDENTIFIER_CHANGE_EVENTS | MOVEMENT_EVENTS
# PID-32 first repetition (French table 0445). VIDE/PROV/VALI are PAM.fr 2.11's statuses; RECUP and
# QUAL are the other two statuses of the national identity referential, accepted from GAMs that
# send them, and treated like any status other than VALI (the INS is not qualified).
IDENTITY_STATUSES = frozenset({"VIDE", "PROV", "VALI", "RECUP", "QUAL"})
IDENTITY_ATTRIBUTES = frozenset(
    {
        "DOUB",
        "DESA",
        "DPOT",
        "DOUA",
        "COLP",
        "COLV",
        "FILI",
        "CACH",
        "ANOM",
        "IDVER",
        "RECD",
        "IDRA",
        "USUR",
        "HOMD",
        "HOMA",
        "INVA",
        "FICT",
        "DOUT",
    }
)
ADT_ERROR_LABELS = {
    "INS_KEY_INVALID": "INS control key is wrong",
    "IPP_MISSING": "No PI identifier (IPP) in the identifier list",
    "MERGE_SAME_IPP": "MRG-1 and PID-3 carry the same IPP",
}
_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?")


class AdtError(ValidationError):
    """An ADT message the registry cannot apply; `.error` is the HL7Error for the NACK."""

    def __init__(self, error: HL7Error):
        self.error = error
        super().__init__(str(error))

    @classmethod
    def of(cls, code: int, message: str, location: str | None = None) -> "AdtError":
        """A table-0357 error (101 missing, 102 data type, 103 table value, 201 event...)."""
        return cls(HL7Error(code=code, message=message, location=location))

    @classmethod
    def app(cls, app_code: str, message: str, location: str | None = None) -> "AdtError":
        """A 207 application error with a local ERR-5 code (system 99PFI)."""
        return cls(
            HL7Error(
                code=207, message=message, location=location, app_code=app_code, app_label=ADT_ERROR_LABELS[app_code]
            )
        )


def read_adt(msg: Message) -> AdtUpdate:
    """Return what `msg` says about its patient, or raise AdtError (never anything else)."""
    try:
        return _AdtReader(msg).build()
    except AdtError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, UnicodeError) as exc:
        # Safety net: a defect of this reader must still give a coded NACK, not a traceback.
        raise AdtError.of(199, f"ADT message could not be interpreted ({type(exc).__name__})") from exc


def parse_ts(text: str) -> datetime | None:
    """HL7 TS/DTM → naive datetime (missing parts = start of period); '' → None; ValueError if bad.

    A time-zone offset is dropped: PAM.fr senders stamp local time, and comparing consent dates
    from one GAM only needs them to be consistent with each other.
    """
    text = text.strip()
    if not text:
        return None
    match = _TS.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not an HL7 timestamp")
    parts = [int(p) if p else default for p, default in zip(match.groups()[:6], (0, 1, 1, 0, 0, 0))]
    return datetime(*parts)


class _AdtReader:
    """One pass over one ADT message."""

    def __init__(self, msg: Message):
        self.msg = msg
        self.warnings: list[HL7Error] = []

    # -- helpers --------------------------------------------------------------------------
    def one(self, name: str, required: bool = True) -> Segment | None:
        found = self.msg.segments(name)
        if not found and required:
            raise AdtError.of(100, f"required segment {name} is missing", name)
        return found[0] if found else None

    def leaf(self, text: str, comp: int = 1, sub: int | None = None) -> str:
        enc = self.msg.encoding
        parts = text.split(enc.component)
        value = parts[comp - 1] if comp <= len(parts) else ""
        if sub is not None:
            subs = value.split(enc.subcomponent) if enc.subcomponent else [value]
            value = subs[sub - 1] if sub <= len(subs) else ""
        value = self.msg.unescape(value).strip()
        # HL7 explicit null ("") carries no value for this registry: same as empty.
        return "" if value == '""' else value

    def value(self, seg: Segment, field: int, comp: int = 1) -> str:
        return self.leaf(seg.repetitions(field)[0], comp)

    def timestamp(self, seg: Segment, field: int) -> datetime | None:
        try:
            return parse_ts(self.value(seg, field))
        except ValueError as exc:
            raise AdtError.of(102, f"{seg.name}-{field}: {exc}", f"{seg.name}^1^{field}") from exc

    def warn(self, code: int, message: str, location: str) -> None:
        self.warnings.append(HL7Error(code=code, message=message, location=location, severity="W"))

    # -- build ----------------------------------------------------------------------------
    def build(self) -> AdtUpdate:
        msh = self.one("MSH")
        event = self.event(msh)
        pid = self.one("PID")
        identifiers = self.identifiers(pid, "PID^1^3")
        status, attributes = self.identity_status(pid)
        update = AdtUpdate(
            event=event,
            control_id=self.value(msh, 10),
            sending_application=self.value(msh, 3),
            sending_facility=self.value(msh, 4),
            message_time=self.timestamp(msh, 7),
            ipp=self.ipp(identifiers, "PID^1^3"),
            identity_status=status,
            identity_attributes=attributes,
        )
        update.ins = self.ins(pid, status)
        if event in MERGE_EVENTS:
            update.merged_ipp = self.merged_ipp(update.ipp)
        if event in IDENTIFIER_CHANGE_EVENTS:
            self.identifier_change(update)
        if event in MOVEMENT_EVENTS:
            if self.one("ZFA", required=False) is not None:
                self.warn(
                    207,
                    f"ZFA in ADT^{event} ignored: PAM.fr carries the DMP consent in A01, A04, "
                    "A05, A14, A28, A31 and Z99 only",
                    "ZFA^1",
                )
        else:
            self.consent(update)
        update.warnings = self.warnings
        return update

    def event(self, msh: Segment) -> str:
        code, trigger = self.value(msh, 9, 1), self.value(msh, 9, 2)
        if code != "ADT":
            raise AdtError.of(200, f"message type {code or '(empty)'} is not ADT", "MSH^1^9")
        if trigger not in SUPPORTED_EVENTS:
            raise AdtError.of(
                201,
                f"event ADT^{trigger or '(empty)'} is not supported by the "
                "patient registry (A01, A04, A05, A08, A14, A28, A31, Z99, A40, A47, "
                "and the movements A02, A03...)",
                "MSH^1^9",
            )
        return trigger

    # -- identity -------------------------------------------------------------------------
    def identifiers(self, seg: Segment, location: str) -> list[tuple[PatientId, str]]:
        """(identifier, CX-5 type) for each non-empty repetition."""
        found = []
        for rep in seg.repetitions(3 if seg.name == "PID" else 1):
            value = self.leaf(rep, 1)
            if value:
                ident = PatientId(value=value, authority=self.leaf(rep, 4, 1), oid=self.leaf(rep, 4, 2))
                found.append((ident, self.leaf(rep, 5)))
        if not found:
            raise AdtError.of(101, "the patient identifier list is empty", location)
        return found

    def ipp(self, identifiers: list[tuple[PatientId, str]], location: str) -> PatientId:
        ipps = [ident for ident, id_type in identifiers if id_type == "PI"]
        if not ipps:
            raise AdtError.app("IPP_MISSING", "no identifier typed PI (IPP) in the list", location)
        return ipps[0]

    def identity_status(self, pid: Segment) -> tuple[str, list[str]]:
        values = [self.leaf(rep).upper() for rep in pid.repetitions(32)]
        values = [v for v in values if v]
        if not values:
            self.warn(101, "PID-32 identity status is empty (mandatory since the INS)", "PID^1^32")
            return "", []
        if values[0] not in IDENTITY_STATUSES:
            raise AdtError.of(
                103, f"PID-32 identity status {values[0]!r} is not in table 0445 (VIDE, PROV, VALI...)", "PID^1^32"
            )
        for attribute in values[1:]:
            if attribute not in IDENTITY_ATTRIBUTES:
                self.warn(103, f"PID-32 identity attribute {attribute!r} unknown: kept", "PID^1^32")
        return values[0], values[1:]

    def ins(self, pid: Segment, status: str) -> InsId | None:
        """The INS of PID-3 (NIR preferred over NIA), checked; None when absent or unusable."""
        candidates = []
        for ident, id_type in self.identifiers(pid, "PID^1^3"):
            if ident.oid in INS_OIDS:
                candidates.append(ident)
            elif id_type == "INS" or ident.oid in LEGACY_INSC_OIDS:
                self.warn(103, "INS-typed identifier with an OID that is not an INS register: ignored", "PID^1^3")
        if not candidates:
            return None
        chosen = min(candidates, key=lambda i: INS_OIDS[i.oid] is InsKind.NIA)
        ins = InsId(**chosen.model_dump(), kind=INS_OIDS[chosen.oid].value, key_valid=nir_key_valid(chosen.value))
        if not ins.key_valid:
            if status == "VALI":
                raise AdtError.app(
                    "INS_KEY_INVALID", "the INS matricule in PID-3 has a wrong control key or format", "PID^1^3"
                )
            self.warn(207, "INS with a wrong key in an unqualified identity: ignored", "PID^1^3")
            return None
        if status != "VALI":
            self.warn(
                207,
                f"identity status {status or '(empty)'} is not VALI: the INS is kept "
                "for consent lookup only, marked not qualified",
                "PID^1^32",
            )
        return ins

    def merged_ipp(self, surviving: PatientId) -> PatientId:
        mrg = self.one("MRG")
        old = self.ipp(self.identifiers(mrg, "MRG^1^1"), "MRG^1^1")
        if old.value == surviving.value and old.domain == surviving.domain:
            raise AdtError.app("MERGE_SAME_IPP", "MRG-1 names the surviving IPP itself", "MRG^1^1")
        return old

    def identifier_change(self, update: AdtUpdate) -> None:
        """A47: MRG-1 names the identifier PID-3 replaces. An INS there is withdrawn (PAM.fr's
        downgrade of a qualified identity: PID-3 carries none, or another one); an IPP there is
        an IPP change, recorded like a merge so that the old IPP leads to the patient."""
        mrg = self.one("MRG")
        for ident, id_type in self.identifiers(mrg, "MRG^1^1"):
            if ident.oid in INS_OIDS and (update.ins is None or update.ins.value != ident.value):
                update.withdraw_ins = True
                update.withdrawn_ins = ident.value
            elif id_type == "PI" and (ident.value, ident.domain) != (update.ipp.value, update.ipp.domain):
                update.merged_ipp = ident

    # -- ZFA consent ----------------------------------------------------------------------
    def consent(self, update: AdtUpdate) -> None:
        zfa = self.one("ZFA", required=False)
        if zfa is None:
            return
        status = self.coded(zfa, 1, DmpStatus, "ACTIF, FERME or INEXISTANT")
        update.dmp_status = DmpStatus(status) if status else None
        update.dmp_status_date = self.timestamp(zfa, 2)
        update.feeding = self.consent_value(zfa, 9, Feeding, "INO, IO or NA", update.message_time)
        update.consultation = self.consent_value(zfa, 11, Consultation, "IC, INC or NA", update.message_time)

    def coded(self, zfa: Segment, field: int, table, allowed: str) -> str:
        code = self.value(zfa, field, 1).upper()
        if code and code not in {member.value for member in table}:
            raise AdtError.of(103, f"ZFA-{field} {code!r} is not {allowed}", f"ZFA^1^{field}")
        return code

    def consent_value(
        self, zfa: Segment, field: int, table, allowed: str, fallback: datetime | None
    ) -> ConsentValue | None:
        """ZFA-9/10 or ZFA-11/12; None when the code is empty (nothing said, nothing changes)."""
        code = self.coded(zfa, field, table, allowed)
        if not code:
            return None
        date = self.timestamp(zfa, field + 1)
        if date is None and code != "NA":
            self.warn(101, f"ZFA-{field + 1} collection date is empty: the message date is used", f"ZFA^1^{field + 1}")
            return ConsentValue(code=code, date=fallback, date_from_message=True)
        return ConsentValue(code=code, date=date)
