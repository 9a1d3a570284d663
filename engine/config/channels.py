"""Channel types: each declares its settings as a pydantic model, registered by short name.

The model is the documentation: field descriptions and defaults feed `pfi check` errors and the
generated reference in docs/channels.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.config.types import Duration, Size
from engine.hl7.charset import normalize_codec

CHANNEL_TYPES: dict[str, type["ChannelSettings"]] = {}


def channel_type(name: str):
    """Class decorator registering a settings model under its `type:` name."""

    def register(cls):
        CHANNEL_TYPES[name] = cls
        return cls

    return register


class ChannelSettings(BaseModel):
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
    model_config = ConfigDict(extra="forbid")
    certificate: str = Field(description="PEM file with this side's certificate")
    key: str = Field(description="PEM file with the private key")
    ca: str | None = Field(default=None, description="PEM bundle of CAs trusted for the peer")
    require_client_certificate: bool = False
    allowed_subjects: list[str] = Field(default=[], description="Accepted peer certificate CNs")


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


@channel_type("mllp-in")
class MllpInSettings(ChannelSettings, CharsetMixin):
    """An MLLP listener: a RIS, a teleradiology platform or a hospital system sends to us."""

    type: Literal["mllp-in"]
    host: str = Field(default="127.0.0.1", description="Address to listen on")
    port: int = Field(ge=0, le=65535, description="TCP port (0: any free port)")
    max_message_bytes: Size = Field(default=64 * 1024 * 1024, gt=0, description="Larger frames get AE 199")
    idle_timeout: Duration = Field(default=600.0, description="Close connections silent this long")
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


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    initial: Duration = Field(default=1.0, description="First retry delay")
    maximum: Duration = Field(default=300.0, description="Longest delay between retries")
    factor: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0, description="Random share added to each delay")
    max_attempts: int = Field(default=0, ge=0, description="0: retry for ever (AR/timeouts)")


ReplyAction = Literal["done", "retry", "dead"]


class ReplyPolicy(BaseModel):
    """What a destination's answer does to the delivery. Defaults follow the ANS volets (§c):
    AE = the message has errors, resending it unchanged cannot help (dead letter with the ERR
    text); AR = refused for a circumstantial reason (retry with backoff). CE/CR likewise."""

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


@channel_type("mllp-out")
class MllpOutSettings(ChannelSettings, CharsetMixin):
    """An MLLP destination: we send and wait for its ACK."""

    type: Literal["mllp-out"]
    host: str = Field(description="Destination host")
    port: int = Field(ge=1, le=65535)
    connect_timeout: Duration = 10.0
    ack_timeout: Duration = Field(default=30.0, description="Wait this long for the ACK")
    reply_policy: ReplyPolicy = ReplyPolicy()
    retry: RetrySettings = RetrySettings()
    queue_key: str = Field(default="PID-3.1", description="HL7 path of the FIFO key (order kept per key)")
    parallel_keys: int = Field(default=1, ge=1, le=64, description="Keys delivered concurrently")
    tls: TlsSettings | None = None
