"""`routing_process: true`: intake in `pfi run`, routing and deliveries in its child process
(engine/routing/process.py). Real processes, real sockets: every message reaches the destination,
the child's counters show on the engine's /metrics, a killed child is replaced without losing a
message, and stopping the engine (or killing it) leaves no routing process behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.internet.error import ProcessTerminated
from twisted.python.failure import Failure

from engine.config.engine import EngineSettings
from engine.metrics import EngineMetrics
from engine.mllp.client import connect
from engine.routing.dispatcher import CLAIM_BATCH_ROUTING_PROCESS
from engine.routing.process import CountsForwarder, add_counts
from engine.sim.mllp import MllpPeer
from engine.hl7.scan import scan
from tests.support import EngineProcess, exchange, process_alive, sample_adt, sleep, until, write_config

ROUTING_STARTED = '"role": "routing", "event": "engine.started"'


def _config(tmp_path, sink_port: int, console: bool = False):
    settings = {"routing_process": True, "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0}}
    return write_config(
        tmp_path / "cfg",
        {
            "in": {"type": "mllp-in", "host": "127.0.0.1", "port": 0},
            "ris": {"type": "mllp-out", "host": "127.0.0.1", "port": sink_port, "parallel_keys": 2},
        },
        routes=[{"name": "to-ris", "match": {"channel": "in"}, "steps": [{"deliver": {"to": ["ris"]}}]}],
        engine={**settings, "console": {"port": 0}} if console else settings,
    )


def _arrived(sink: MllpPeer) -> list[str]:
    return [scan(raw).control_id for raw in sink.received]


async def _send(engine: EngineProcess, ids: list[str]) -> None:
    client = await connect(reactor, "127.0.0.1", engine.port_of("in"))
    try:
        for control_id in ids:
            assert (await exchange(client, sample_adt(control_id).encode())).code == "AA"
    finally:
        client.close()


def _metric(engine: EngineProcess, pattern: str) -> float:
    """The sum of the samples of the engine's /metrics whose line matches `pattern` (up to the value)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{engine.port_of('metrics')}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{pattern} (\S+)$", text, re.M))


def _deliveries_done(engine: EngineProcess) -> float:
    return _metric(engine, r'pfi_deliveries_total\{[^}]*outcome="done"[^}]*\}')


@contextlib.asynccontextmanager
async def _engine_with_routing_process(tmp_path, console: bool = False):
    """`pfi run` with `routing_process: true` (and its console) and a RIS answering AA; every
    process it started is gone afterwards, whatever happened (by PID)."""
    sink = MllpPeer("RIS")
    engine = EngineProcess(_config(tmp_path, sink.listen(reactor), console), tmp_path / "data")
    try:
        engine.start(wait_for=ROUTING_STARTED)
        yield engine, sink
    finally:
        engine.ensure_dead()
        await sink.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_routing_process_delivers_and_its_counters_show_on_the_engine_metrics(tmp_path):
    async with _engine_with_routing_process(tmp_path) as (engine, sink):
        assert len(engine.routing_processes()) == 1
        started = [json.loads(line) for line in engine.output().splitlines() if '"engine.started"' in line]
        # one log stream, each line saying which process wrote it
        assert sorted((e["role"], e.get("process")) for e in started) == [("intake", None), ("routing", "routing")]
        ids = [f"RP-{i}" for i in range(40)]
        await _send(engine, ids)
        await until(lambda: set(ids) <= set(_arrived(sink)), 20, "every message at the RIS")
        counted: list[float] = []

        async def all_counted() -> bool:
            counted.append(await threads.deferToThread(_deliveries_done, engine))
            return counted[-1] >= len(ids)

        deadline = time.monotonic() + 10
        while not await all_counted() and time.monotonic() < deadline:
            await sleep(0.2)
        assert counted[-1] == len(ids)  # forwarded by the child, served by the parent
        assert sorted(_arrived(sink)) == sorted(ids)  # each once: nothing was restarted


