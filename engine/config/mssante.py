"""Settings of the `mssante` channel type: an MSSanté application mailbox."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from engine.config.channels import ChannelSettings, RetrySettings
from engine.mss.settings import MssChannelSettings


class MssanteChannel(ChannelSettings, MssChannelSettings):
    """An MSSanté application mailbox: SMTP submission, optional IMAP polling."""

    #: a destination, and the source of the LPS MDMs its mailbox receives (`pfi replay` routes them)
    direction: ClassVar[str] = "both"

    type: Literal["mssante"]
    retry: RetrySettings = RetrySettings()
    zam_channel: str | None = Field(None, description="mllp-out channel to the creator for ZAM^Z02")
    acceptance_is_receipt: bool = Field(
        False, description="SMTP 250 counts as the Z02 receipt (operators that send no DSN)"
    )
    deliver_to: str | None = Field(None, description="mllp-out channel (RIS) receiving the LPS MDMs")
    source_oid: str = Field("1.2.250.1.213.1.1.1", description="XDS sourceId of the XDM submission set")
    content_type_code: str = Field("19", description="J01 content type when PV1-2 gives none")
    dmp_invisible_notice: str = Field(
        "Information : ce document a été déposé dans le DMP du patient sans être visible par lui ; il ne doit "
        "pas lui être communiqué avant une consultation d'annonce.",
        description="Added to the professional mail of a report the DMP accepted invisibly to the patient",
    )
    wait_for_dmp_when_invisible: bool = Field(
        False,
        description="Reports for the DMP and invisible to the patient are mailed only by the "
        "`deliver: {to: <this channel>}` in the DMP delivery's on_success (with the notice above); "
        "the shipped routes have that step",
    )

    def mss_settings(self, root: Path) -> MssChannelSettings:
        """The connector's own settings; relative file paths are relative to the config root."""
        data = self.model_dump(include=set(MssChannelSettings.model_fields))
        data["state_file"] = _resolve(root, self.state_file)
        for part in ("smtp", "imap"):
            tls = (data.get(part) or {}).get("tls")
            for key in ("ca_bundle", "client_certificate"):
                if tls and tls.get(key):
                    tls[key] = _resolve(root, tls[key])
        return MssChannelSettings.model_validate(data)


def _resolve(root: Path, path) -> Path:
    return (Path(root) / Path(path)).resolve()
