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


def add_journal_options(p) -> None:
    """--config, --data and --journal, shared by the commands that read or change the journal."""
    p.add_argument("--config", type=Path, default=Path("."), help="configuration directory")
    p.add_argument("--data", type=Path, default=None, help="data directory (journal, caches)")
    p.add_argument(
        "--journal",
        default=None,
        help="journal to use instead of the configuration's (`sqlite` or a postgresql:// URL)",
    )


def load_with_overrides(args):
    """The configuration with the command line's --journal / --node applied (None if invalid)."""
    config = load_or_report(args.config)
    if config is not None:
        if getattr(args, "journal", None):
            config.engine.journal = args.journal
        if getattr(args, "node", None):
            config.engine.node = args.node
    return config


def open_journal_connection(args, config):
    """The journal for operator commands (engine.journal.operator.OperatorJournal); None, with the
    reason printed, when there is no journal yet."""
    from engine.journal.operator import open_operator_journal

    journal = open_operator_journal(config.engine.journal, data_dir_for(args, config))
    if journal is None:
        print("journal is empty (no message received yet)")
    return journal