@pytest_twisted.ensureDeferred
async def test_a_killed_routing_process_is_replaced_and_no_message_is_lost(tmp_path):
    async with _engine_with_routing_process(tmp_path) as (engine, sink):
        first = engine.routing_processes()[0]
        ids = [f"K-{i}" for i in range(300)]
        sending = defer.ensureDeferred(_send(engine, ids))
        await until(lambda: len(sink.received) >= 20, 20, "the first deliveries")
        os.kill(first, signal.SIGKILL)  # mid-stream: sends in flight, messages still to route
        await sending  # intake never stopped answering
        await until(lambda: len(engine.routing_processes()) == 2, 10, "a new routing process")
        await until(lambda: set(ids) <= set(_arrived(sink)), 30, "every message at the RIS")
        exited = [json.loads(line) for line in engine.output().splitlines() if '"routing.process_exited"' in line]
        assert [e["signal"] for e in exited] == [signal.SIGKILL]  # what the operator reads
        restarts = await threads.deferToThread(_metric, engine, r"pfi_routing_process_restarts_total\{[^}]*\}")
        up = await threads.deferToThread(_metric, engine, r"pfi_routing_process_up\{[^}]*\}")
        assert (restarts, up) == (1.0, 1.0)  # what an operator's alert reads
        # At least once: only what was in flight when it died may come twice (same MSH-10).
        arrived = _arrived(sink)
        assert len(arrived) - len(set(arrived)) <= 64


@pytest.mark.parametrize("how", ["terminate", "kill"])
@pytest_twisted.ensureDeferred
async def test_no_routing_process_outlives_the_engine(tmp_path, how):
    """SIGTERM: the engine stops its children (routing, console) before its journal, each once
    though a terminal's Ctrl-C reached it first. SIGKILL: the routing process reads the end of its
    stdin and stops by itself."""
    async with _engine_with_routing_process(tmp_path, console=how == "terminate") as (engine, sink):
        child = engine.routing_processes()[0]
        await _send(engine, ["S-1"])
        await until(lambda: "S-1" in _arrived(sink), 20, "the message at the RIS")
        if how == "terminate":
            await until(lambda: '"console.started"' in engine.output(), 20, "the console")
            [console] = [
                json.loads(line)["pid"] for line in engine.output().splitlines() if "console.process_started" in line
            ]
            for pid in (child, console):
                os.kill(pid, signal.SIGINT)  # as a terminal's Ctrl-C to the group, before their parent's TERM
            assert await threads.deferToThread(engine.terminate) == 0
            assert not process_alive(child) and not process_alive(console)
            assert "Traceback" not in engine.output()
        else:
            engine.kill()
            await until(lambda: not process_alive(child), 20, "the orphaned routing process to stop")


def test_a_routing_process_needs_the_sqlite_journal():
    with pytest.raises(ValueError, match="routing_process"):
        EngineSettings(routing_process=True, journal="postgresql://pfi@127.0.0.1/pfi")
    assert EngineSettings(routing_process=True).routing_process


def test_counter_increments_travel_once_and_bad_lines_are_ignored(tmp_path):
    child, parent = EngineMetrics(node="n"), EngineMetrics(node="n")
    parent.deliveries.labels("ris", "done").inc(5)  # the parent's own count stays
    forwarder = CountsForwarder(child)
    child.deliveries.labels("ris", "done").inc(3)
    child.journal_events.labels("routed", "in").inc(2)
    for line in (json.dumps(forwarder.increments()).encode(), json.dumps(forwarder.increments()).encode()):
        add_counts(parent, line)  # the second line is empty: nothing counted twice
    child.deliveries.labels("ris", "retry").inc()
    add_counts(parent, json.dumps(forwarder.increments()).encode())
    for bad in (b"not json", b'[["pfi_deliveries", {"nope": 1}, 1]]', b'[["other", {}, 1]]', b"{}"):
        add_counts(parent, bad)
    assert parent.deliveries.labels("ris", "done")._value.get() == 8
    assert parent.deliveries.labels("ris", "retry")._value.get() == 1
    assert parent.journal_events.labels("routed", "in")._value.get() == 2


