"""Several `pfi run` processes sharing one PostgreSQL journal (engine/journal/postgres.py).

Each node is a real engine process with its own listener (port 0, read back from its log) and
data directory; the nodes share the configuration, the journal database and one MLLP
destination (a HoldingPeer served by this test process's reactor). Each patient's messages are
sent one after the other (the next once the previous is ACKed), spread over the nodes, so the
journal order of one patient's messages is its send order whichever node took each. Every test
prints what it measured (`pytest -s`); every engine process is SIGKILLed at teardown.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from engine.mllp.client import connect, read_ack
from tests.routing.peers import HoldingPeer
from tests.support import ROOT, EngineProcess, inbound, sample_adt, write_config

ACK_TIMEOUT = 10.0


def _config(tmp_path, dest_port: int, lease_seconds: float = 15.0):
    routes = [{"name": "r", "match": {"channel": "in"}, "steps": [{"deliver": {"to": "dest"}}]}]
    channels = {
        "in": inbound(),  # port 0: every node binds its own
        # ack_timeout outlasts a HoldingPeer hold: sends held in flight must not time out.
        "dest": {
            "type": "mllp-out",
            "host": "127.0.0.1",
            "port": dest_port,
            "ack_timeout": 10,
            "retry": {"initial": 0.05, "maximum": 0.5, "jitter": 0},
        },
    }
    return write_config(tmp_path / "cfg", channels, routes, {"lease_seconds": lease_seconds})


class Cluster:
    """Engine processes on one journal; `kill_all` (fixture teardown) SIGKILLs what still runs."""

    def __init__(self, tmp_path, url: str):
        self.tmp_path, self.url = tmp_path, url
        self.nodes: dict[str, EngineProcess] = {}

    def start(self, config, names) -> None:
        for name in names:
            node = EngineProcess(config, self.tmp_path / f"data-{name}", ("--journal", self.url, "--node", name))
            self.nodes[name] = node
            node.launch()
        for node in self.nodes.values():
            node.wait_started()

    def ports(self) -> dict[str, int]:
        return {name: node.port_of("in") for name, node in self.nodes.items()}

    def leader_lines(self) -> list[dict]:
        """Every `journal.dispatch_leader` log line of every node, oldest first."""
        lines = []
        for node in self.nodes.values():
            lines += [json.loads(line) for line in node.output().splitlines() if '"journal.dispatch_leader"' in line]
        return sorted(lines, key=lambda entry: entry["timestamp"])

    def kill_all(self) -> None:
        for node in self.nodes.values():
            node.ensure_dead()


@pytest.fixture
def cluster(tmp_path, pg_url):
    nodes = Cluster(tmp_path, pg_url)
    try:
        yield nodes
    finally:
        nodes.kill_all()


@pytest.fixture
def destination():
    peer = HoldingPeer()
    yield peer
    if peer.port is not None:
        peer.port.stopListening()


def adt(key: str, seq: int) -> bytes:
    return sample_adt(f"{key}-{seq}").replace("IPP001", key).encode()


async def send_in_order(key: str, seqs: range, ports: list[int], acked: list[str], failovers: list[str]) -> None:
    """Send `key`'s messages `seqs` in order, message i to the node after message i-1's, one connection
    per node. When a node goes away before answering, the same message goes to the next node, as a
    sender with a fail-over list does (`failovers` records it); gives up when no node is left."""
    ports, clients = list(ports), {}
    for seq in seqs:
        message = adt(key, seq)
        while ports:
            port = ports[seq % len(ports)]
            try:
                if port not in clients:
                    clients[port] = await connect(reactor, "127.0.0.1", port, timeout=ACK_TIMEOUT)
                d = clients[port].send(message)
                d.addTimeout(ACK_TIMEOUT, reactor)
                ack = read_ack(await d)
            except Exception as exc:  # refused, reset or silent: that node is gone for this sender
                failovers.append(f"{key}-{seq}: {type(exc).__name__}")
                ports.remove(port)
                clients.pop(port, None)
                continue
            assert ack.code == "AA", f"{key}-{seq}: {ack.raw!r}"
            acked.append(f"{key}-{seq}")
            break
    for client in clients.values():
        client.close()


async def sleep(seconds: float) -> None:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


async def until(condition, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(every)


def sql(url: str, query: str, args=()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


def open_deliveries(url: str) -> int:
    return sql(url, "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'sending')")[0][0]


def pfi(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def arrivals_by_key(control_ids: list[str]) -> dict[str, list[int]]:
    """For each key, the sequence numbers in the order the destination got them."""
    arrivals: dict[str, list[int]] = {}
    for ctrl in control_ids:
        key, seq = ctrl.rsplit("-", 1)
        arrivals.setdefault(key, []).append(int(seq))
    return arrivals


def report(title: str, **numbers) -> None:
    print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


@pytest.mark.slow
@pytest.mark.parametrize("node_count", [2, 3])
@pytest_twisted.ensureDeferred
async def test_nodes_share_the_work_and_deliver_each_message_once_in_order(cluster, destination, tmp_path, node_count):
    keys, per_key = [f"P{i}" for i in range(8)], 50
    config = _config(tmp_path, await destination.listen())
    names = [f"node-{chr(97 + i)}" for i in range(node_count)]
    cluster.start(config, names)
    ports = list(cluster.ports().values())
    acked, failovers = [], []
    started = time.monotonic()
    await _pumps(keys, range(per_key), ports, acked, failovers)
    intake_seconds = time.monotonic() - started
    total = len(keys) * per_key
    assert failovers == [] and len(acked) == total
    await until(
        lambda: len(destination.received) >= total and open_deliveries(cluster.url) == 0,
        timeout=20,
        what="every message delivered",
    )
    report(
        f"{node_count} nodes",
        messages=total,
        intake_s=f"{intake_seconds:.2f}",
        all_delivered_s=f"{time.monotonic() - started:.2f}",
    )

    delivered = destination.control_ids()
    assert sorted(delivered) == sorted(acked), "each message exactly once"
    for key, seqs in arrivals_by_key(delivered).items():
        assert seqs == list(range(per_key)), f"order broken for {key}"

    tail = pfi("tail", "--config", str(config), "--journal", cluster.url, "-n", "100000")
    assert tail.returncode == 0, tail.stderr
    rows = tail_rows(tail.stdout)
    received = Counter(node for node, _, state in rows if state == "received")
    sent = Counter(node for node, _, state in rows if state == "sent")
    report(f"{node_count} nodes", received_by=dict(received), sent_by=dict(sent))
    assert set(received) == set(names) and sum(received.values()) == total  # every node took its share
    assert set(sent) <= set(names) and sum(sent.values()) == total
    leaders = {entry["node"] for entry in cluster.leader_lines()}
    assert len(leaders) == 1, f"one dispatch leader expected without a crash: {leaders}"
    routed = Counter(node for node, _, state in rows if state == "queued")
    assert set(routed) == leaders, "the leader plans every node's messages"

    queue = pfi("queue", "--config", str(config), "--journal", cluster.url)
    assert queue.returncode == 0, queue.stderr
    assert _queue_row(queue.stdout, "dest") == ["0", "-", "-", "0", "0", "0"]  # pending..dead, held


def tail_rows(output: str) -> list[tuple[str, str, str]]:
    """(node, control id, state) of each `pfi tail` line: `stamp  uid  channel  type  ctrl=ID  state
    [patient=***]  @node  [detail]`."""
    rows = []
    for line in output.splitlines():
        fields = line.split("  ")
        ctrl = next(i for i, f in enumerate(fields) if f.startswith("ctrl="))
        node = next(f for f in fields[ctrl + 1 :] if f.startswith("@"))
        rows.append((node.removeprefix("@"), fields[ctrl].removeprefix("ctrl="), fields[ctrl + 1]))
    return rows


def _queue_row(output: str, destination: str) -> list[str]:
    return next(line.split()[1:] for line in output.splitlines() if line.split()[:1] == [destination])


def _pumps(keys, seqs: range, ports: list[int], acked: list[str], failovers: list[str]) -> defer.Deferred:
    """One sender per key, each starting on a different node of `ports`."""
    n = len(ports)
    return defer.gatherResults(
        [
            defer.Deferred.fromCoroutine(send_in_order(k, seqs, ports[i % n :] + ports[: i % n], acked, failovers))
            for i, k in enumerate(keys)
        ]
    )


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sigkill_of_the_dispatch_leader_under_load(cluster, destination, tmp_path):
    keys, first_wave, per_key = [f"K{i}" for i in range(8)], 30, 80
    total = len(keys) * per_key
    config = _config(tmp_path, await destination.listen(), lease_seconds=2)
    acked, failovers = [], []
    started = time.monotonic()
    # The leader starts alone and takes a first wave: it is then the only sender, and the
    # destination holds its ACKs back at a moment it has sends in flight (its crash window); they
    # can neither finish nor time out (ack_timeout 10 s) until the destination lets them go.
    leader = "node-a"
    cluster.start(config, [leader])
    assert [entry["node"] for entry in cluster.leader_lines()] == [leader]
    wave = _pumps(keys, range(first_wave), [cluster.ports()[leader]], acked, failovers)
    await until(
        lambda: len(destination.received) >= len(keys) * first_wave // 4, timeout=20, what="deliveries under way"
    )
    await _hold_while_sending(destination, cluster.url, leader)
    await wave
    cluster.start(config, ["node-b", "node-c"])
    ports = cluster.ports()
    survivors = ["node-b", "node-c"]
    pumps = _pumps(keys, range(first_wave, per_key), [ports[n] for n in [leader, *survivors]], acked, failovers)
    await until(lambda: len(acked) >= total // 2, timeout=20, what="intake under way on every node")
    acked_before, delivered_before = len(acked), len(destination.received)
    killed_at = time.time()
    cluster.nodes[leader].kill()
    await sleep(0.2)  # the killed node's open transactions end; its leases outlive this (2 s)
    crash_window = _sending_ids(cluster.url, leader)
    destination.release()
    assert crash_window, "the leader was killed with sends in flight"
    await pumps
    intake_seconds = time.monotonic() - started
    assert sorted(acked) == sorted(f"{k}-{i}" for k in keys for i in range(per_key)), "the survivors took the rest"
    await until(
        lambda: set(acked) <= set(destination.control_ids()) and open_deliveries(cluster.url) == 0,
        timeout=20,
        what="every ACKed message delivered",
    )
    all_delivered_seconds = time.monotonic() - started

    takeover = [entry for entry in cluster.leader_lines() if entry["node"] in survivors]
    assert takeover, "a surviving node took the dispatch lock over"
    reaped = dict(
        sql(
            cluster.url,
            "SELECT m.control_id, min(e.at) FROM events e JOIN messages m ON m.uid ="
            " e.message_uid WHERE e.state = 'lease-expired' AND e.detail LIKE %s GROUP BY 1",
            (f"%node {leader} stopped renewing%",),
        )
    )
    assert set(reaped) == crash_window, "the killed node's sends in flight are handed back when its leases expire"
    resent_by = dict(
        sql(
            cluster.url,
            "SELECT m.control_id, e.node FROM events e JOIN messages m ON m.uid ="
            " e.message_uid WHERE e.state = 'sent' AND m.control_id = ANY(%s)",
            (list(reaped),),
        )
    )
    assert set(resent_by) == set(reaped) and set(resent_by.values()) <= set(survivors)
    assert sql(cluster.url, "SELECT state, count(*) FROM deliveries GROUP BY state") == [("done", total)], (
        "one delivery per message, whoever planned it"
    )

    delivered = destination.control_ids()
    twice = sorted(ctrl for ctrl, n in Counter(delivered).items() if n > 1)
    assert set(twice) <= set(reaped), "a message reaches the destination twice only from the crash window"
    for key, seqs in arrivals_by_key(delivered).items():
        assert list(dict.fromkeys(seqs)) == list(range(per_key)), f"order broken for {key}"
    report(
        "sigkill leader",
        messages=total,
        acked_before_kill=acked_before,
        delivered_before_kill=delivered_before,
        leader_sending_at_kill=len(crash_window),
        sender_failovers=len(failovers),
        duplicates_at_intake=_count_state(cluster.url, "duplicate"),
        intake_s=f"{intake_seconds:.2f}",
        all_delivered_s=f"{all_delivered_seconds:.2f}",
        takeover_s=f"{_epoch(takeover[0]['timestamp']) - killed_at:.2f}",
        reaped=len(reaped),
        reaped_after_s=f"{min(reaped.values()) - killed_at:.2f}",
        delivered_twice=len(twice),
    )


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def _hold_while_sending(destination: HoldingPeer, url: str, node: str, timeout: float = 20) -> None:
    """Hold the destination's ACKs at a moment `node` has sends in flight (then they stay so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await until(
            lambda: _sending(url, node) > 0, timeout=deadline - time.monotonic(), what=f"{node} sending", every=0.002
        )
        destination.hold()
        await sleep(0.05)  # an ACK written just before may still end the batch in progress
        if _sending(url, node) > 0:
            return
        destination.release()
    raise AssertionError(f"{node} never had sends in flight")


