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
    now = dt.datetime.now(dt.timezone.utc)
    problems = material_problems(config, now)
    if problems:
        return _report(problems)
    for warning in expiry_warnings(config, now) + order_check_warnings(config):
        print(f"warning: {warning}")
    for warning in undeferred_dmp_warnings(config):
        print(f"warning: {warning}")
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
    from engine.cda.checker import kit_problems, needs_kit
    from engine.config.statistics import statistics_problems
    from engine.connectors.catalogue import reference_problems

    problems: list[str] = kit_problems(config.engine.cda_kit, config.root) if needs_kit(config) else []
    return problems + reference_problems(config, now) + statistics_problems(config.root)


def undeferred_dmp_warnings(config) -> list[str]:
    """Deliver steps that send to a DMP channel at once: the Ségur requirements (SC.DMP/ALI/PROG.02-03)
    ask for a deferred send that the creator or an operator can still withdraw (not an error: an
    integrator may decide otherwise, knowingly)."""
    from engine.config.routes import as_list

    dmp = {c.name for c in config.channels_of_type("dmp")}
    warnings = []

    def walk(route, steps) -> None:
        for step in steps:
            if step.deliver is not None and dmp & set(as_list(step.deliver.to)) and not step.deliver.delay:
                warnings.append(
                    f"route {route.name} step {step.label}: DMP sends are not deferred (delay 0); "
                    "SC.DMP/ALI/PROG.02-03 ask for a deferred, cancellable send (e.g. PFI_DMP_DELAY=5m)"
                )
            walk(route, step.on_success)
            walk(route, step.on_failure)

    for route in config.routes:
        walk(route, route.steps)
    return warnings


def expiry_warnings(config, now: dt.datetime) -> list[str]:
    """DMP organisation certificates within WARN_DAYS of expiry (not an error yet)."""
    from engine.dmp.config import resolve_certificates
    from engine.dmp.expiry import WARN_DAYS, days_left

    warnings = []
    for channel in config.channels_of_type("dmp"):
        structures, _ = resolve_certificates(channel.client_settings(config.root))
        for structure, not_after in structures.not_after.items() if structures else ():
            if days_left(not_after, now) <= WARN_DAYS:
                warnings.append(
                    f"channel {channel.name}: the certificate of structure {structure} "
                    f"expires in {days_left(not_after, now):.0f} days ({not_after:%Y-%m-%d})"
                )
    return warnings


def order_check_warnings(config) -> list[str]:
    """Routes forwarding orders (ORM, OMI) from a listener that does not check them against the
    teleradiology profile before its ACK (`tlr_orders`): a platform would refuse them later."""
    from engine.config.routes import as_list
    from engine.mllp.intake import TLR_ORDER_CODES

    listeners = {c.name: c for c in config.channels_of_type("mllp-in")}
    warnings = []
    for route in config.routes:
        orders = any(t.split("^")[0] in TLR_ORDER_CODES for t in as_list(route.match.type))
        if not orders or not any(step.deliver for step in route.steps):
            continue
        for name in as_list(route.match.channel) or sorted(listeners):
            if name in listeners and not listeners[name].tlr_orders:
                warnings.append(
                    f"route {route.name}: orders from channel {name} are forwarded without the "
                    "teleradiology profile check (tlr_orders: true on the channel: AE + ERR before the ACK)"
                )
    return warnings
