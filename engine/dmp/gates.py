"""Checks made before any DMP send: qualified INS, patient not opposed to DMP feeding."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

from engine.dmp.model import DmpResult, PublishRequest, permanent

INS_OIDS = frozenset(
    {
        "1.2.250.1.213.1.4.8",  # INS-NIR
        "1.2.250.1.213.1.4.9",  # INS-NIA
        "1.2.250.1.213.1.4.10",  # INS-NIR test
        "1.2.250.1.213.1.4.11",  # INS-NIR demonstration (INS-NIA test in the CDA rules)
    }
)


class ConsentRegistry(Protocol):
    """Where the patient's DMP feeding opposition is known (PAM.fr ZFA-9 later)."""

    def is_opposed(self, ins: str) -> bool:
        """True when the patient is opposed to DMP feeding."""

    def identity_status(self, ins: str, ipp: str = "", ipp_domain: str = "") -> str | None:
        """The identity status (VALI, PROV…, WITHDRAWN, OTHER_INS) the PAM.fr feed gave this
        patient (by IPP, else INS); None if unknown."""


class NotOpposedRegistry:
    """Default until the PAM.fr registry exists: nobody is known to be opposed."""

    def is_opposed(self, ins: str) -> bool:
        """Always False."""
        return False

    def identity_status(self, ins: str, ipp: str = "", ipp_domain: str = "") -> str | None:
        return None


#: registry answers that are not PID-32 statuses, as the hold reason says them
_REGISTRY_SAYS = {
    "WITHDRAWN": "its INS was withdrawn by an A47 downgrade",
    "OTHER_INS": "the patient of this IPP has another INS",
}


class GateDecision(BaseModel):
    """Whether the request may go to the DMP; when not, a code and a reason for the ZAM ERR-5."""

    allowed: bool
    reason: str = ""
    code: str | None = None

    def as_result(self) -> DmpResult:
        """A refused gate as a permanent DmpResult (journal state + ZAM^Z01 ERR-5)."""
        return permanent(self.code or "GATE_REFUSED", self.reason, "blocked before any DMP send")


def check_publishable(request: PublishRequest, consent_lookup: ConsentRegistry | None = None) -> GateDecision:
    """Apply the DMP pre-conditions; the first failing rule gives the reason."""
    registry = consent_lookup or NotOpposedRegistry()
    if not request.ins.strip():
        return GateDecision(allowed=False, code="INS_MISSING", reason="no INS: the DMP requires the patient's INS")
    if request.ins_oid not in INS_OIDS:
        return GateDecision(
            allowed=False, code="INS_OID_UNKNOWN", reason=f"identifier OID {request.ins_oid} is not an INS OID"
        )
    lookup = getattr(registry, "identity_status", None)  # a consent-only registry knows no identity
    known = lookup(request.ins, ipp=request.ipp, ipp_domain=request.ipp_domain) if lookup else None
    qualified = known == "VALI" if known else request.ins_qualified  # the registry first, PID-32 else
    if not qualified:
        source = f"the PAM.fr registry says {_REGISTRY_SAYS.get(known, known)}" if known else "PID-32 is not VALI"
        return GateDecision(allowed=False, code="INS_NOT_QUALIFIED", reason=f"identity not qualified ({source})")
    if registry.is_opposed(request.ins):
        return GateDecision(allowed=False, code="PATIENT_OPPOSED", reason="the patient is opposed to DMP feeding")
    return GateDecision(allowed=True)
