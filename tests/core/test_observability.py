"""Idle timeout and the Prometheus endpoint, on real sockets."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent, readBody

from engine.config.load import load_config
from engine.service import Engine
from tests.support import client_for, exchange, inbound, sample_adt, write_config


@pytest_twisted.ensureDeferred
async def test_idle_connection_is_closed_and_metrics_are_served(tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound(idle_timeout=0.3, accept={"versions": ["2.5"]})},
                       engine={"metrics": {"enabled": True, "port": 0}, "node": "node-a"})
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
