"""The durable journal: every message and every state change, stored before it is acknowledged."""

from engine.journal.base import InboundRecord, Journal, JournalEvent, StoredMessage

__all__ = ["InboundRecord", "Journal", "JournalEvent", "StoredMessage"]
