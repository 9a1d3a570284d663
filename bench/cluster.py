"""Cluster benchmark: ACKed and routed messages/s for 1, 2 and 3 engine nodes sharing one
PostgreSQL journal, beside one node on the embedded SQLite journal, with where the CPU went.

    .venv/bin/python bench/cluster.py [--seconds 4] [--connections 8] [--nodes 1,2,3]

Each node is a `pfi run` subprocess with its own config dir (temp dir), its own MLLP listener and
metrics off; one route sends everything to one MLLP sink (in this process, answers AA at once).
The load is closed loop, `--connections` in total spread round robin over the nodes' listeners.
*Routed* is from sending the inbound message to the sink receiving it (the sink ACKs at once).
The bench creates its own database on --pg (pfi_bench_<random>), runs `pfi db upgrade` on it,
empties it between configurations and drops it at the end; every node is stopped (SIGTERM, then
SIGKILL) even when the bench fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402

from bench.common import (
    ROOT,
    Sink,
    adt_message,
    free_port,
    oru_message,
    percentile,
    run_load,  # noqa: E402
    sleep,
    start_engine_process,
    stop_process,
)
from engine.journal import postgres, sqlite  # noqa: E402

ADMIN_URL = os.environ.get("PFI_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MESSAGES = (("ADT ~1KB", adt_message), ("ORU ~40KB", oru_message))
CLK_TCK = os.sysconf("SC_CLK_TCK")
DRAIN_LIMIT = 40.0  # seconds to wait for the routing backlog after the load stops


# -- engine nodes ----------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    port: int
    log_path: Path
    proc: object = None


def write_node_config(directory: Path, node: str, port: int, sink_port: int, journal: str) -> Path:
    """One node's config dir: an inbound listener, one MLLP destination, one route to it."""
    cfg = directory / "cfg"
    (cfg / "channels").mkdir(parents=True)
    (cfg / "channels" / "in.yaml").write_text(f"type: mllp-in\nport: {port}\nmax_message_bytes: 64MiB\n")
    (cfg / "channels" / "dest0.yaml").write_text(
        f"type: mllp-out\nhost: 127.0.0.1\nport: {sink_port}\nqueue_key: PID-3.1\nparallel_keys: 4\n"
    )
    (cfg / "routes.yaml").write_text(
        "routes:\n  - name: bench\n    match: {channel: in}\n    steps:\n      - deliver: {to: [dest0]}\n"
    )
    settings = f"log_level: info\nmetrics:\n  enabled: false\nnode: {node}\n"
    if journal != "sqlite":
        settings += f"journal: {journal}\n"
    (cfg / "pfi.yaml").write_text(settings)
    return cfg


def start_nodes(workdir: Path, journal: str, count: int, sink_port: int, started: list) -> list[Node]:
    nodes = []
    for i in range(1, count + 1):
        directory = workdir / f"{'pg' if journal != 'sqlite' else 'sqlite'}{count}-n{i}"
        node = Node(f"n{i}", free_port(), directory / "engine.log")
        cfg = write_node_config(directory, node.name, node.port, sink_port, journal)
        node.proc = start_engine_process(
            ["run", "--config", str(cfg), "--data", str(directory / "data")], node.log_path, started=started
        )
        if "engine.started" not in node.log_path.read_text():
            raise RuntimeError(f"node {node.name} did not start:\n{node.log_path.read_text()[-2000:]}")
        nodes.append(node)
    return nodes


def logged_durability(node: Node) -> str:
    """What the node said at start (`engine.started ... durability=`)."""
    for line in node.log_path.read_text().splitlines():
        if '"engine.started"' in line:
            return json.loads(line).get("durability", "?")
    return "?"


def logged_errors(nodes: list[Node]) -> list[str]:
    return [
        f"{n.name}: {line[:300]}"
        for n in nodes
        for line in n.log_path.read_text().splitlines()
        if '"level": "error"' in line or "Traceback" in line
    ]


# -- the database ----------------------------------------------------------------------------


def url_for(database: str) -> str:
    return f"{ADMIN_URL.rpartition('/')[0]}/{database}"


def upgrade(workdir: Path, url: str) -> None:
    """`pfi db upgrade`, as an operator runs it once before starting the nodes."""
    import subprocess

    cfg = workdir / "db-cfg"
    (cfg / "channels").mkdir(parents=True, exist_ok=True)
    (cfg / "routes.yaml").write_text("routes: []\n")
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "db", "upgrade", "--config", str(cfg), "--journal", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"pfi db upgrade failed: {out.stdout}{out.stderr}")


