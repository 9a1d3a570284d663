"""SIGKILL mid-delivery under load, and the operator commands (queue, cancel, replay)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from engine.mllp.client import connect, read_ack
from tests.routing.peers import RecordingPeer, until
from tests.support import ROOT, EngineProcess, inbound, sample_adt, write_config

PORT = 23300


def _cfg(tmp_path, dest_port, delay=0):
    routes = [
        {
            "name": "r",
            "match": {"channel": "in"},
            "steps": [{"deliver": {"to": "dest", "key": "PID-3.1", "delay": delay}}],
        }
    ]
    return write_config(
        tmp_path / "cfg",
        {
            "in": inbound(port=PORT),
            "dest": {
                "type": "mllp-out",
                "host": "127.0.0.1",
                "port": dest_port,
                "ack_timeout": 2,
                "retry": {"initial": 0.05, "maximum": 0.5, "jitter": 0},
            },
        },
        routes,
    )


def pfi(*args):
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sigkill_mid_delivery_loses_nothing_and_keeps_order_per_key(tmp_path):
    dest = RecordingPeer()
    dest_port = await dest.listen()
    proc = EngineProcess(_cfg(tmp_path, dest_port), tmp_path / "data")
    proc.start()
    acked: list[str] = []

    async def pump(key: str, n: int):
        client = await connect(reactor, "127.0.0.1", PORT)
        for i in range(n):
            msg = sample_adt(f"{key}-{i}").replace("IPP001", key).encode()
            try:
                ack = read_ack(await client.send(msg))
            except Exception:
                return
            if ack.code == "AA":
                acked.append(f"{key}-{i}")

    pumps = [defer.Deferred.fromCoroutine(pump(k, 150)) for k in ("K1", "K2", "K3", "K4")]
    await until(lambda: len(dest.received) > 100, what="deliveries under way")
    proc.kill()
    await defer.DeferredList(pumps)
    proc.start()
    await until(lambda: set(acked) <= set(dest.control_ids()), timeout=30, what="every ACKed message delivered")
    delivered = dest.control_ids()
    for key in ("K1", "K2", "K3", "K4"):
        seq = [int(c.split("-")[1]) for c in delivered if c.startswith(key + "-")]
        firsts = list(dict.fromkeys(seq))  # duplicates only in the crash window, same MSH-10
        assert firsts == sorted(firsts), f"order broken for {key}"
    proc.terminate()
    await dest.close()


@pytest_twisted.ensureDeferred
async def test_queue_cancel_and_replay_commands(tmp_path):
    dest = RecordingPeer()
    dest_port = await dest.listen()
    cfg = _cfg(tmp_path, dest_port, delay="1h")
    proc = EngineProcess(cfg, tmp_path / "data")
    proc.start()
    try:
        client = await connect(reactor, "127.0.0.1", PORT)
        for ctrl in ("C-1", "C-2"):
            assert read_ack(await client.send(sample_adt(ctrl).encode())).code == "AA"
        client.close()
        common = ("--config", str(cfg), "--data", str(tmp_path / "data"))
        await until(lambda: " 2 " in pfi("queue", *common).stdout, what="two pending")
        tail = pfi("tail", *common).stdout
        line = next(line for line in tail.splitlines() if "ctrl=C-1" in line)
        uid = next(f for f in line.split()[1:] if not f.startswith("@"))  # after the stamp and `@node`
        assert pfi("cancel", uid, *common).returncode == 0
        # No --operator: the journal names the OS account, and says that is what it is.
        import getpass

        assert f"cancelled by {getpass.getuser()} (OS user)" in pfi("tail", *common).stdout
        queue = pfi("queue", *common).stdout
        assert "dest" in queue and " 1 " in queue
        replayed = pfi("replay", uid, *common, "--operator", "dana")
        assert replayed.returncode == 0 and "1 message(s) re-queued" in replayed.stdout
        assert "re-queued through the current routes by dana" in pfi("tail", *common).stdout
        await until(lambda: " 2 " in pfi("queue", *common).stdout, what="replayed message queued again")
    finally:
        proc.terminate()
        await dest.close()
