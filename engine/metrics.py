"""Prometheus metrics, in one registry per engine so tests can run several engines side by side."""

from __future__ import annotations

import collections
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: journal event states counted by name; any other state is counted as "other" (closed label set)
EVENT_STATES = frozenset(
    {
        "received",
        "rejected",
        "duplicate",
        "mail-integration",
        "damaged",
        "routed",
        "unrouted",
        "filtered",
        "invalid",
        "held",
        "queued",
        "sent",
        "retry",
        "dead-letter",
        "cancelled",
        "released",
        "replayed",
        "paused",
        "resumed",
        "identity-held",
        "identity-released",
        "superseded",
    }
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class IntakeCounts:
    """One channel's intake counters as plain numbers, changed by the reactor thread alone and
    read by `IntakeCollector` when the registry is scraped. A prometheus_client Counter takes a
    lock at every increment and its Histogram walks the buckets in Python: ~2.3 µs per answered
    message (received, acked, latency), ~7 % of intake's reactor-thread Python."""

    __slots__ = ("received", "acked", "duplicates", "latency_counts", "latency_sum")

    def __init__(self) -> None:
        self.received = self.acked = self.duplicates = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; last: +Inf
        self.latency_sum = 0.0

    def observe_latency(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, as Prometheus buckets are "less or equal"
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class IntakeCollector(Collector):
    """pfi_messages_received / _acked / _duplicate and pfi_ack_latency_seconds, per channel, from
    the `IntakeCounts` the intake keeps. Scrapes run in another thread: each read is of one
    number, or one copy of the bucket list, so the buckets of a sample always add up to its
    count (the sum may miss the latest observation)."""

    def __init__(self) -> None:
        self._channels: dict[str, IntakeCounts] = {}

    def counts(self, channel: str) -> IntakeCounts:
        counts = self._channels.get(channel)
        if counts is None:
            counts = self._channels[channel] = IntakeCounts()
        return counts

    def describe(self):
        return self._families()

    def collect(self):
        received, acked, duplicates, latency = families = self._families()
        for channel, counts in list(self._channels.items()):
            received.add_metric([channel], counts.received)
            acked.add_metric([channel], counts.acked)
            duplicates.add_metric([channel], counts.duplicates)
            latency.add_metric([channel], _cumulative(list(counts.latency_counts)), counts.latency_sum)
        return families

    @staticmethod
    def _families() -> list:
        return [
            CounterMetricFamily("pfi_messages_received", "Frames received", labels=["channel"]),
            CounterMetricFamily("pfi_messages_acked", "Messages acknowledged AA", labels=["channel"]),
            CounterMetricFamily("pfi_messages_duplicate", "Duplicates answered again", labels=["channel"]),
            HistogramMetricFamily("pfi_ack_latency_seconds", "Frame complete to ACK written", labels=["channel"]),
        ]


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    bounds = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    total, buckets = 0, list[tuple[str, float]]()
    for bound, count in zip(bounds, counts):
        total += count
        buckets.append((bound, total))
    return buckets


class NodeRegistry(CollectorRegistry):
    """A registry that puts `node="<name>"` on every sample: several nodes sharing one journal are
    told apart on the same dashboards without relabelling rules."""

    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def collect(self):
        for metric in super().collect():
            metric.samples = [s._replace(labels={**s.labels, "node": self.node}) for s in metric.samples]
            yield metric


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, node: str = ""):
        self.registry = registry or (NodeRegistry(node) if node else CollectorRegistry())
        r = self.registry
        #: received, acked, duplicates and ACK latency per channel (plain counts: IntakeCounts)
        self.intake = IntakeCollector()
        r.register(self.intake)
        self.nacked = Counter(
            "pfi_messages_nacked", "Messages answered AE/AR", ["channel", "code", "reason"], registry=r
        )
        self.listening = Gauge("pfi_listening", "1 while the channel's listener is bound", ["channel"], registry=r)
        self.connections = Gauge("pfi_open_connections", "Open inbound connections", ["channel"], registry=r)
        self.connections_refused = Counter(
            "pfi_connections_refused",
            "Inbound connections refused at the channel's max_connections",
            ["channel"],
            registry=r,
        )
        self.connections_closed = Counter(
            "pfi_connections_closed",
            "Inbound connections closed by the engine (idle_timeout, frame_timeout)",
            ["channel", "reason"],
            registry=r,
        )
        self.buffered_bytes = Gauge(
            "pfi_inbound_buffered_bytes",
            "Bytes of unfinished frames held by all inbound connections (engine budget: max_buffered_bytes)",
            registry=r,
        )
        self.reads_paused = Gauge(
            "pfi_inbound_reads_paused",
            "Inbound connections not read because the engine budget for unfinished frames is spent",
            registry=r,
        )
        self.journal_bytes = Gauge("pfi_journal_bytes", "Size of the journal on disk", registry=r)
        self.journal_unindexed = Gauge(
            "pfi_journal_unindexed_messages",
            "Messages acknowledged (in the synced log) but not yet in the SQLite index that pfi tail, "
            "the console and routing read (0 on PostgreSQL)",
            registry=r,
        )
        self.journal_index_lag = Gauge(
            "pfi_journal_index_lag_seconds", "Age of the oldest message not yet indexed (0 when none)", registry=r
        )
        self.dispatch_leader = Gauge(
            "pfi_dispatch_leader",
            "1 when this node routes the shared journal's messages (always 1 on SQLite)",
            registry=r,
        )
        self.certificate_days_left = Gauge(
            "pfi_certificate_days_left",
            "Days before a DMP organisation certificate expires",
            ["channel", "structure"],
            registry=r,
        )
        self.rejected_bytes = Counter(
            "pfi_rejected_bytes", "Bytes of rejected frames received (before any truncation)", ["channel"], registry=r
        )
        self.rejected_truncated = Counter(
            "pfi_rejected_truncated",
            "Rejected frames kept as head + size + SHA-256 (channel over its rejected_quota)",
            ["channel"],
            registry=r,
        )
        self.deliveries = Counter(
            "pfi_deliveries",
            "Delivery attempts by outcome (done, retry, dead, pause, wait-identity)",
            ["destination", "outcome"],
            registry=r,
        )
        self.queue_messages = Gauge(
            "pfi_queue_messages",
            "Deliveries waiting or dead, by state (pending, sending, held, dead)",
            ["destination", "state"],
            registry=r,
        )
        self.queue_oldest_seconds = Gauge(
            "pfi_queue_oldest_seconds", "Age of the oldest pending delivery", ["destination"], registry=r
        )
        self.journal_events = Counter(
            "pfi_journal_events",
            "Journal events by state, counted as they commit (one observer of every "
            "state change: intake, routing, deliveries, operator actions)",
            ["state", "channel"],
            registry=r,
        )
        self.channels: frozenset[str] = frozenset()  # set by the engine: the configured channel names
        self.routing_process_up = Gauge(
            "pfi_routing_process_up", "1 while the routing process runs (routing_process: true)", registry=r
        )
        self.routing_process_restarts = Counter(
            "pfi_routing_process_restarts", "Routing processes started again after one died", registry=r
        )
        self.quarantined = Counter(
            "pfi_quarantined", "Noise or oversized input kept aside", ["channel", "reason"], registry=r
        )

    def observe_events(self, rows: list) -> None:
        """The journal's event listener: rows (message_uid, at, state, channel, detail, node) of a
        committed transaction. Labels stay in closed sets: known states, configured channels."""
        # Counted per label pair first: one child look-up and one locked increment per pair, not
        # per row (a routed message writes ~5 events).
        counts = collections.Counter(
            (state if state in EVENT_STATES else "other", channel if channel in self.channels else "")
            for _, _, state, channel, _, _ in rows
        )
        for labels, count in counts.items():
            self.journal_events.labels(*labels).inc(count)