def empty_journal(url: str) -> None:
    """Each configuration starts on empty tables (index sizes otherwise grow across cases)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE messages, payloads, events, deliveries, nodes RESTART IDENTITY")


# -- CPU and server counters -----------------------------------------------------------------


def proc_cpu(path: str) -> float | None:
    """utime + stime in seconds from a /proc/<pid>[/task/<tid>]/stat file; None when gone."""
    try:
        with open(path) as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


@dataclass
class Snapshot:
    at: float
    machine: tuple[float, float]
    bench: float
    nodes: dict[int, tuple[float, float]]  # pid -> (whole process, reactor thread)
    pg: dict[int, tuple[str, float]]  # pid -> (group, cpu)
    commits: int
    wal_syncs: int


class Probe:
    """CPU of every party (nodes, PostgreSQL processes, this load generator, the rest of the
    machine) and the server's commit and WAL sync counters, sampled around each case."""

    def __init__(self, admin: psycopg.Connection, database: str | None, nodes: list[Node]):
        self.admin, self.database, self.nodes = admin, database, nodes
        self.own_backend = admin.execute("SELECT pg_backend_pid()").fetchone()[0]

    def snapshot(self) -> Snapshot:
        nodes = {}
        for node in self.nodes:
            pid = node.proc.pid
            nodes[pid] = (proc_cpu(f"/proc/{pid}/stat") or 0.0, proc_cpu(f"/proc/{pid}/task/{pid}/stat") or 0.0)
        pg = {}
        for pid, datname, backend_type in self.admin.execute(
            "SELECT pid, datname, backend_type FROM pg_stat_activity"
        ).fetchall():
            if pid == self.own_backend:
                continue
            cpu = proc_cpu(f"/proc/{pid}/stat")
            if cpu is not None:
                pg[pid] = (self._group(datname, backend_type), cpu)
        commits = 0
        if self.database:
            commits = self.admin.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname=%s", (self.database,)
            ).fetchone()[0]
        wal_syncs = self.admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()[0]
        usage = os.times()
        return Snapshot(time.perf_counter(), machine_cpu(), usage.user + usage.system, nodes, pg, commits, wal_syncs)

    def _group(self, datname, backend_type) -> str:
        if datname == self.database and self.database:
            return "pg_backends"
        if datname is None and backend_type != "client backend":
            return "pg_server"  # wal writer, checkpointer, background writer...
        return "pg_other"  # other databases: neighbours on this shared server


@dataclass
class Usage:
    """Cores used during a case (CPU seconds / wall seconds) per party."""

    wall: float
    cores: dict[str, float] = field(default_factory=dict)
    reactor_max: float = 0.0  # the busiest node's reactor (main) thread, in cores
    commits: int = 0
    wal_syncs: int = 0


def usage_between(a: Snapshot, b: Snapshot) -> Usage:
    wall = max(b.at - a.at, 1e-6)
    cores: dict[str, float] = {"nodes": 0.0, "pg_backends": 0.0, "pg_server": 0.0, "pg_other": 0.0}
    reactors = []
    for pid, (total, main) in b.nodes.items():
        total0, main0 = a.nodes.get(pid, (0.0, 0.0))
        cores["nodes"] += (total - total0) / wall
        reactors.append((main - main0) / wall)
    for pid, (group, cpu) in b.pg.items():
        cores[group] += (cpu - a.pg.get(pid, (group, 0.0))[1]) / wall  # a new backend: all its CPU
    cores["bench"] = (b.bench - a.bench) / wall
    busy = (b.machine[0] - a.machine[0]) / wall
    ours = sum(cores.values()) - cores["pg_other"]
    cores["rest"] = max(busy - ours, 0.0)  # other processes, other users' jobs, kernel threads
    cores["idle"] = max((b.machine[1] - a.machine[1]) / wall - busy, 0.0)
    return Usage(wall, cores, max(reactors, default=0.0), b.commits - a.commits, b.wal_syncs - a.wal_syncs)


# -- one case ---------------------------------------------------------------------------------


@dataclass
class CaseResult:
    journal: str
    nodes: int
    message: str
    ack: dict
    routed_rate: float
    routed_p50: float
    routed_p99: float
    delivered: int
    usage: Usage
    durability: str = ""


