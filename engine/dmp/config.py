"""Settings of one DMP channel (`type: dmp` in channels/*.yaml)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field

from engine.tls import ca_problems, key_pair_problems


class DmpEndpoints(BaseModel):
    """One URL per transaction: the DMP splits repository (ITI-41) and registry (ITI-18/57)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provide_and_register: str
    registry_stored_query: str
    update_document_set: str

    @classmethod
    def from_base(cls, base: str) -> "DmpEndpoints":
        """The DMP layout: `<base>/repository` for ITI-41 and `<base>/registry` for the others."""
        base = base.rstrip("/")
        return cls(
            provide_and_register=f"{base}/repository",
            registry_stored_query=f"{base}/registry",
            update_document_set=f"{base}/registry",
        )


class LpsIdentity(BaseModel):
    """The software identity the DMP homologation knows (VIHF LPS_* attributes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "PFI-engine"
    version: str = "0.1.0"
    homologation_id: str
    lps_id: str | None = None


class OrgCertificate(BaseModel):
    """One structure's organisation (ORG) certificate: TLS client and VIHF signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert: Path
    key: Path
    #: the structure it stands for; read from the certificate (subject OU) when not given, and
    #: refused when it contradicts the certificate
    structure_id: str | None = None


class DmpChannelSettings(BaseModel):
    """Everything the DMP client needs; paths are resolved by the channel loader."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoints: DmpEndpoints
    #: single-structure form; `certificates` lists one certificate per structure
    client_cert: Path | None = None
    client_key: Path | None = None
    certificates: tuple[OrgCertificate, ...] = ()
    ca_bundle: Path
    #: VIHF Identifiant_Structure when the request carries no PRT SB organisation (default: the
    #: structure of the first certificate)
    structure_id: str | None = None
    #: VIHF Secteur_Activite, "SAxx^1.2.250.1.71.4.2.4"
    activity_sector: str = "SA07^1.2.250.1.71.4.2.4"
    lps: LpsIdentity
    auth_mode: Literal["INDIRECTE"] = "INDIRECTE"
    vihf_version: str = "3.0"
    #: OID of the PFI itself (submission-set sourceId)
    source_oid: str
    #: default submission-set contentTypeCode (JDV_J59) when PV1-2 gives none
    content_type_code: str = "07"
    connect_timeout: float = Field(default=10.0, gt=0)
    response_timeout: float = Field(default=60.0, gt=0)
    #: the DMP refuses `root^extension` document ids: reject them, or send them anyway
    unique_id_with_extension: Literal["reject", "caret"] = "reject"
    #: add the XAdES submission-set signature document (IHE DSG), see docs/dmp.md
    submission_signature: bool = False

    def organisation_certificates(self) -> list[OrgCertificate]:
        """Every configured certificate, the single-structure form first."""
        single = (
            [OrgCertificate(cert=self.client_cert, key=self.client_key, structure_id=self.structure_id)]
            if self.client_cert is not None and self.client_key is not None
            else []
        )
        return single + list(self.certificates)


def certificate_structure(cert: x509.Certificate) -> str | None:
    """The structure identifier an organisation certificate carries: its subject OU (the ANS
    IGC-Santé naming puts the structure identifier there; see docs/dmp.md for how sure this is)."""
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(units[0].value).strip() if units else None


class StructureCertificates(BaseModel):
    """The certificates by structure identifier, and the default structure."""

    model_config = ConfigDict(frozen=True)

    by_structure: dict[str, OrgCertificate]
    default: str
    not_after: dict[str, dt.datetime]


def resolve_certificates(settings: DmpChannelSettings) -> tuple[StructureCertificates | None, list[str]]:
    """Read every certificate, work out its structure; problems when one cannot be used."""
    entries = settings.organisation_certificates()
    if not entries:
        return None, ["DMP channel: no organisation certificate (client_cert/client_key or certificates)"]
    problems, found, not_after = [], {}, {}
    for entry in entries:
        structure, cert, entry_problems = _one_certificate(entry)
        problems += entry_problems
        if structure is None:
            continue
        if structure in found:
            problems.append(f"DMP channel: two certificates for structure {structure}")
        found[structure], not_after[structure] = entry, cert.not_valid_after_utc
    default = settings.structure_id or (next(iter(found)) if found else "")
    if found and default not in found:
        problems.append(f"DMP channel: structure_id {default} has no certificate (configured: {', '.join(found)})")
    if problems:
        return None, problems
    return StructureCertificates(by_structure=found, default=default, not_after=not_after), []


def _one_certificate(entry: OrgCertificate):
    problems = key_pair_problems(f"DMP channel certificate {entry.cert.name}", entry.cert, entry.key)
    if problems:
        return None, None, problems
    cert = x509.load_pem_x509_certificate(entry.cert.read_bytes())
    carried = certificate_structure(cert)
    if entry.structure_id and carried and carried != entry.structure_id:
        return (
            None,
            cert,
            [
                f"DMP channel: certificate {entry.cert} is the certificate of "
                f"structure {carried} (subject OU), not of {entry.structure_id}"
            ],
        )
    structure = entry.structure_id or carried
    if not structure:
        return (
            None,
            cert,
            [
                f"DMP channel: certificate {entry.cert} carries no structure "
                "identifier (no subject OU): give its structure_id"
            ],
        )
    return structure, cert, []


def check_settings(settings: DmpChannelSettings, now: dt.datetime | None) -> list[str]:
    """Problems an operator must fix before the channel can work (`pfi check`, start-up). With
    `now`, certificates outside their validity period too (`pfi check`; at start-up the engine
    starts anyway, logs it, and the DMP's refusal pauses the queue)."""
    problems = ca_problems("DMP channel", settings.ca_bundle)
    resolved, cert_problems = resolve_certificates(settings)
    problems += cert_problems
    for entry in settings.organisation_certificates() if resolved and now else []:
        cert = x509.load_pem_x509_certificate(entry.cert.read_bytes())
        if cert.not_valid_after_utc < now or cert.not_valid_before_utc > now:
            problems.append(
                f"DMP channel: organisation certificate {entry.cert} not valid now "
                f"(valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d})"
            )
    for name, url in settings.endpoints.model_dump().items():
        if not url.startswith("https://"):
            problems.append(f"DMP channel: endpoint {name} must be https://")
    return problems
