"""Helpers shared by the command modules."""

from __future__ import annotations

import contextlib
import sys
import unicodedata
from pathlib import Path

_KEPT = "\n\t"


def printable(text: str) -> str:
    """`text` with control and other non-printable characters written as `\\x1b`, `\\u202e`…

    Operator output shows what came from the wire (MSH-9, MSH-10, ERR text, file names): an
    escape sequence there must not drive the operator's terminal (clear it, set its title, hide
    text with CR or a bidi override). Newlines and tabs are kept, and so are letters in any script.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in _KEPT or unicodedata.category(c) == "Zs"
                   else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class PrintableStream:
    """A text stream that writes through `printable`; everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def printable_output():
    """Route this command's stdout and stderr through `printable` (restored afterwards)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PrintableStream(saved[0]), PrintableStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


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
    p.add_argument("--journal", default=None,
                   help="journal to use instead of the configuration's (`sqlite` or a postgresql:// URL)")


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
    """A write connection to the journal for operator commands (SQLite file or PostgreSQL);
    None, with the reason printed, when there is no journal yet."""
    from engine.journal.postgres import is_postgres_url

    if is_postgres_url(config.engine.journal):
        from engine.journal import pgschema
        from engine.journal.postgres import connect

        conn = connect(config.engine.journal)
        pgschema.check(conn.raw)
        return conn
    from engine.journal import schema
    from engine.journal.sqlite import connect

    path = data_dir_for(args, config) / "journal" / "journal.sqlite"
    if not path.exists():
        print("journal is empty (no message received yet)")
        return None
    conn = connect(path)
    schema.upgrade(conn)
    return conn