async def run_case(
    nodes: list[Node], sink: Sink, probe: Probe, template: bytes, connections: int, seconds: float, tag: str
) -> tuple[dict, float, list[float], int, Usage]:
    record: dict[str, tuple[float, float]] = {}
    sink.arrived.clear()
    before = probe.snapshot()
    ack = await run_load([n.port for n in nodes], template, connections, seconds, tag, record)
    drain_deadline = time.perf_counter() + DRAIN_LIMIT
    while time.perf_counter() < drain_deadline and not record.keys() <= sink.arrived.keys():
        await sleep(0.05)
    after = probe.snapshot()
    arrived = {c: t for c, t in sink.arrived.items() if c in record}
    latencies = [t - record[c][0] for c, t in arrived.items()]
    last = max(arrived.values(), default=ack["started"])
    routed_rate = len(arrived) / max(last - ack["started"], 1e-6)
    return ack, routed_rate, latencies, len(arrived), usage_between(before, after)


async def run_configuration(
    workdir: Path,
    journal: str,
    count: int,
    sink: Sink,
    sink_port: int,
    admin: psycopg.Connection,
    database: str | None,
    args,
    started: list,
) -> list[CaseResult]:
    nodes = start_nodes(workdir, journal, count, sink_port, started)
    probe = Probe(admin, database, nodes)
    label = "sqlite" if journal == "sqlite" else "postgresql"
    results = []
    try:
        await run_case(nodes, sink, probe, adt_message(), args.connections, args.warmup, f"W{label}{count}-")
        for name, make in MESSAGES:
            ack, rate, latencies, delivered, usage = await run_case(
                nodes, sink, probe, make(), args.connections, args.seconds, f"{label[0]}{count}{name[:3]}-"
            )
            results.append(
                CaseResult(
                    label,
                    count,
                    name,
                    ack,
                    rate,
                    percentile(latencies, 50) * 1000,
                    percentile(latencies, 99) * 1000,
                    delivered,
                    usage,
                )
            )
    finally:
        for node in nodes:
            stop_process(node.proc)
    errors = logged_errors(nodes)
    if errors:
        print(f"\n{len(errors)} error line(s) in the {label} x{count} node logs, first ones:", *errors[:5], sep="\n  ")
    for r in results:
        r.durability = logged_durability(nodes[0])
    return results


# -- report -----------------------------------------------------------------------------------


def print_tables(results: list[CaseResult], connections: int, seconds: float) -> None:
    print(
        f"\nCluster benchmark - {connections} connections in total, closed loop, {seconds:g} s per case, "
        f"1 route -> 1 MLLP sink; {os.cpu_count()} CPUs"
    )
    print(
        f"{'message':<10} {'journal':<10} {'nodes':>5} | {'ACK msg/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'err':>4} | {'routed msg/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'delivered':>13}"
    )
    for name, _ in MESSAGES:
        for r in (r for r in results if r.message == name):
            a = r.ack
            print(
                f"{name:<10} {r.journal:<10} {r.nodes:>5} | {a['rate']:>9.0f} {a['p50']:>7.2f} {a['p99']:>7.2f} "
                f"{a['errors']:>4} | {r.routed_rate:>12.0f} {r.routed_p50:>7.1f} {r.routed_p99:>7.1f} "
                f"{r.delivered:>6}/{a['count']:<6}"
            )
    print("\nCPU during each case (cores = CPU seconds / wall seconds; load + routing drain) and per message")
    print(
        f"{'message':<10} {'journal':<10} {'nodes':>5} | {'nodes':>5} {'(reactor)':>9} {'pg back':>7} "
        f"{'pg srv':>6} {'bench':>5} {'rest':>5} {'idle':>5} | {'node us/msg':>11} {'pg us/msg':>9} "
        f"{'commits/msg':>11} {'WAL syncs/msg':>13}"
    )
    for name, _ in MESSAGES:
        for r in (r for r in results if r.message == name):
            c, n = r.usage.cores, max(r.ack["count"], 1)
            per = r.usage.wall / n * 1e6
            pg_cols = (
                f"{c['pg_backends'] * per:>9.0f} {r.usage.commits / n:>11.2f} {r.usage.wal_syncs / n:>13.2f}"
                if r.journal == "postgresql"
                else f"{'-':>9} {'-':>11} {'-':>13}"
            )
            print(
                f"{name:<10} {r.journal:<10} {r.nodes:>5} | {c['nodes']:>5.2f} {r.usage.reactor_max:>9.2f} "
                f"{c['pg_backends']:>7.2f} {c['pg_server']:>6.2f} {c['bench']:>5.2f} {c['rest'] + c['pg_other']:>5.2f} "
                f"{c['idle']:>5.2f} | {c['nodes'] * per:>11.0f} {pg_cols}"
            )
    print(
        "  (reactor) = the busiest node's main thread; pg back = backends of the bench database; pg srv = "
        "WAL writer, checkpointer...;\n  bench = this load generator + sink; rest = everything else on the machine "
        "(other users' jobs); node/pg us/msg = CPU per ACKed message"
    )


