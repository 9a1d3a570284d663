"""`pfi check`: validate channels/ and routes.yaml in one pass; exit 1 on any error."""

from __future__ import annotations

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
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} error(s)", file=sys.stderr)
        return 1
    print(f"configuration OK: {len(config.channels)} channel(s), {len(config.routes)} route(s)")
    return 0
