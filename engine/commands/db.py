"""`pfi db upgrade|status`: the journal's schema. A shared PostgreSQL journal is upgraded once, by
an operator, never by a node on its own start (nodes refuse a schema they were not built for)."""

from __future__ import annotations


def register(sub) -> None:
    from engine.commands.common import add_journal_options

    p = sub.add_parser("db", help="journal schema: upgrade or show its version")
    p.add_argument("action", choices=("upgrade", "status"))
    add_journal_options(p)
    p.set_defaults(handler=db)


def db(args) -> int:
    from engine.commands.common import load_with_overrides
    from engine.journal.postgres import is_postgres_url
    from engine.journal.schema import UnknownSchema

    config = load_with_overrides(args)
    if config is None:
        return 2
    try:
        if is_postgres_url(config.engine.journal):
            return _postgres(args.action, config.engine.journal)
        return _sqlite(args, config)
    except UnknownSchema as exc:
        print(f"error: {exc}")
        return 1


def _postgres(action: str, url: str) -> int:
    import psycopg

    from engine.journal import pgschema

    with psycopg.connect(url, autocommit=True) as conn:
        if action == "upgrade":
            applied = pgschema.upgrade(conn)
            print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "already up to date")
        version = pgschema.current_version(conn)
    print(f"journal schema version {version} (this engine: {pgschema.LATEST}) on {_redacted(url)}")
    return 0 if version == pgschema.LATEST else 1


def _sqlite(args, config) -> int:
    from engine.commands.common import data_dir_for
    from engine.journal import schema
    from engine.journal.sqlite import connect

    directory = data_dir_for(args, config) / "journal"
    directory.mkdir(parents=True, exist_ok=True)
    conn = connect(directory / "journal.sqlite")
    version = schema.upgrade(conn) if args.action == "upgrade" else schema.current_version(conn)
    print(f"journal schema version {version} (this engine: {schema.LATEST}) in {directory}")
    return 0 if version == schema.LATEST else 1


def _redacted(url: str) -> str:
    """The URL without its password (it may sit in a terminal's scrollback)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