def _sending(url: str, node: str) -> int:
    return sql(url, "SELECT count(*) FROM deliveries WHERE state = 'sending' AND node = %s", (node,))[0][0]


def _sending_ids(url: str, node: str) -> set[str]:
    """Control ids of the messages whose delivery `node` is sending."""
    return {
        row[0]
        for row in sql(
            url,
            "SELECT m.control_id FROM deliveries d JOIN messages m ON m.uid ="
            " d.message_uid WHERE d.state = 'sending' AND d.node = %s",
            (node,),
        )
    }


def _count_state(url: str, state: str) -> int:
    return sql(url, "SELECT count(*) FROM messages WHERE state = %s", (state,))[0][0]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_message_sent_to_two_nodes_is_processed_once(cluster, destination, tmp_path):
    config = _config(tmp_path, await destination.listen())
    cluster.start(config, ["node-a", "node-b"])
    ports = cluster.ports()
    clients = {name: await connect(reactor, "127.0.0.1", port) for name, port in ports.items()}
    try:
        # One after the other: node-b answers with node-a's ACK.
        first = read_ack(await clients["node-a"].send(adt("D0", 0)))
        again = read_ack(await clients["node-b"].send(adt("D0", 0)))
        assert first.code == again.code == "AA" and again.raw == first.raw
        # At the same moment on both nodes: one of them stores it, the other answers as a duplicate.
        pairs = [[clients[name].send(adt(f"D{i}", 0)) for name in ("node-a", "node-b")] for i in range(1, 21)]
        for i, pair in enumerate(pairs, start=1):
            acks = [read_ack(raw) for raw in await defer.gatherResults(pair)]
            assert [a.code for a in acks] == ["AA", "AA"] and acks[0].raw == acks[1].raw, f"D{i}-0"
    finally:
        for client in clients.values():
            client.close()
    sent = [f"D{i}-0" for i in range(21)]
    await until(
        lambda: len(destination.received) >= len(sent) and open_deliveries(cluster.url) == 0,
        timeout=20,
        what="every message delivered",
    )
    assert sorted(destination.control_ids()) == sorted(sent), "each message delivered once"

    tail = pfi("tail", "--config", str(config), "--journal", cluster.url, "-n", "100000")
    assert tail.returncode == 0, tail.stderr
    rows = tail_rows(tail.stdout)
    for ctrl in sent:
        intake = sorted((state, node) for node, c, state in rows if c == ctrl and state in ("received", "duplicate"))
        assert [state for state, _ in intake] == ["duplicate", "received"], f"{ctrl}: {intake}"
        assert {node for _, node in intake} == {"node-a", "node-b"}, f"{ctrl}: both nodes answered"
    assert ("node-b", "D0-0", "duplicate") in rows
    stored_by = Counter(node for node, _, state in rows if state == "received")
    report(
        "duplicates",
        messages=len(sent),
        sends=2 * len(sent),
        stored_by=dict(stored_by),
        duplicate_events=sum(1 for row in rows if row[2] == "duplicate"),
    )
