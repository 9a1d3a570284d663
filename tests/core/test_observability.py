"""Idle timeout and the Prometheus endpoint, on real sockets."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent, readBody

from engine.config.load import load_config
from engine.service import Engine
from tests.support import client_for, exchange, inbound, sample_adt, start_engine, write_config


@pytest_twisted.ensureDeferred
async def test_idle_connection_is_closed_and_metrics_are_served(tmp_path):
    cfg = write_config(
        tmp_path / "cfg",
        {"in": inbound(idle_timeout=0.3, accept={"versions": ["2.5"]})},
        engine={"metrics": {"enabled": True, "port": 0}, "node": "node-a"},
    )
    engine = Engine(load_config(cfg), tmp_path / "data", reactor)
    await engine.startService()
    try:
        client = await client_for(engine, "in")
        assert (await exchange(client, sample_adt("M-1").encode())).code == "AA"
        assert (await exchange(client, sample_adt("M-2", version="2.1").encode())).code == "AE"
        await client.lost  # closed by the engine after 0.3 s of silence
        port = engine.metrics_listener.port.getHost().port
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
        body = (await readBody(response)).decode()
    finally:
        await engine.stopService()
    assert 'pfi_messages_received_total{channel="in",node="node-a"} 2.0' in body
    assert 'pfi_messages_acked_total{channel="in",node="node-a"} 1.0' in body
    assert 'pfi_messages_nacked_total{channel="in",code="AE"' in body
    assert 'pfi_dispatch_leader{node="node-a"} 1.0' in body
    assert "pfi_ack_latency_seconds_bucket" in body and "pfi_open_connections" in body
    assert "MARTIN" not in body


@pytest_twisted.ensureDeferred
async def test_nack_metrics_take_labels_from_closed_sets_only(tmp_path):
    """Sender fields (MSH-9, MSH-12, control bytes) used to become label values: one series per
    distinct bad message."""
    cfg = write_config(tmp_path / "cfg", {"in": inbound(accept={"message_types": ["ADT"]})})
    engine = await start_engine(cfg, tmp_path / "data")
    try:
        client = await client_for(engine, "in")
        for i in range(40):
            await exchange(client, sample_adt(f"V-{i}", version=f"9.{i}\x1b[2J").encode())
            await exchange(client, sample_adt(f"T-{i}", msg_type=f"Z{i:02d}^A01").encode())
        client.close()
        series = [m for m in engine.metrics.registry.collect() if m.name == "pfi_messages_nacked"][0].samples
    finally:
        await engine.stopService()
    labels = {(s.labels["code"], s.labels["reason"]) for s in series if s.name.endswith("_total")}
    assert labels == {("AE", "203"), ("AE", "200")}


@pytest_twisted.ensureDeferred
async def test_delivery_outcomes_and_queue_depths_are_metrics(tmp_path):
    from tests.routing.peers import RecordingPeer, until

    peer = RecordingPeer(lambda raw, n: "AE" if b"|BAD-1|" in raw else "AA")
    port = await peer.listen()
    routes = [{"name": "r", "match": {"channel": "in"}, "steps": [{"deliver": {"to": "dest"}}]}]
    cfg = write_config(
        tmp_path / "cfg",
        {"in": inbound(), "dest": {"type": "mllp-out", "host": "127.0.0.1", "port": port, "ack_timeout": 2}},
        routes,
    )
    engine = await start_engine(cfg, tmp_path / "data")
    try:
        client = await client_for(engine, "in")
        for ctrl in ("OK-1", "BAD-1"):
            assert (await exchange(client, sample_adt(ctrl).encode())).code == "AA"
        client.close()
        sample = lambda name, **labels: engine.metrics.registry.get_sample_value(  # noqa: E731
            name, {**labels, "node": engine.node}
        )
        await until(
            lambda: sample("pfi_deliveries_total", destination="dest", outcome="dead") == 1.0,
            what="the dead letter counted",
        )
        assert sample("pfi_deliveries_total", destination="dest", outcome="done") == 1.0
        await engine._measure_journal()
        assert sample("pfi_queue_messages", destination="dest", state="dead") == 1.0
        assert sample("pfi_queue_messages", destination="dest", state="pending") == 0.0
    finally:
        await engine.stopService()
        await peer.close()


@pytest_twisted.ensureDeferred
async def test_messages_waiting_for_the_index_are_a_metric(tmp_path, monkeypatch):
    """Acknowledged messages the SQLite index does not hold yet (pfi tail and the console do not
    show them yet): how many, and the oldest one's age."""
    from engine.journal import sqlite as sqlite_journal
    from engine.mllp.client import read_ack

    monkeypatch.setattr(sqlite_journal, "INDEX_DELAY", 3600.0)  # the indexer waits for a batch
    engine = await start_engine(write_config(tmp_path / "cfg", {"in": inbound()}), tmp_path / "data")
    try:
        sample = lambda name: engine.metrics.registry.get_sample_value(name, {"node": engine.node})  # noqa: E731
        client = await client_for(engine, "in")
        for ctrl in ("W-1", "W-2"):  # not `exchange`: it waits for the index
            assert read_ack(await client.send(sample_adt(ctrl).encode())).code == "AA"
        client.close()
        await engine._measure_journal()
        assert sample("pfi_journal_unindexed_messages") == 2.0
        assert 0.0 <= sample("pfi_journal_index_lag_seconds") < 60.0
        await engine.journal.indexed()
        await engine._measure_journal()
        assert (sample("pfi_journal_unindexed_messages"), sample("pfi_journal_index_lag_seconds")) == (0.0, 0.0)
    finally:
        await engine.stopService()
