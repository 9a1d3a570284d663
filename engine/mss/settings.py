"""Typed settings of an MSSanté channel: SMTP submission, IMAP application mailbox, headers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TlsClientSettings(BaseModel):
    """TLS material used when the engine connects to the MSSanté operator."""

    model_config = ConfigDict(extra="forbid")

    ca_bundle: Path | None = Field(None, description="PEM file of trusted CAs; None = system trust")
    client_certificate: Path | None = Field(
        None, description="PEM file with the client certificate AND its private key (IGC Santé)"
    )
    server_name: str | None = Field(None, description="name checked in the server certificate")


class SmtpSettings(BaseModel):
    """SMTP submission to the operator's server (MSSanté: port 587 STARTTLS or 465 implicit TLS)."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = 587
    security: Literal["starttls", "implicit"] = "starttls"
    username: str | None = None
    password: str | None = Field(None, repr=False)
    timeout_s: float = 60.0
    tls: TlsClientSettings = TlsClientSettings()

    @model_validator(mode="after")
    def _credentials_or_certificate(self) -> "SmtpSettings":
        if (self.username is None) != (self.password is None):
            raise ValueError("smtp username and password go together")
        if self.username is None and self.tls.client_certificate is None:
            raise ValueError("smtp needs credentials and/or a client certificate")
        return self


class ImapSettings(BaseModel):
    """IMAP4rev1 over implicit TLS (port 993) to the application mailbox."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = 993
    username: str
    password: str = Field(repr=False)
    mailbox: str = "INBOX"
    poll_interval_s: float = Field(60.0, gt=0)
    processed: Literal["flag", "move"] = "flag"
    processed_keyword: str = "$PfiProcessed"
    processed_folder: str = "PFI-Traites"
    quarantine_folder: str = "PFI-Quarantaine"
    timeout_s: float = 60.0
    tls: TlsClientSettings = TlsClientSettings()


class InboundLimits(BaseModel):
    """Bounds applied to every received mail before anything is parsed (zip bombs, huge mails)."""

    model_config = ConfigDict(extra="forbid")

    max_mail_bytes: int = 30 * 1024 * 1024
    max_zip_entries: int = 64
    max_entry_bytes: int = 20 * 1024 * 1024
    max_total_uncompressed_bytes: int = 64 * 1024 * 1024
    max_compression_ratio: float = 100.0


class LpsSettings(BaseModel):
    """What goes into MSH of the LPS MDM (PFI → RIS/DPI) and the mailbox → organisation table."""

    model_config = ConfigDict(extra="forbid")

    sending_application: str = "PFI"
    sending_facility: str = ""
    receiving_application: str = "RIS"
    receiving_facility: str = ""
    processing_id: Literal["P", "T", "D"] = "P"
    evn_operator: str = Field("", description="EVN-5 (XCN) of the PFI's technical operator")
    mailbox_organisations: dict[str, str] = Field(
        default_factory=dict,
        description="receiving mailbox address → PRT-8 XON of the RCT row, e.g. "
        '"Service d\'urologie^^^^^120456789^UF^^^3435"',
    )


class MssChannelSettings(BaseModel):
    """One MSSanté channel: the application mailbox (BAL applicative) of the establishment."""

    model_config = ConfigDict(extra="forbid")

    name: str = "mssante"
    mailbox_address: str = Field(description="the application mailbox, used as From")
    reply_to: str | None = Field(None, description="organisational mailbox used as Reply-To")
    message_id_domain: str | None = None
    statistics_headers: dict[str, str] = Field(
        default_factory=lambda: {"X-Mailer": "PFI engine"},
        description="extra headers set on every sent mail (statistics asked by the programme; "
        "configurable because the reference documents do not list them)",
    )
    patient_domain: str = "patient.mssante.fr"
    accepted_ins_oids: tuple[str, ...] = (
        "1.2.250.1.213.1.4.8",
        "1.2.250.1.213.1.4.10",
        "1.2.250.1.213.1.4.11",
    )
    enforce_flag_matrix: bool = False
    smtp: SmtpSettings
    imap: ImapSettings | None = None
    limits: InboundLimits = InboundLimits()
    lps: LpsSettings = LpsSettings()
    state_file: Path = Path("var/mss-processed.sqlite")

    @property
    def id_domain(self) -> str:
        """Right-hand side of generated Message-IDs."""
        return self.message_id_domain or self.mailbox_address.rpartition("@")[2]
