"""The engine is one ordered service tree: parts start after the ones they need are up and stop
in reverse, each waiting for the next (a listener never outlives the journal)."""

import pytest_twisted

from engine.service import Sequence, Step
from tests.support import client_for, exchange, inbound, sample_adt, start_engine, write_config


def names(tree) -> list[str]:
    return [child.name for child in tree]


@pytest_twisted.ensureDeferred
async def test_engine_tree_order_and_reverse_stop(tmp_path):
    config = write_config(
        tmp_path / "cfg", {"ris": inbound(), "drimbox": {"type": "mllp-out", "host": "127.0.0.1", "port": 9}}
    )
    engine = await start_engine(config, tmp_path / "data")
    order = names(engine)
    assert order.index("patients") < order.index("journal") < order.index("dispatcher") < order.index("ris")
    assert names(engine.getServiceNamed("dispatcher")) == [
        "reset-in-flight",
        "resume-follow-ups",
        "worker-drimbox",
        "planner",
    ]
    assert all(child.running for child in engine)
    client = await client_for(engine, "ris")
    ack = await exchange(client, sample_adt("TREE-1").encode())
    assert (ack.code, ack.control_id) == ("AA", "TREE-1")
    client.transport.loseConnection()
    await engine.stopService()
    assert not any(child.running for child in engine)
    assert engine.listeners["ris"].port.connected == 0  # stopped listening


@pytest_twisted.ensureDeferred
async def test_sequence_waits_for_each_child_and_stops_in_reverse():
    from twisted.internet import defer, reactor

    seen = []

    def slow(name):
        async def run():
            d = defer.Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
            seen.append(name)

        return run

    tree = Sequence()
    for name in ("a", "b", "c"):
        Step(name, start=slow(f"start {name}"), stop=slow(f"stop {name}")).setServiceParent(tree)
    await tree.startService()
    await tree.stopService()
    assert seen == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_a_periodic_task_that_fails_runs_again():
    """TimerService stops for good at the first failure; the engine's periodic tasks (retention,
    the follow-up sweep, the certificate watch) must outlive one: logged, and the next run comes."""
    from twisted.internet import defer, task

    from engine.service import periodic

    clock, calls = task.Clock(), []

    def flaky():
        calls.append(clock.seconds())
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        if len(calls) == 2:
            return defer.fail(RuntimeError("still locked"))
        return None

    timer = periodic("flaky", 10.0, flaky, clock)
    timer.startService()
    try:
        for _ in range(3):
            clock.advance(10.0)
        assert calls == [0.0, 10.0, 20.0, 30.0]
    finally:
        timer.stopService()
