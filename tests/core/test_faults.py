"""Faults: SIGKILL after ACK, a full disk, a journal that turns read-only. Real processes."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from engine.journal.reader import JournalReader
from engine.mllp.client import connect, read_ack
from tests.support import (
    intake_events,
    ROOT,
    EngineProcess,
    client_for,
    exchange,
    inbound,
    sample_adt,
    start_engine,
    until,
    write_config,
)

PORT_BASE = 23000


def _config(tmp_path, port):
    return write_config(tmp_path / "cfg", {"in": inbound(port=port)})


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_every_acked_message_survives_sigkill(tmp_path):
    port = PORT_BASE + 1
    proc = EngineProcess(_config(tmp_path, port), tmp_path / "data")
    proc.start()
    try:
        acked: list[str] = []
        clients = [await connect(reactor, "127.0.0.1", port) for _ in range(4)]

        async def pump(client, n, k):
            for i in range(n):
                control = f"K{n}-{k}-{i}"  # unique per client (not id(client) % 1000: two collided)
                try:
                    ack = read_ack(await client.send(sample_adt(control).encode()))
                except Exception:
                    return
                if ack.code == "AA":
                    acked.append(control)

        senders = [defer.Deferred.fromCoroutine(pump(c, 400, k)) for k, c in enumerate(clients)]
        while len(acked) < 300:
            await _tick()
        proc.kill()  # right after an ACK, with more messages in flight
        await defer.DeferredList(senders)
        # The index follows the ACK, so the kill leaves acknowledged records in the synced log that
        # the index lacks (a crash between the log fsync and the index update). The restart indexes
        # them from the log: nothing lost, nothing twice, and their duplicates still answered.
        proc.start()
        received = [e.control_id for e in intake_events(JournalReader(tmp_path / "data" / "journal"))]
        assert set(acked) <= set(received)
        assert len(received) == len(set(received))
        client = await connect(reactor, "127.0.0.1", port)
        assert (await exchange(client, sample_adt("AFTER").encode())).code == "AA"
        again = read_ack(await client.send(sample_adt(acked[-1]).encode()))  # the last ACK before the kill
        assert again.code == "AA"

        def duplicates() -> list:
            events = intake_events(JournalReader(tmp_path / "data" / "journal"))
            return [e for e in events if e.control_id == acked[-1] and e.state == "duplicate"]

        await until(lambda: duplicates(), what="the duplicate's event (the index follows the ACK)")
        assert len(duplicates()) == 1

        client.close()
        proc.terminate()
    finally:
        proc.ensure_dead()


async def _tick():
    d = defer.Deferred()
    reactor.callLater(0.005, d.callback, None)
    await d


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_full_disk_answers_ar_and_keeps_serving(tmp_path):
    port = PORT_BASE + 2
    cfg = _config(tmp_path, port)
    limit = 3 * 1024 * 1024

    def limit_file_size():  # EFBIG past this size, as on a full file system
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    log = open(tmp_path / "engine.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", "--config", str(cfg), "--data", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=limit_file_size,
    )
    try:
        client = await _connect_retry(port)
        codes = []
        for i in range(60):
            big = sample_adt(f"F-{i}") + "NTE|1||" + "x" * 100_000 + "\r"
            codes.append((await exchange(client, big.encode())).code)
        assert codes[0] == "AA" and codes[-1] == "AR"  # circumstantial: send again later
        other = await connect(reactor, "127.0.0.1", port)
        ack = await exchange(other, sample_adt("F-small").encode())
        assert ack.code in ("AA", "AR") and ack.control_id == "F-small"
        assert proc.poll() is None  # still running
        accepted = [f"F-{i}" for i, c in enumerate(codes) if c == "AA"]
        client.close()
        other.close()
    finally:
        proc.terminate()
        proc.wait(20)
    stored = {e.control_id for e in intake_events(JournalReader(tmp_path / "data" / "journal"))}
    assert set(accepted) <= stored


async def _connect_retry(port, timeout: float = 15.0):
    # A bound in seconds, not in tries: the engine's start (imports, journal, listeners) takes
    # about a second here, more on a loaded machine; 200 tries of 5 ms were too close to it.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return await connect(reactor, "127.0.0.1", port)
        except Exception:
            await _tick()
    raise AssertionError("engine did not listen")


@pytest_twisted.ensureDeferred
async def test_read_only_journal_answers_ar_then_recovers(tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound()})
    engine = await start_engine(cfg, tmp_path / "data")
    client = await client_for(engine, "in")
    segment = next((tmp_path / "data" / "journal" / "payloads").glob("seg-*.dat"))
    try:
        assert (await exchange(client, sample_adt("R-1").encode())).code == "AA"
        subprocess.run(["chattr", "+i", str(segment)], check=True)
        ack = await exchange(client, sample_adt("R-2").encode())
        assert ack.code == "AR" and "|207^" in ack.errors[0] and "journal" in ack.errors[0]
        subprocess.run(["chattr", "-i", str(segment)], check=True)
        assert (await exchange(client, sample_adt("R-3").encode())).code == "AA"
        # The AE'd message was not stored; the sender retries and now gets AA.
        assert (await exchange(client, sample_adt("R-2").encode())).code == "AA"
    finally:
        subprocess.run(["chattr", "-i", str(segment)])
        client.close()
        await engine.stopService()
    stored = [e.control_id for e in intake_events(JournalReader(tmp_path / "data" / "journal"))]
    assert stored == ["R-1", "R-3", "R-2"]
    assert all(
        m is not None
        for m in map(
            JournalReader(tmp_path / "data" / "journal").load_message,
            [e.message_uid for e in intake_events(JournalReader(tmp_path / "data" / "journal"))],
        )
    )


@pytest_twisted.ensureDeferred
async def test_fifty_megabyte_message_is_accepted_intact(tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound(max_message_bytes="64MiB")})
    engine = await start_engine(cfg, tmp_path / "data")
    client = await client_for(engine, "in")
    big = (sample_adt("BIG-50") + "OBX|1|ED|PDF||^AP^^Base64^" + "QUJD" * (50 * 1024 * 1024 // 4) + "\r").encode()
    try:
        ack = await exchange(client, big, timeout=60)
        assert (ack.code, ack.control_id) == ("AA", "BIG-50")
        [event] = intake_events(JournalReader(tmp_path / "data" / "journal"))
        assert JournalReader(tmp_path / "data" / "journal").load_message(event.message_uid).raw == big
    finally:
        client.close()
        await engine.stopService()
