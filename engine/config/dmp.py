"""Settings of the `dmp` channel type: the national DMP (or the local simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.channels import ChannelSettings, RetrySettings
from engine.dmp.config import DmpChannelSettings, DmpEndpoints, LpsIdentity, OrgCertificate


class CertificateSettings(BaseModel):
    """One structure's ORG certificate in `certificates:` of a DMP channel."""

    model_config = ConfigDict(extra="forbid")
    cert: str
    key: str
    structure_id: str | None = Field(
        default=None,
        description="Default: read from the certificate (subject OU); refused when it contradicts the certificate",
    )


class DmpChannel(ChannelSettings):
    """The national DMP (or the local simulator): IHE XDS.b ITI-41/18/57 with VIHF over mTLS."""

    type: Literal["dmp"]
    endpoint: str = Field(description="Base URL; the transactions' paths are appended")
    client_cert: str | None = Field(default=None, description="Single-structure form: the ORG certificate")
    client_key: str | None = None
    certificates: list[CertificateSettings] = Field(
        default_factory=list,
        description="One ORG certificate per structure, chosen by the request's PRT-8 organisation (docs/dmp.md)",
    )
    ca_bundle: str
    structure_id: str | None = Field(
        default=None, description="Structure of requests without PRT-8; default: the first certificate's"
    )
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
            raise ValueError("an organisation certificate is required: client_cert/client_key or certificates")
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
        return tuple((code, system) for code, _, system in (role.partition("^") for role in self.sender_roles))

    def client_settings(self, root: Path) -> DmpChannelSettings:
        resolve = lambda p: (root / p).resolve()  # noqa: E731
        optional = lambda p: resolve(p) if p is not None else None  # noqa: E731
        return DmpChannelSettings(
            endpoints=DmpEndpoints.from_base(self.endpoint),
            client_cert=optional(self.client_cert),
            client_key=optional(self.client_key),
            ca_bundle=resolve(self.ca_bundle),
            certificates=tuple(
                OrgCertificate(cert=resolve(c.cert), key=resolve(c.key), structure_id=c.structure_id)
                for c in self.certificates
            ),
            structure_id=self.structure_id,
            source_oid=self.source_oid,
            lps=self.lps,
            activity_sector=self.activity_sector,
            response_timeout=self.response_timeout,
        )
