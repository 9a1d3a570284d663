"""Intake's plain counters (engine/metrics.py IntakeCounts) expose what prometheus_client's own
Counter and Histogram would for the same observations, and stay consistent while a scrape runs in
another thread."""

from __future__ import annotations

import random
import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from engine.metrics import LATENCY_BUCKETS, EngineMetrics


def samples(registry, name: str) -> dict:
    family = next(m for m in registry.collect() if m.name == name)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_latency_buckets_match_prometheus_histogram():
    rng = random.Random(15)
    # bounds themselves (a bucket is "less or equal"), values between and beyond the last bound
    values = list(LATENCY_BUCKETS) + [rng.uniform(0, 7) ** 3 / 50 for _ in range(3000)] + [0.0, 1e9]
    reference = CollectorRegistry()
    histogram = Histogram("pfi_ack_latency_seconds", "x", ["channel"], buckets=LATENCY_BUCKETS, registry=reference)
    metrics = EngineMetrics()
    for i, value in enumerate(values):
        channel = ("a", "b")[i % 2]
        histogram.labels(channel).observe(value)
        metrics.intake.counts(channel).observe_latency(value)
    expected = {k: v for k, v in samples(reference, "pfi_ack_latency_seconds").items() if "_created" not in k[0]}
    got = samples(metrics.registry, "pfi_ack_latency_seconds")
    assert got.keys() == expected.keys()
    assert got == pytest.approx(expected)


def test_counts_are_exposed_per_channel_with_node_label():
    metrics = EngineMetrics(node="node-a")
    counts = metrics.intake.counts("in")
    counts.received += 3
    counts.acked += 2
    counts.duplicates += 1
    counts.observe_latency(0.0004)
    body = generate_latest(metrics.registry).decode()
    assert 'pfi_messages_received_total{channel="in",node="node-a"} 3.0' in body
    assert 'pfi_messages_acked_total{channel="in",node="node-a"} 2.0' in body
    assert 'pfi_messages_duplicate_total{channel="in",node="node-a"} 1.0' in body
    assert 'pfi_ack_latency_seconds_bucket{channel="in",le="0.0005",node="node-a"} 1.0' in body
    assert 'pfi_ack_latency_seconds_count{channel="in",node="node-a"} 1.0' in body
    assert metrics.intake.counts("in") is counts


def test_scrape_while_counting_sees_whole_histograms():
    """The reactor thread counts while a pool thread scrapes: every scraped histogram's +Inf
    bucket equals its count, buckets never decrease, and the last scrape sees every count."""
    metrics = EngineMetrics()
    counts = metrics.intake.counts("in")
    done = threading.Event()
    seen: list[dict] = []

    def scrape():
        while not done.is_set():
            seen.append(samples(metrics.registry, "pfi_ack_latency_seconds"))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    rng = random.Random(7)
    for _ in range(100_000):
        counts.received += 1
        counts.observe_latency(rng.expovariate(500))
    done.set()
    scraper.join()
    seen.append(samples(metrics.registry, "pfi_ack_latency_seconds"))
    assert len(seen) > 1
    for snapshot in seen:
        buckets = [v for (name, labels), v in snapshot.items() if name.endswith("_bucket")]
        inf = snapshot[("pfi_ack_latency_seconds_bucket", (("channel", "in"), ("le", "+Inf")))]
        assert inf == snapshot[("pfi_ack_latency_seconds_count", (("channel", "in"),))]
        assert buckets == sorted(buckets)
    assert seen[-1][("pfi_ack_latency_seconds_count", (("channel", "in"),))] == 100_000