def test_the_intake_process_never_sends_whatever_wakes_its_dispatcher(tmp_path):
    """Its connectors serve the queue gauges, the certificate watch and the mailbox pollers; its
    dispatcher has no worker, so a wake-up (a ZAM queued by a mailbox poller) sends nothing here:
    the routing process is told instead."""
    from engine.config.load import load_config
    from engine.service import INTAKE, Engine

    config = load_config(_config(tmp_path, 1))
    engine = Engine(config, tmp_path / "data", reactor, with_metrics=False, role=INTAKE)
    engine.dispatcher.wake(["ris"])
    assert engine.dispatcher.workers == {} and "ris" in engine.connectors
    assert engine.routing_child is not None and engine.journal.on_received == engine.routing_child.wake


def test_the_routing_process_reads_which_wake_up_it_got(tmp_path):
    """`r`: routable messages (the dispatcher looks); `q`: deliveries queued by the intake
    process (every worker looks at its queue)."""
    from engine.config.load import load_config
    from engine.routing.process import _WakeReader
    from engine.service import ROUTING, Engine

    engine = Engine(load_config(_config(tmp_path, 1)), tmp_path / "data", reactor, with_metrics=False, role=ROUTING)
    assert engine.dispatcher.claim_limit == CLAIM_BATCH_ROUTING_PROCESS  # its writer answers no intake
    kicked: list[bool] = []
    engine.dispatcher.kick = lambda *_: kicked.append(True)  # type: ignore[method-assign]
    reader = _WakeReader(engine.dispatcher, lambda: None)
    reader.dataReceived(b"r")
    assert kicked and not engine.dispatcher.workers["ris"].busy
    reader.dataReceived(b"rq")
    assert engine.dispatcher.workers["ris"].busy  # draining its queue (the journal is not open here)
    engine.dispatcher.workers["ris"]._stopped = True


class _SpawningClock(task.Clock):
    """A clock that also records spawnProcess calls: the restart policy alone. The real spawn and
    restart are the killed-child test's (a `pfi run` reactor reaps its children on SIGCHLD; the
    test reactor does not, see tests/core/test_operator_output.py)."""

    def __init__(self):
        super().__init__()
        self.spawned: list[float] = []

    def spawnProcess(self, child, executable, argv, env=None, childFDs=None):
        self.spawned.append(self.seconds())
        child.makeConnection(_NoTransport(len(self.spawned)))


class _NoTransport:
    def __init__(self, pid: int):
        self.pid = pid


def test_a_routing_process_that_keeps_dying_young_is_restarted_less_and_less_often():
    """A broken install must not respawn a process every second for ever: the delay doubles
    while each one dies within LIVED_LONG of its start, a crash after a long life waits the
    first delay again, and stopping the engine ends the restarts."""
    from engine.childprocess import LIVED_LONG, RESTART_AFTER
    from engine.routing.process import RoutingChild

    clock, metrics = _SpawningClock(), EngineMetrics(node="n")
    child = RoutingChild(clock, ["pfi"], metrics)
    child.startService()
    for _ in range(7):  # each child exits at once
        child.child.processEnded(Failure(ProcessTerminated(exitCode=3)))
        clock.advance(child.restart_after)
    gaps = [b - a for a, b in zip(clock.spawned, clock.spawned[1:])]
    assert gaps == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    clock.advance(LIVED_LONG)  # this one lived long: a crash, not a failure to start
    child.child.processEnded(Failure(ProcessTerminated(signal=9)))
    assert child.restart_after == RESTART_AFTER
    child.stopService()  # its child has ended: nothing to signal
    clock.advance(RESTART_AFTER)
    assert len(clock.spawned) == 8  # the restart due when it stopped never came
    assert metrics.routing_process_restarts._value.get() == 7
    assert metrics.routing_process_up._value.get() == 0


@pytest_twisted.ensureDeferred
async def test_a_new_routing_process_waits_for_the_lock_of_the_one_finishing(tmp_path):
    """An orphan (its intake process was killed) may still be sending when the restarted engine
    starts a new routing process: the new one waits, so the two never share the queues."""
    from engine.routing.process import take_routing_lock

    first = await take_routing_lock(tmp_path)
    second = defer.ensureDeferred(take_routing_lock(tmp_path))
    await sleep(0.3)
    assert not second.called
    os.close(first)  # the orphan exits
    os.close(await second)
