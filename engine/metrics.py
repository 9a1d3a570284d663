"""Prometheus metrics, in one registry per engine so tests can run several engines side by side."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("pfi_messages_received", "Frames received", ["channel"], registry=r)
        self.acked = Counter("pfi_messages_acked", "Messages acknowledged AA", ["channel"], registry=r)
        self.nacked = Counter(
            "pfi_messages_nacked", "Messages answered AE/AR", ["channel", "code", "reason"], registry=r
        )
        self.duplicates = Counter("pfi_messages_duplicate", "Duplicates answered again", ["channel"], registry=r)
        self.ack_latency = Histogram(
            "pfi_ack_latency_seconds", "Frame complete to ACK written", ["channel"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.connections = Gauge("pfi_open_connections", "Open inbound connections", ["channel"], registry=r)
        self.journal_bytes = Gauge("pfi_journal_bytes", "Size of the journal on disk", registry=r)
        self.quarantined = Counter("pfi_quarantined", "Noise or oversized input kept aside", ["channel", "reason"], registry=r)
