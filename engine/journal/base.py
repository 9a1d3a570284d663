"""The journal interface, shared by the SQLite (embedded) and PostgreSQL implementations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from engine.journal.dialect import Dialect

# Message states written at intake; later stages add their own (routed, sent, acked, failed...).
RECEIVED = "received"
REJECTED = "rejected"
DUPLICATE = "duplicate"


@dataclass(slots=True)
class InboundRecord:
    """A message as intake hands it to the journal: raw bytes plus the indexed fields."""

    uid: str
    channel: str
    received_at: float
    raw: bytes
    state: str = RECEIVED
    sender: str = ""
    facility: str = ""
    receiver: str = ""
    receiver_facility: str = ""
    control_id: str = ""
    msg_type: str = ""
    version: str = ""
    profile: str = ""
    patient_ids: str = ""
    charset: str = ""
    ack_code: str = ""
    ack: bytes = b""
    reason: str = ""
    error_code: int = 0  # HL7 table 0357 code of a NACK (metrics label; not stored)
    dup_key: str | None = None
    dup_window: float = 0.0
    # Filled by the journal when the record turns out to be a duplicate of an earlier message.
    duplicate_of: str | None = None


@dataclass(slots=True)
class JournalEvent:
    """One row of the message log, as `pfi tail` shows it."""

    id: int
    at: float
    message_uid: str
    state: str
    channel: str
    msg_type: str
    control_id: str
    detail: str = ""
    node: str = ""
    patient_ids: str = ""


@dataclass(slots=True)
class StoredMessage:
    uid: str
    channel: str
    received_at: float
    state: str
    msg_type: str
    control_id: str
    raw: bytes
    ack_code: str = ""
    reason: str = ""
    extra: dict = field(default_factory=dict)


class Journal(Protocol):
    """What the engine needs from storage. Methods returning Deferreds are safe on the reactor.
    Both implementations (SQLiteJournal, PostgresJournal) provide all of it; the contract tests
    (tests/journal/test_contract.py) run the same checks on both."""

    dialect: Dialect  # what differs in their SQL (engine/journal/dialect.py)
    durability: str  # what an AA guarantees, said in the engine.started log line
    node: str
    #: this node dispatches (always on SQLite; the elected leader of a shared journal)
    is_leader: bool
    #: set by the engine: channels no route names. A local journal indexes their accepted
    #: messages `unrouted` at once (no dispatching); a shared one leaves them to its leader.
    unrouted_channels: frozenset[str]
    #: set by the engine: called when messages to route were committed (by this node or another
    #: node of a shared journal: intake never wakes the dispatcher) / another node queued work
    on_received: Callable[[], None]
    on_queued: Callable[[str], None]
    #: set by the engine: this node took over follow-ups a silent node of a shared journal left
    #: due (never called on a journal of one node)
    on_follow_ups_adopted: Callable[[], None]

    def notify_queued(self, conn, destinations) -> None:
        """Inside a `submit` operation: wake the other nodes' workers of these destinations when
        the transaction commits (nothing to do on a journal of one node)."""

    def start(self) -> None: ...

    async def open(self) -> None:
        """`start` without blocking the reactor thread (what the engine calls)."""

    def stop(self): ...

    def append_inbound(self, record: InboundRecord, then=None):
        """Durably store `record` (fsync'ed) and fire with it; if the journal already holds the same
        dup_key within its window, the record is stored as a duplicate and `record.duplicate_of`
        and `record.ack` are set to the original's. Given `then`, returns None and calls
        `then(record)` or `then(exception)` on the reactor thread instead (no Deferred)."""

    def record_event(self, message_uid: str, state: str, channel: str = "", detail: str = ""): ...

    def queue_depths(self, destinations=None) -> list[tuple]:
        """(destination, state, count, oldest created_at) of waiting or dead deliveries (of
        `destinations` only, when given: then only their open rows are read)."""

    def events_after(
        self, last_id: int, limit: int = 500, channel: str | None = None, msg_type: str | None = None
    ) -> list[JournalEvent]: ...

    def load_message(self, uid: str) -> StoredMessage | None: ...

    # Routing and operations (both implementations; see docs/journal.md and docs/cluster.md).
    lease: float  # seconds a claimed send stays this node's without renewal

    def submit(self, operation, logged: bool = False, indexed_only: bool = False):
        """Run `operation(conn, store)` in the next group commit (portable `?` SQL on `conn`;
        `store.message_raw(conn, uid)` reads a payload); fires with its result once durable.
        `indexed_only`: the operation needs only what is already indexed (routing state:
        deliveries, messages claimed from the index), not every message acknowledged so far."""

    def indexed(self):
        """Fires once every record acknowledged so far is visible to readers of the index."""

    def claim_received(self, limit: int, channels: frozenset | None = None):
        """Fires with the oldest indexed (uid, channel, received_at, raw) still to route (after
        `indexed()`, every acknowledged one); empty on a node that is not the dispatcher of a
        shared journal. With `channels`, messages of other channels come with raw None (no route
        can match them: their payload is not read)."""

    def purge_before(self, before: float):
        """Retention: fires with the number of finished messages older than `before` removed."""

    def size_bytes(self) -> int: ...

    def unindexed(self) -> tuple[int, float]:
        """(messages acknowledged but not yet in the index that readers and routing query,
        seconds since the oldest of them was received); (0, 0.0) where the index is written
        before the ACK (PostgreSQL)."""
