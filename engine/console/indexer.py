"""Keeps the message browser's identifier keys up to date, after the fact, off the engine's
process: each pass reads the messages journaled since the last one, extracts their keys
(engine/console/keys.py) and stores them (engine/journal/search.py). A pass is bounded, so a
console started on a journal of millions catches up over several passes and answers meanwhile."""

from __future__ import annotations

import structlog

from engine.console.keys import message_keys
from engine.journal import search

log = structlog.get_logger(__name__)
BATCH = 500


class KeyIndexer:
    def __init__(self, access):
        self.access = access
        self.last_id = None
        self.behind = True  # until a pass finds less than a full batch

    def run_pass(self, budget: int = 5000) -> int:
        """Index up to `budget` messages; how many were (blocking: run it in a thread)."""
        if not self.access.ready():
            return 0
        if self.last_id is None:
            self.last_id = search.index_cursor(self.access.read)
        done = 0
        while done < budget:
            count = self._batch()
            done += count
            if count < BATCH:
                self.behind = False
                break
            self.behind = True
        if self.access.dialect == "sqlite" and done:
            self._prune()
        return done

    def _batch(self) -> int:
        if self.access.dialect == "sqlite":
            rows = search.sqlite_messages_to_index(self.access.read, self.last_id, BATCH)
            raws = dict(self.access.raws_of([(uid, seg, off) for _, uid, _, seg, off in rows]))
            items = [(i, uid, ctrl, raws.get(uid)) for i, uid, ctrl, _, _ in rows]
        else:
            items = search.pg_messages_to_index(self.access.read, self.last_id, BATCH)
        if not items:
            return 0
        keys = [row for _, uid, ctrl, raw in items for row in message_keys(uid, raw, ctrl)]
        newest = max(self.last_id, max(i for i, _, _, _ in items))
        with self.access.keys_writing() as conn:
            search.store_keys(conn, keys, newest)
        self.last_id = newest
        return len(items)

    def _prune(self) -> None:
        """Keys of messages that retention purged (SQLite: the key file is not the journal)."""
        oldest = search.oldest_uid(self.access.read)
        if oldest:
            with self.access.keys_writing() as conn:
                search.prune_keys(conn, oldest)
