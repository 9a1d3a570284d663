"""The durable journal: every message and every state change, stored before it is acknowledged."""

from engine.journal.base import InboundRecord, Journal, JournalEvent, StoredMessage

__all__ = ["InboundRecord", "Journal", "JournalEvent", "StoredMessage"]


def open_journal(settings, data_dir, reactor, node: str, follower: bool = False):
    """The journal the configuration asks for: `sqlite` (embedded, under data_dir/journal) or a
    postgresql:// URL shared by several nodes."""
    from pathlib import Path

    from engine.journal.postgres import PostgresJournal, is_postgres_url
    from engine.journal.sqlite import SQLiteJournal

    if is_postgres_url(settings.journal):
        return PostgresJournal(settings.journal, reactor, node=node, lease=settings.lease_seconds)
    return SQLiteJournal(Path(data_dir) / "journal", reactor, node=node, follower=follower)
