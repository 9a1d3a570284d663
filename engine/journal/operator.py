"""The journal as operator tools use it (the `pfi` commands, the console's user management): a
handle that reads, and writes each change in one transaction of its own, on either journal. The
engine itself goes through its group-commit writer instead (engine/journal/groupcommit.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from engine.journal.dialect import POSTGRES, SQLITE, Dialect

T = TypeVar("T")


class OperatorJournal:
    def __init__(self, conn, dialect: Dialect):
        self.conn, self.dialect = conn, dialect

    def read(self, sql: str, args=()) -> list:
        return self.conn.execute(sql, args).fetchall()

    def transaction(self, operation: Callable[[object], T]) -> T:
        """`operation(conn)` in one transaction: committed when it returns, rolled back if it raises."""
        return in_transaction(self.conn, self.dialect, lambda: operation(self.conn))

    def close(self) -> None:
        self.conn.close()


def in_transaction(conn, dialect: Dialect, operation: Callable[[], T]) -> T:
    # SQLite: take the write lock at once, so that a busy engine makes us wait, never fail midway.
    conn.execute("BEGIN IMMEDIATE" if dialect is SQLITE else "BEGIN")
    try:
        result = operation()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def open_operator_journal(journal: str, data_dir: Path, create: bool = False) -> OperatorJournal | None:
    """The configured journal (a postgresql:// URL, or SQLite under `data_dir`/journal), its schema
    checked or upgraded; None when SQLite has no journal yet and `create` is False."""
    from engine.journal.postgres import is_postgres_url

    if is_postgres_url(journal):
        from engine.journal import pgschema
        from engine.journal.postgres import connect as pg_connect

        conn = pg_connect(journal)
        pgschema.check(conn.raw)
        return OperatorJournal(conn, POSTGRES)
    from engine.journal import schema
    from engine.journal.sqlite import connect

    path = data_dir / "journal" / "journal.sqlite"
    if not path.exists() and not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite_conn = connect(path)
    schema.upgrade(sqlite_conn)
    return OperatorJournal(sqlite_conn, SQLITE)