def print_summary(results: list[CaseResult]) -> None:
    print("\nJournal durability (engine.started durability=):")
    for r in results:
        if r.message == MESSAGES[0][0]:
            print(f"  {r.journal:<10} x{r.nodes}: {r.durability}")
    print(
        f"  constants: sqlite.DURABILITY = {sqlite.DURABILITY!r}\n             postgres.DURABILITY = {postgres.DURABILITY!r}"
    )
    print("\nScaling, PostgreSQL 2 nodes / 1 node (and 3 / 1):")
    for name, _ in MESSAGES:
        by_nodes = {r.nodes: r for r in results if r.message == name and r.journal == "postgresql"}
        if 1 in by_nodes and 2 in by_nodes:
            one = by_nodes[1]
            parts = [
                f"ACK x{by_nodes[k].ack['rate'] / one.ack['rate']:.2f} routed "
                f"x{by_nodes[k].routed_rate / max(one.routed_rate, 1e-9):.2f} ({k}/1)"
                for k in (2, 3)
                if k in by_nodes
            ]
            print(f"  {name:<10} " + "; ".join(parts))
    print("\nDiagnosis:")
    for r in results:
        print(f"  {r.message:<10} {r.journal:<10} x{r.nodes}: {diagnose(r)}")


def diagnose(r: CaseResult) -> str:
    c = r.usage.cores
    total = sum(v for k, v in c.items() if k != "idle") + c["idle"]
    busy = total - c["idle"]
    parties = {
        "engine nodes": c["nodes"],
        "PostgreSQL backends": c["pg_backends"],
        "PostgreSQL server processes": c["pg_server"],
        "load generator": c["bench"],
        "other jobs on the machine": c["rest"] + c["pg_other"],
    }
    top = sorted(parties.items(), key=lambda kv: -kv[1])[:3]
    shares = ", ".join(f"{k} {v / max(busy, 1e-9):.0%}" for k, v in top)
    if busy >= 0.85 * total:
        verdict = f"CPU-bound ({busy:.2f} of {total:.1f} cores busy): {shares}"
    else:
        verdict = (
            f"not CPU-bound ({busy:.2f} of {total:.1f} cores busy): the closed loop waits on round trips "
            f"(commit / WAL flush, planning, delivery); {shares}"
        )
    if r.usage.reactor_max >= 0.8:
        verdict += f"; a node's reactor thread is near one full core ({r.usage.reactor_max:.2f})"
    if r.routed_rate < 0.8 * r.ack["rate"]:
        verdict += f"; routing lags intake ({r.routed_rate:.0f} vs {r.ack['rate']:.0f} msg/s)"
    return verdict


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="load per case")
    parser.add_argument("--warmup", type=float, default=0.5, help="load before the cases of each configuration")
    parser.add_argument("--connections", type=int, default=8, help="in total, spread over the nodes")
    parser.add_argument("--nodes", default="1,2,3", help="PostgreSQL node counts")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite single-node reference")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pfi-cluster-bench-", dir=ROOT / "var"))
    database = f"pfi_bench_{uuid.uuid4().hex[:10]}"
    started: list = []  # every engine subprocess, stopped in `finally` whatever happens
    admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    bench_started = time.monotonic()

    async def run(_reactor):
        sink = Sink()
        listening = reactor.listenTCP(0, sink, interface="127.0.0.1")
        sink_port = listening.getHost().port
        results: list[CaseResult] = []
        try:
            if not args.no_sqlite:
                results += await run_configuration(workdir, "sqlite", 1, sink, sink_port, admin, None, args, started)
            admin.execute(f'CREATE DATABASE "{database}"')
            url = url_for(database)
            upgrade(workdir, url)
            for count in counts:
                empty_journal(url)
                results += await run_configuration(workdir, url, count, sink, sink_port, admin, database, args, started)
        finally:
            await listening.stopListening()
        print_tables(results, args.connections, args.seconds)
        print_summary(results)
        print(f"\n(bench took {time.monotonic() - bench_started:.0f} s)")

    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))
    finally:
        for proc in started:
            stop_process(proc, grace=15)
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
