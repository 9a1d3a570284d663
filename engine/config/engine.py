"""Engine-wide settings (pfi.yaml at the top of the configuration directory; all optional)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config.channels import TlsSettings
from engine.config.types import Size


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    enabled: bool = True


class ConsoleSettings(BaseModel):
    """The operator web console (docs/console.md): a separate process `pfi run` starts beside the
    engine when pfi.yaml has a `console:` section (or `pfi run --console`)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="Listen address; anything but loopback needs `tls`")
    port: int = Field(default=8080, ge=0, le=65535)
    tls: TlsSettings | None = Field(default=None, description="certificate and key of the console (HTTPS)")
    session_minutes: float = Field(default=30.0, gt=0, description="Idle time after which a session ends")
    session_max_hours: float = Field(default=12.0, gt=0, description="Age at which a session ends anyway")
    status_page_url: str = Field(
        default="https://esante.gouv.fr/",
        description="ANS services status page linked from the Statistics page (SC.STATPP.01)",
    )
    metrics_url: str = Field(
        default="", description="The engine's /metrics for live figures (default: from `metrics:`)"
    )


class EngineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: str = Field(default="var", description="Journal and caches, relative to the config dir")
    journal: str = Field(default="sqlite", description="`sqlite` or a postgresql:// URL")
    node: str = Field(default="", description="Node name in the journal and metrics (default: hostname)")
    lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long a node's sends in flight stay "
        "its own without a heartbeat (PostgreSQL journal) before another node takes them",
    )
    retention_days: float = Field(
        default=0.0, ge=0, description="Purge finished messages older than this (0: keep everything)"
    )
    max_buffered_bytes: Size = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="Bytes of unfinished "
        "inbound frames held across all connections; beyond, growing "
        "connections are not read until frames complete",
    )
    cda_kit: str = Field(
        default="",
        description="ANS TestContenuCDA 3.0 kit directory for `validate: cda` "
        "and document channels (default: $PFI_CDA_KIT, else ../shared/corpus/cda/TestContenuCDA-3-0)",
    )
    cda_processes: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Worker processes that run CDA validation beside the engine, off its GIL, so "
        "that validating reports never slows intake (0: in the engine's own threads)",
    )
    routing_process: bool = Field(
        default=False,
        description="Route and deliver in a child process beside intake, with its own GIL, so "
        "that a burst of sends never slows the ACKs (SQLite journal; PostgreSQL sites add nodes "
        "instead). docs/journal.md, 'The routing process'",
    )
    log_level: str = "info"
    metrics: MetricsSettings = MetricsSettings()
    console: ConsoleSettings | None = None

    @model_validator(mode="after")
    def _routing_process_needs_sqlite(self):
        if problem := self.routing_process_problem():
            raise ValueError(problem)
        return self

    def routing_process_problem(self) -> str | None:
        """Why `routing_process` cannot be used with this journal (checked again by the engine:
        `pfi run --journal` changes the journal after the settings were read)."""
        if self.routing_process and self.journal != "sqlite":
            return "routing_process: only with the SQLite journal (on PostgreSQL, add nodes)"
        return None
