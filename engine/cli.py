"""The `pfi` command line: one module per sub-command under engine.commands.

Each module exposes `register(subparsers)` which adds its parser and sets `handler`, a function
taking the parsed arguments and returning the process exit code. Heavy imports stay inside the
handlers so that `pfi --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES: tuple[str, ...] = (
    "engine.commands.run",
    "engine.commands.send",
    "engine.commands.check",
    "engine.commands.tail",
    "engine.commands.queue",
    "engine.commands.routetest",
    "engine.commands.demo",
    "engine.commands.request",
    "engine.commands.validate",
    "engine.commands.sim",
    "engine.commands.mss",
    "engine.commands.patient",
    "engine.commands.db",
    "engine.commands.stats",
    "engine.console.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pfi", description="PFI imaging integration engine")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.commands.safe_output import SafeWriter

    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    sys.stdout = SafeWriter(stdout)  # journal fields come from senders: show controls, never obey them
    try:
        code = args.handler(args)
    finally:
        sys.stdout.flush()
        sys.stdout = stdout
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
