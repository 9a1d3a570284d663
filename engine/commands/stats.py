"""`pfi stats`: the programme statistics (SC.STAT), per month (Paris time), site and document type.

    pfi stats [--from 2026-01] [--to 2026-11] [--site FINESS] [--format table|csv|json] [-o FILE]
    pfi stats rebuild          # recompute the counters from the journal (same rules, same numbers)

Columns and their rules: docs/statistics.md; an integrator's names and order: statistics.yaml.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def register(sub) -> None:
    from engine.commands.common import add_journal_options

    p = sub.add_parser("stats", help="programme statistics (SC.STAT): monthly indicators per site and document type")
    add_journal_options(p)
    p.add_argument(
        "action",
        nargs="?",
        choices=("show", "rebuild"),
        default="show",
        help="show (default) or rebuild: recompute the counters from the journal",
    )
    p.add_argument("--from", dest="first", metavar="YYYY-MM", help="first month (default: January of last year)")
    p.add_argument("--to", dest="last", metavar="YYYY-MM", help="last month (default: this month)")
    p.add_argument("--site", help="one site: FINESS:300017985, or the number alone")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of the terminal")
    p.add_argument(
        "--mapping",
        type=Path,
        default=None,
        help="column names and order, site aliases, RIS figures (default: statistics.yaml "
        "in the configuration directory, when present)",
    )
    p.set_defaults(handler=run)


def _fail(message: str) -> int:
    print(f"pfi stats: {message}", file=sys.stderr)
    return 2


def months(args, now: float) -> tuple[str, str]:
    """(first, last) from --from/--to and their defaults; ValueError saying which is wrong."""
    from engine.stats.months import month_of, parse_month

    this_month = month_of(now)
    last = _month_option("--to", args.last) if args.last else this_month
    first = _month_option("--from", args.first) if args.first else f"{int(this_month[:4]) - 1}-01"
    if first > last:
        raise ValueError(f"--from {first} is after --to {last}")
    return first, parse_month(last)


def _month_option(name: str, value: str) -> str:
    from engine.stats.months import parse_month

    try:
        return parse_month(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def run(args) -> int:
    from engine.commands.common import load_with_overrides, open_journal_connection

    try:
        first, last = months(args, time.time())
    except ValueError as exc:
        return _fail(str(exc))
    config = load_with_overrides(args)
    if config is None:
        return 2
    settings = _settings(args)
    if settings is None:
        return 2
    if args.output is not None and not args.output.parent.is_dir():
        return _fail(f"-o {args.output}: directory {args.output.parent} does not exist")
    conn = open_journal_connection(args, config)
    if conn is None:
        return 0
    try:
        if args.action == "rebuild":
            return _rebuild(conn, config)
        return _show(conn, args, first, last, settings)
    finally:
        conn.close()


def _settings(args):
    from engine.config.statistics import FILE_NAME, StatsSettingsError, load_settings
    from engine.stats.report import StatsSettings

    path = args.mapping or args.config / FILE_NAME
    if args.mapping is None and not path.exists():
        return StatsSettings()
    try:
        return load_settings(path)
    except StatsSettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _show(conn, args, first: str, last: str, settings) -> int:
    from engine.journal.stats import statistics

    table = statistics(conn.read, first, last, args.site, settings)
    text = {"csv": table.as_csv, "json": table.as_json}.get(args.format, table.as_text)()
    if args.output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0
    try:
        args.output.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        return _fail(f"-o {args.output}: {exc.strerror}")
    print(f"{len(table.rows)} row(s) from {first} to {last} written to {args.output}")
    return 0


def _rebuild(conn, config) -> int:
    from engine.journal.stats import rebuild

    started = time.monotonic()
    done = rebuild(conn.conn, conn.dialect)
    kept = (
        f"; months up to {done.kept_through} kept as they were (retention removed their events)"
        if done.kept_through
        else ""
    )
    print(
        f"statistics rebuilt from {done.messages} message(s) and {done.events} outcome event(s): "
        f"{done.counters} counter(s) in {time.monotonic() - started:.1f} s{kept}"
    )
    return 0
