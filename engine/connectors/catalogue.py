"""The one catalogue of channel types: for each `type:` of channels/*.yaml, its settings model,
its direction, the connector that sends to it, the services it runs and the reference checks
`pfi check` (and the engine's start) apply to it. Adding a channel type = one entry here and
its settings model in engine/config/kinds.py (a test holds the two lists equal)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.config.channels import ChannelSettings
from engine.config.kinds import SETTINGS_MODELS
from engine.connectors.base import Connector
from engine.errors import ConfigurationError


@dataclass
class BuildContext:
    """What connectors and services of a channel may use, given by the engine."""

    config: Any  # engine.config.load.Config
    reactor: Any
    clock: Any = None
    consent: Any = None  # the patient registry (DMP consent gates)
    enqueue: Any = None  # async (channel, payload, delivery): queue a connector-made message (ZAM^Z02)
    journal: Any = None
    connectors: dict = field(default_factory=dict)  # the destination connectors already built

    @property
    def root(self) -> Path:
        return self.config.root


ConnectorFactory = Callable[[Any, BuildContext], Connector]
ServicesFactory = Callable[[Any, BuildContext], list]
#: (config, settings, now) -> problems; `now` None at the engine's start: expiry is not checked then
Checks = Callable[[Any, Any, dt.datetime | None], list[str]]


def _no_services(settings, ctx: BuildContext) -> list:
    return []


def _no_checks(config, settings, now: dt.datetime | None) -> list[str]:
    return []


@dataclass(frozen=True)
class ChannelKind:
    name: str
    connector: ConnectorFactory | None = None  # None: not a destination
    services: ServicesFactory = _no_services  # long-running parts besides the connector
    checks: Checks = _no_checks  # problems of files and references, settings already valid

    @property
    def settings(self) -> type[ChannelSettings]:
        return SETTINGS_MODELS[self.name]

    @property
    def direction(self) -> str:
        return self.settings.direction


# -- the kinds -------------------------------------------------------------------------------


def _mllp_out(settings, ctx: BuildContext) -> Connector:
    from engine.connectors.mllp import MllpDestination

    return MllpDestination(ctx.reactor, settings)


def _dmp(settings, ctx: BuildContext) -> Connector:
    from engine.connectors.dmp import DmpDeliveryConnector

    return DmpDeliveryConnector(ctx.reactor, settings, ctx.root, ctx.consent)


def _dmp_checks(config, settings, now: dt.datetime | None) -> list[str]:
    from engine.dmp.config import check_settings

    return [f"channel {settings.name}: {p}" for p in check_settings(settings.client_settings(config.root), now)]


def _mssante(settings, ctx: BuildContext) -> Connector:
    from engine.connectors.mssante import MssDeliveryConnector

    return MssDeliveryConnector(ctx.reactor, settings, ctx.root, ctx.enqueue, ctx.clock)


def _mssante_services(settings, ctx: BuildContext) -> list:
    """The mailbox poller feeding the RIS, when IMAP is configured."""
    from engine.connectors.mssante import MailPoller

    if settings.imap is None:
        return []
    ris = ctx.config.channels[settings.deliver_to]
    return [MailPoller(ctx.reactor, settings, ctx.root, ris, ctx.connectors[settings.name], ctx.clock, ctx.journal)]


def _mssante_checks(config, settings, now: dt.datetime | None) -> list[str]:
    from engine.connectors.mssante import channel_problems

    return channel_problems(config, settings)


CATALOGUE: dict[str, ChannelKind] = {
    # mllp-in listeners are built by the engine with its intake (engine/service.py)
    "mllp-in": ChannelKind("mllp-in"),
    "mllp-out": ChannelKind("mllp-out", connector=_mllp_out),
    "dmp": ChannelKind("dmp", connector=_dmp, checks=_dmp_checks),
    "mssante": ChannelKind("mssante", connector=_mssante, services=_mssante_services, checks=_mssante_checks),
}


def kind_of(settings) -> ChannelKind:
    return CATALOGUE[settings.type]


def reference_problems(config, now: dt.datetime | None) -> list[str]:
    """Every channel's own checks (files it reads, channels it names)."""
    from engine.tls import tls_settings_problems

    problems: list[str] = []
    for channel in config.channels.values():
        tls = getattr(channel, "tls", None)
        if tls is not None:
            problems += tls_settings_problems(channel.name, tls)
        problems += kind_of(channel).checks(config, channel, now)
    return problems


def build_connectors(ctx: BuildContext) -> dict[str, Connector]:
    """One connector per destination channel. The channels' references are checked first (the
    same checks as `pfi check`, except certificate expiry, which must not stop the engine)."""
    problems = [
        p for c in ctx.config.channels.values() if kind_of(c).connector for p in kind_of(c).checks(ctx.config, c, None)
    ]
    if problems:
        raise ConfigurationError(problems)
    for channel in ctx.config.channels.values():
        factory = kind_of(channel).connector
        if factory is not None:
            ctx.connectors[channel.name] = factory(channel, ctx)
    return ctx.connectors


def build_services(ctx: BuildContext) -> list:
    """The channels' long-running services (mail pollers), after build_connectors."""
    return [s for c in ctx.config.channels.values() for s in kind_of(c).services(c, ctx)]


def retry_settings(config) -> dict:
    return {c.name: c.retry for c in config.channels.values() if hasattr(c, "retry")}
