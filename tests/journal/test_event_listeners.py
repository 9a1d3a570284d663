"""The journal's event listeners (the engine's metrics) see the rows of committed transactions
only: an operation rolled back to its savepoint, or a failed batch, counts nothing."""

from __future__ import annotations

import pytest_twisted

from engine.journal import events
from engine.journal.base import RECEIVED
from engine.metrics import EngineMetrics
from tests.journal.test_contract import backend, opened, record  # noqa: F401  (fixture and helpers)


def counted(metrics: EngineMetrics, state: str, channel: str) -> float:
    return metrics.registry.get_sample_value("pfi_journal_events_total", {"state": state, "channel": channel}) or 0.0


@pytest_twisted.ensureDeferred
async def test_committed_events_are_counted_and_rolled_back_ones_are_not(backend):  # noqa: F811
    journal = await opened(backend)
    metrics = EngineMetrics()
    metrics.channels = frozenset({"in", "dest"})
    journal.event_listeners.append(metrics.observe_events)
    try:
        stored = await journal.append_inbound(record("L-1"))
        await journal.record_event(stored.uid, "sent", "dest", "delivered")

        def written_then_refused(conn, store):
            events.write_one(conn, stored.uid, 0.0, "sent", "dest", "never committed", "n1")
            raise ValueError("refused after writing an event")

        failed = journal.submit(written_then_refused)
        try:
            await failed
        except Exception:  # noqa: BLE001 - the operation's own failure is expected
            pass
        await journal.record_event(stored.uid, "some-new-state", "elsewhere", "")
        assert counted(metrics, RECEIVED, "in") == 1
        assert counted(metrics, "sent", "dest") == 1  # not 2: the refused operation's row rolled back
        assert counted(metrics, "other", "") == 1  # unknown state and channel: closed label sets
    finally:
        await journal.stop()
