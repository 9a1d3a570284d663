"""The MLLP channel types' settings and what every channel type shares (engine/config/kinds.py lists them all).

The model is the documentation: field descriptions and defaults feed `pfi check` errors and the
generated reference in docs/channels.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.types import Duration, Size
from engine.hl7.charset import normalize_codec


class ChannelSettings(BaseModel):
    #: "in": a source of messages for the routes; "out": a `deliver` destination; "both"
    direction: ClassVar[str] = "out"
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique channel name; defaults to the file name")
    type: str = Field(description="Channel type")
    description: str = ""


class AcceptSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    versions: list[str] = Field(
        default=["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"],
        description="HL7 versions (MSH-12.1) accepted; others get AE 203",
    )
    message_types: list[str] = Field(
        default=[], description="MSH-9 types accepted, `ORU^R01` or `ADT` (any trigger); empty: all"
    )


class TlsSettings(BaseModel):
    """TLS of an MLLP link; policy (TLS >= 1.2, ECDHE/DHE + AEAD) in engine/tls.py, docs/tls.md."""

    model_config = ConfigDict(extra="forbid")
    certificate: str = Field(description="PEM file with this side's certificate")
    key: str = Field(description="PEM file with the private key")
    ca: str | None = Field(
        default=None,
        description="PEM bundle of CAs trusted for the peer; on a "
        "listener it also makes the client certificate mandatory",
    )
    require_client_certificate: bool | None = Field(
        default=None,
        description="Listener: follows `ca` (a CA means mutual TLS); `false` with a "
        "`ca` and `true` without one are refused",
    )
    allowed_subjects: list[str] = Field(default=[], description="Accepted peer certificate CNs")

    def server_problems(self) -> list[str]:
        """Half configurations of a listener: each would silently accept more than it says."""
        if self.ca and self.require_client_certificate is False:
            return [
                "tls: `ca` with `require_client_certificate: false` would accept clients "
                "without a certificate; remove one of them"
            ]
        if not self.ca and (self.require_client_certificate or self.allowed_subjects):
            return [
                "tls: `require_client_certificate` / `allowed_subjects` need `ca` (the CA "
                "that signs the client certificates)"
            ]
        return []

    def client_problems(self) -> list[str]:
        """A sender never checks client certificates: these settings would be ignored."""
        if self.require_client_certificate is not None or self.allowed_subjects:
            return [
                "tls: `require_client_certificate` / `allowed_subjects` are listener "
                "settings; a sender does not use them"
            ]
        return []


class CharsetMixin(BaseModel):
    charset: str = Field(default="UTF-8", description="Charset used when MSH-18 is empty or unknown")

    @field_validator("charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        try:
            normalize_codec(value)
        except LookupError as exc:
            raise ValueError(f"unknown charset {value!r}") from exc
        return value


class MllpInSettings(ChannelSettings, CharsetMixin):
    """An MLLP listener: a RIS, a teleradiology platform or a hospital system sends to us."""

    direction: ClassVar[str] = "in"

    type: Literal["mllp-in"]
    host: str = Field(default="127.0.0.1", description="Address to listen on")
    port: int = Field(ge=0, le=65535, description="TCP port (0: any free port)")
    max_message_bytes: Size = Field(default=64 * 1024 * 1024, gt=0, description="Larger frames get AE")
    idle_timeout: Duration = Field(default=600.0, description="Close connections silent this long")
    frame_timeout: Duration = Field(
        default=120.0,
        description="A frame must end this long after its start block, or its first "
        "bytes are journaled as rejected and the connection closed (0: no deadline)",
    )
    max_connections: int = Field(default=64, ge=1, description="Connections beyond this are closed at once")
    rejected_quota: Size = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Rejected frames are kept "
        "whole while this channel's rejected bytes of the last hour stay under this",
    )
    rejected_head: Size = Field(
        default=64 * 1024,
        gt=0,
        description="Beyond the quota, the bytes kept of each rejected frame (plus its size and SHA-256)",
    )
    listen_backlog: int = Field(
        default=1024, ge=1, description="Pending connections the OS queues (a reconnect storm after a network cut)"
    )
    duplicate_window: Duration = Field(
        default=7 * 86400.0, description="Same sender + MSH-10 within this window is a duplicate"
    )
    local_app: str = Field(default="PFI", description="MSH-3 of our ACKs when MSH-5 was empty")
    accept: AcceptSettings = AcceptSettings()
    tls: TlsSettings | None = None
    ack_mode: Literal["receipt", "document-request"] = Field(
        default="receipt",
        description="`receipt`: AA once stored, document checks happen later in routing; "
        "`document-request`: CI-SIS ORU/MDM (MSH-21 CISIS_CDA_HL7_V*) are parsed and checked "
        "against their CDA before the ACK (AE + ERR when they fail; costs ms per message)",
    )
    tlr_orders: bool = Field(
        default=False,
        description="Check teleradiology orders (ORM^O01, OMI^O23) against "
        "their profile before the ACK: HL7 2.5.1, MSH-21 1.0^CISIS_TLR_HL7_V2, INS in "
        "PID-3, PID-32 filled (AE + ERR naming the field otherwise)",
    )
    check_cda: Literal["none", "structure", "full"] = Field(
        default="none",
        description="With ack_mode document-request, also validate each CDA before the ACK: "
        "`structure` = the CDA XSD (what makes a report unusable for anyone), `full` = XSD + the "
        "kit's Schematrons (structuration minimale, CR d'imagerie) + the DMP pre-checks",
    )

    @model_validator(mode="after")
    def _whole_tls(self):
        if self.tls is not None and self.tls.server_problems():
            raise ValueError(self.tls.server_problems()[0])
        return self


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    initial: Duration = Field(default=1.0, description="First retry delay")
    maximum: Duration = Field(default=300.0, description="Longest delay between retries")
    factor: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0, description="Random share added to each delay")
    max_attempts: int = Field(default=0, ge=0, description="0: retry for ever (AR/timeouts)")


#: what an answer does to a delivery; the one definition (the sender's outcome uses it too)
ReplyAction = Literal["done", "retry", "dead"]
#: what a connector may ask of the queue: a reply action, or pause the destination (refused
#: credentials), or hold the delivery until the patient's identity is qualified
OutcomeAction = Literal["done", "retry", "dead", "pause", "wait-identity"]


class ReplyPolicy(BaseModel):
    """What a destination's ACK code does to the delivery. Per the CI-SIS volets: AE = the message
    has errors (sending it again unchanged is pointless: dead letter, an operator fixes and
    replays); AR = refused for a circumstantial reason, may be sent again later (retry)."""

    model_config = ConfigDict(extra="forbid")
    AA: ReplyAction = "done"
    CA: ReplyAction = "done"
    AE: ReplyAction = "dead"
    CE: ReplyAction = "dead"
    AR: ReplyAction = "retry"
    CR: ReplyAction = "retry"
    timeout: ReplyAction = "retry"
    mismatch: ReplyAction = "retry"
    garbage: ReplyAction = "retry"


class MllpOutSettings(ChannelSettings, CharsetMixin):
    """An MLLP destination: we send and wait for its ACK."""

    type: Literal["mllp-out"]
    host: str = Field(description="Destination host")
    port: int = Field(ge=1, le=65535)
    connect_timeout: Duration = 10.0
    ack_timeout: Duration = Field(default=30.0, description="Wait this long for the ACK")
    reply_policy: ReplyPolicy = ReplyPolicy()
    expect_ack: bool = Field(
        default=True,
        description="false for a destination that sends no ACK (the reference "
        "DRIMbox): sent = written, flushed and closed, one connection per message",
    )
    ipp_repetition: int = Field(
        default=0,
        ge=0,
        le=9,
        description="Put the patient's IPP (PID-3 repetition of "
        "type PI) at this repetition of PID-3 (the reference DRIMbox reads repetition 2); "
        "0: leave PID-3 as received",
    )
    content_check: Literal["none", "drimbox"] = Field(
        default="none",
        description="`drimbox`: before sending, check the report carries what a DRIMbox needs "
        "(Study Instance UID, accession number, modality; the IPP with ipp_repetition); otherwise the send is "
        "dead-lettered with the reason (DRIMBOX_DATA_MISSING) and logged, never sent",
    )
    retry: RetrySettings = RetrySettings()
    queue_key: str = Field(default="PID-3.1", description="HL7 path of the FIFO key (order kept per key)")
    parallel_keys: int = Field(default=1, ge=1, le=64, description="Keys delivered concurrently")
    tls: TlsSettings | None = None

    @model_validator(mode="after")
    def _client_tls(self):
        if self.tls is not None and self.tls.client_problems():
            raise ValueError(self.tls.client_problems()[0])
        return self
