"""`pfi check`: validate channels/ and routes.yaml in one pass, then the files the channels use
(TLS material, DMP organisation certificates); exit 1 on any error."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("check", help="validate the configuration (file:line:col errors)")
    p.add_argument("--config", type=Path, default=Path("."), help="configuration directory")
    p.set_defaults(handler=check)


def check(args) -> int:
    from engine.config.load import load_config
    from engine.errors import ConfigurationError

    try:
        config = load_config(args.config)
    except ConfigurationError as exc:
        return _report(exc.problems)
    problems = material_problems(config, dt.datetime.now(dt.timezone.utc))
    if problems:
        return _report(problems)
    print(f"configuration OK: {len(config.channels)} channel(s), {len(config.routes)} route(s)")
    return 0


def _report(problems: list[str]) -> int:
    for problem in problems:
        print(problem)
    print(f"{len(problems)} error(s)", file=sys.stderr)
    return 1


def material_problems(config, now: dt.datetime) -> list[str]:
    """Problems of the files the channels read: certificates, keys, CA bundles (the engine reads
    TLS paths relative to its working directory, so they are checked from there too)."""
    from engine.dmp.config import check_settings
    from engine.tls import tls_settings_problems

    problems: list[str] = []
    for channel in config.channels.values():
        tls = getattr(channel, "tls", None)
        if tls is not None:
            problems += tls_settings_problems(channel.name, tls)
        if channel.type == "dmp":
            problems += [f"channel {channel.name}: {p}"
                         for p in check_settings(channel.client_settings(config.root), now)]
    return problems
