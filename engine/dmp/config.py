"""Settings of one DMP channel (`type: dmp` in channels/*.yaml)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field


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
        return cls(provide_and_register=f"{base}/repository",
                   registry_stored_query=f"{base}/registry",
                   update_document_set=f"{base}/registry")


class LpsIdentity(BaseModel):
    """The software identity the DMP homologation knows (VIHF LPS_* attributes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "PFI-engine"
    version: str = "0.1.0"
    homologation_id: str
    lps_id: str | None = None


class DmpChannelSettings(BaseModel):
    """Everything the DMP client needs; paths are resolved by the channel loader."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoints: DmpEndpoints
    client_cert: Path
    client_key: Path
    ca_bundle: Path
    #: VIHF Identifiant_Structure when the request carries no PRT SB organisation
    structure_id: str
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


def check_settings(settings: DmpChannelSettings, now: dt.datetime) -> list[str]:
    """Problems an operator must fix before the channel can work (`pfi check`, start-up)."""
    problems = []
    for label, path in (("client_cert", settings.client_cert), ("client_key", settings.client_key),
                        ("ca_bundle", settings.ca_bundle)):
        if not path.is_file():
            problems.append(f"DMP channel: {label} {path} is not a readable file")
    if problems:
        return problems
    try:
        cert = x509.load_pem_x509_certificate(settings.client_cert.read_bytes())
        key = serialization.load_pem_private_key(settings.client_key.read_bytes(), password=None)
    except ValueError as exc:
        return [f"DMP channel: organisation certificate or key unreadable: {exc}"]
    if cert.not_valid_after_utc < now or cert.not_valid_before_utc > now:
        problems.append(f"DMP channel: organisation certificate not valid now (valid "
                        f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        problems.append("DMP channel: client_key does not match client_cert")
    for name, url in settings.endpoints.model_dump().items():
        if not url.startswith("https://"):
            problems.append(f"DMP channel: endpoint {name} must be https://")
    return problems
