"""Settings of one DMP channel (`type: dmp` in channels/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
