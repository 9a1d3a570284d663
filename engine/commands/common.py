"""Helpers shared by the command modules."""

from __future__ import annotations

import sys
from pathlib import Path


def load_or_report(config_dir: Path):
    """Load the configuration, or print every problem as file:line:col and return None."""
    from engine.config.load import load_config
    from engine.errors import ConfigurationError

    try:
        return load_config(config_dir)
    except ConfigurationError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} configuration error(s); not starting", file=sys.stderr)
        return None


def data_dir_for(args, config) -> Path:
    return args.data or (args.config / config.engine.data_dir)
