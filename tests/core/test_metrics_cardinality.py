"""Metric labels come from closed sets: many distinct bad messages must not make many series.

Real engine, real MLLP socket on 127.0.0.1, real /metrics endpoint.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody

from engine.config.load import load_config
from engine.mllp.client import read_ack
from engine.mllp.framing import frame
from engine.service import Engine
from tests.support import client_for, inbound, sample_adt, write_config

DISTINCT = 300


def bad_messages(n: int) -> list[bytes]:
    """Each refused for a different reason text: version, type (with control bytes), processing id,
    or an unreadable MSH-2."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(sample_adt(f"V-{i}", version=f"9.{i}").encode())
        elif kind == 1:
            out.append(sample_adt(f"T-{i}", msg_type=f"Z\x1b[{i}m^Q{i}").encode())
        elif kind == 2:
            out.append(sample_adt(f"P-{i}").replace(f"|P-{i}|P|", f"|P-{i}|X{i}|").encode())
        else:
            out.append(f"MSH|{i}{i}|x\rPID|1\r".encode())
    return out


async def _send_all(client, payloads: list[bytes]) -> list[str]:
    waiting = []
    for _ in payloads:
        d = defer.Deferred()
        client._waiting.append(d)
        waiting.append(d)
    client.transport.write(b"".join(frame(p) for p in payloads))
    return [read_ack(await d.addTimeout(30, reactor)).code for d in waiting]


def series(body: str, metric: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith(metric + "{")]


@pytest_twisted.ensureDeferred
async def test_distinct_bad_messages_keep_the_nack_series_bounded(tmp_path):
    cfg = write_config(
        tmp_path / "cfg",
        {"in": inbound(accept={"versions": ["2.5"], "message_types": ["ADT"]})},
        engine={"metrics": {"enabled": True, "port": 0}},
    )
    engine = Engine(load_config(cfg), tmp_path / "data", reactor)
    await engine.startService()
    try:
        client = await client_for(engine, "in")
        codes = await _send_all(client, bad_messages(DISTINCT))
        client.close()
        port = engine.metrics_listener.port.getHost().port
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
        body = (await readBody(response)).decode()
    finally:
        await engine.stopService()
    assert set(codes) == {"AE"} and len(codes) == DISTINCT
    nacked = series(body, "pfi_messages_nacked_total")
    # one series per (channel, code, reason) with reason from a closed set: 4 kinds here
    assert len(nacked) <= 4, nacked
    assert sum(float(line.rsplit(" ", 1)[1]) for line in nacked) == DISTINCT
    assert "\x1b" not in body and not any('"9.' in line or "Q1" in line for line in nacked)
    assert len([line for line in body.splitlines() if line.startswith("pfi_")]) < 80
