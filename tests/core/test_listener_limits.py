"""Engine-wide limits of the MLLP listeners, over real sockets on 127.0.0.1: a memory budget for
unfinished frames across connections, a connection limit per channel, a deadline per frame."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone

from engine.journal.reader import JournalReader
from engine.mllp.budget import BufferBudget
from engine.mllp.framing import frame
from engine.mllp.server import EveryFewSeconds
from tests.support import client_for, exchange, inbound, intake_events, sample_adt, sleep, start_engine, write_config


class Peer(Protocol):
    """A raw TCP peer recording what the engine sends back and when it hangs up."""

    def __init__(self):
        self.received = b""
        self.lost = Deferred()
        self.closed = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=connectionDone):
        self.closed = True
        self.lost.callback(None)


async def raw_peer(engine, channel="in") -> Peer:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", engine.port_of(channel)), Peer())


def sample(engine, name, **labels):
    return engine.metrics.registry.get_sample_value(name, {**labels, "node": engine.node})


async def engine_with(tmp_path, engine_settings=None, **channel):
    cfg = write_config(tmp_path / "cfg", {"in": inbound(**channel)}, engine=engine_settings)
    return await start_engine(cfg, tmp_path / "data")


class Reader:
    def __init__(self):
        self.paused = False

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


def test_budget_pauses_growing_readers_but_never_the_oldest_frame():
    budget = BufferBudget(100)
    old, young = Reader(), Reader()
    budget.update(old, 80)
    budget.update(young, 30)  # over the limit: the younger frame waits
    assert young.paused and not old.paused
    budget.update(old, 150)  # the oldest frame keeps going, whatever the total
    assert not old.paused
    budget.update(old, 0)  # its frame completed: room again
    assert not young.paused and budget.used == 30


def test_budget_resumes_readers_when_a_connection_goes_away():
    budget = BufferBudget(100)
    a, b, c = Reader(), Reader(), Reader()
    budget.update(a, 60)
    budget.update(b, 50)
    budget.update(c, 10)
    assert b.paused and c.paused
    budget.release(a)
    assert not b.paused and not c.paused and budget.used == 60


def test_budget_under_pressure_lets_the_new_oldest_finish():
    budget = BufferBudget(50)
    a, b = Reader(), Reader()
    budget.update(a, 40)
    budget.update(b, 40)
    assert b.paused
    budget.release(a)  # still over the limit with b alone? no: 40 <= 50, everyone resumes
    assert not b.paused
    c = Reader()
    budget.update(c, 60)
    assert c.paused
    budget.release(b)  # c is now the oldest and must be able to finish, even over the limit
    assert not c.paused


def test_rate_limited_log_counts_what_it_suppressed():
    now = [0.0]
    limiter = EveryFewSeconds(10.0, now=lambda: now[0])
    lines = []
    for t in (0.0, 1.0, 2.0, 11.0):
        now[0] = t
        limiter(lambda suppressed: lines.append((t, suppressed)))
    assert lines == [(0.0, 0), (11.0, 2)]


@pytest_twisted.ensureDeferred
async def test_connections_beyond_the_channel_limit_are_closed_and_counted(tmp_path):
    engine = await engine_with(tmp_path, max_connections=2)
    try:
        first, second = await raw_peer(engine), await raw_peer(engine)
        third = await raw_peer(engine)
        await third.lost
        refused = sample(engine, "pfi_connections_refused_total", channel="in")
        assert refused == 1.0
        assert not first.closed and not second.closed
        first.transport.loseConnection()
        await first.lost
        await sleep(0.05)
        client = await client_for(engine, "in")  # a slot is free again
        assert (await exchange(client, sample_adt("C-1").encode())).code == "AA"
        client.close()
        second.transport.loseConnection()
    finally:
        await engine.stopService()


@pytest_twisted.ensureDeferred
async def test_a_trickling_frame_hits_its_deadline_and_its_head_is_journaled(tmp_path):
    engine = await engine_with(tmp_path, frame_timeout=0.6, idle_timeout=30)
    try:
        peer = await raw_peer(engine)
        peer.transport.write(frame(sample_adt("T-OK").encode()))  # answered before the close
        partial = b"\x0b" + sample_adt("T-SLOW").encode()[:60]
        for i in range(0, len(partial), 4):  # a byte every few ms keeps the idle timer happy
            peer.transport.write(partial[i : i + 4])
            await sleep(0.05)
        await peer.lost
        assert b"MSA|AA|T-OK" in peer.received
        events = intake_events(JournalReader(engine.journal.data_dir))
        [timed_out] = [e for e in events if e.state == "rejected"]
        assert "frame timeout" in timed_out.detail
        raw = JournalReader(engine.journal.data_dir).load_message(timed_out.message_uid).raw
        assert raw and partial[1:].startswith(raw)  # what had arrived when the deadline struck
        closed = sample(engine, "pfi_connections_closed_total", channel="in", reason="frame_timeout")
        assert closed == 1.0
    finally:
        await engine.stopService()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("opening", [b"\x0b", b"ACKED\x0b"])
async def test_a_start_block_alone_hits_the_deadline(tmp_path, opening):
    """A frame opened and then nothing (no byte held yet): its deadline is armed all the same, also
    when the start block follows a whole frame in the same read."""
    engine = await engine_with(tmp_path, frame_timeout=0.3, idle_timeout=30)
    try:
        peer = await raw_peer(engine)
        whole = frame(sample_adt("S-OK").encode()) if opening.startswith(b"ACKED") else b""
        peer.transport.write(whole + b"\x0b")
        await peer.lost
        if whole:
            assert b"MSA|AA|S-OK" in peer.received
        assert sample(engine, "pfi_connections_closed_total", channel="in", reason="frame_timeout") == 1.0
    finally:
        await engine.stopService()


@pytest_twisted.ensureDeferred
async def test_complete_frames_never_hit_the_deadline(tmp_path):
    engine = await engine_with(tmp_path, frame_timeout=0.3)
    try:
        client = await client_for(engine, "in")
        for i in range(4):  # longer in total than the deadline, each frame well within it
            assert (await exchange(client, sample_adt(f"D-{i}").encode())).code == "AA"
            await sleep(0.15)
        assert not client.transport.disconnected
        client.close()
    finally:
        await engine.stopService()


@pytest_twisted.ensureDeferred
async def test_engine_budget_pauses_the_second_large_frame_until_the_first_completes(tmp_path):
    engine = await engine_with(tmp_path, {"max_buffered_bytes": "1MB"}, max_message_bytes="8MB")
    try:
        big = sample_adt("B-1") + "NTE|1||" + "x" * 900_000 + "\r"
        first, second = await raw_peer(engine), await raw_peer(engine)
        first.transport.write(b"\x0b" + big.encode())
        await sleep(0.3)
        second.transport.write(b"\x0b" + big.replace("B-1", "B-2").encode())
        await sleep(0.5)
        assert sample(engine, "pfi_inbound_reads_paused") == 1.0
        # Paused at the first read over the budget: the second frame is not all in memory.
        assert sample(engine, "pfi_inbound_buffered_bytes") < 2 * len(big)
        first.transport.write(b"\x1c\r")
        second.transport.write(b"\x1c\r")
        for _ in range(100):
            if b"MSA|AA|B-2" in second.received:
                break
            await sleep(0.05)
        assert b"MSA|AA|B-1" in first.received and b"MSA|AA|B-2" in second.received
        assert sample(engine, "pfi_inbound_buffered_bytes") == 0.0
        assert sample(engine, "pfi_inbound_reads_paused") == 0.0
        first.transport.loseConnection()
        second.transport.loseConnection()
    finally:
        await engine.stopService()


def test_listener_settings_have_safe_defaults():
    from engine.config.channels import MllpInSettings
    from engine.config.engine import EngineSettings

    settings = MllpInSettings(name="x", type="mllp-in", port=0)
    assert settings.frame_timeout == 120.0 and settings.max_connections == 64
    assert settings.listen_backlog >= 512
    assert EngineSettings().max_buffered_bytes == 256 * 1024 * 1024


@pytest.mark.parametrize("backlog", [7])
def test_listen_backlog_reaches_the_endpoint(backlog):
    from engine.config.channels import MllpInSettings
    from engine.tls import server_endpoint

    settings = MllpInSettings(name="x", type="mllp-in", port=0, listen_backlog=backlog)
    assert server_endpoint(reactor, settings)._backlog == backlog
