"""Intake benchmark: ACKed messages/s, ACK latency and CPU per message of the durable engine,
beside two references: a bare MLLP server (frames and answers, the ceiling) and a minimal durable
server (MSH scan, SQLite WAL synchronous=FULL group commit, ACK after the commit: the least a
durable Python server does, bench/durable_server.py).

    .venv/bin/python bench/intake.py [--seconds 3] [--connections 1,8,64] [--rounds 3]

Each server runs in its own process; the load generator is a closed loop (one message in flight
per connection, the next sent when its ACK arrives) in this process. CPU µs/msg is the server
process's user+system time over the run (from /proc, all its threads; `main` is the reactor
thread alone) divided by the messages ACKed: steadier than msg/s on a shared machine.

The minimal durable server and the engine are measured alternately, `--rounds` times each per
(message, connections), and the table gives the medians: the speed of a shared machine drifts
by up to 1.5x within minutes, so a ratio of two runs made a minute apart says little.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402

from bench.common import ROOT, adt_message, oru_message, run_load, start_engine_process, stop_process  # noqa: E402
from engine.journal.sqlite import DURABILITY  # noqa: E402

BARE_PORT, DURABLE_PORT, ENGINE_PORT = 24001, 24003, 24002
TICK = os.sysconf("SC_CLK_TCK")


def start_reference(script: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / script), *args], stdout=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()
    return proc


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """user+system CPU of a process (all threads) or of one of its threads, from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = open(path).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (threads that exit during the run are not counted)."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            times[int(tid)] = cpu_seconds(pid, int(tid))
        except OSError:
            pass
    return times


def thread_names(pid: int) -> dict[int, str]:
    """The kernel's name of each thread of `pid` (the engine names its journal threads:
    engine/osthread.py)."""
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names[int(tid)] = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        except OSError:
            pass
    return names


def named_thread_cpu(pid: int, before: dict, after: dict, name: str) -> float:
    """CPU seconds over the run of the threads of `pid` the kernel knows as `name`."""
    names = thread_names(pid)
    return sum(t - before.get(tid, 0.0) for tid, t in after.items() if names.get(tid) == name)


def start_engine(workdir: Path, log_level: str) -> subprocess.Popen:
    cfg = workdir / "cfg"
    (cfg / "channels").mkdir(parents=True)
    (cfg / "channels" / "bench.yaml").write_text(
        f"type: mllp-in\nport: {ENGINE_PORT}\nmax_message_bytes: 64MiB\n", encoding="utf-8"
    )
    (cfg / "routes.yaml").write_text("routes: []\n", encoding="utf-8")
    (cfg / "pfi.yaml").write_text(f"log_level: {log_level}\nmetrics:\n  enabled: false\n", encoding="utf-8")
    return start_engine_process(["run", "--config", str(cfg), "--data", str(workdir / "data")], workdir / "engine.log")


def stop(proc: subprocess.Popen) -> None:
    stop_process(proc)


MESSAGES = (("ADT ~1KB", adt_message), ("ORU ~40KB", oru_message))


async def measure_once(port: int, pid: int, template: bytes, connections: int, seconds: float, tag: str) -> dict:
    cpu0, threads0, load0 = cpu_seconds(pid), thread_cpu(pid), os.times()
    result = await run_load(port, template, connections, seconds, f"{tag}{connections}")
    count = max(1, result["count"])
    threads1, load1 = thread_cpu(pid), os.times()
    result["cpu_us"] = (cpu_seconds(pid) - cpu0) / count * 1e6
    result["load_us"] = (load1.user + load1.system - load0.user - load0.system) / count * 1e6
    result["main_us"] = (threads1.get(pid, 0.0) - threads0.get(pid, 0.0)) / count * 1e6
    result["writer_us"] = named_thread_cpu(pid, threads0, threads1, "journal-writer") / count * 1e6
    result["index_us"] = named_thread_cpu(pid, threads0, threads1, "journal-indexer") / count * 1e6
    return result


async def measure(port: int, pid: int, connections: list[int], seconds: float, tag: str) -> dict:
    return {
        (name, n): await measure_once(port, pid, make(), n, seconds, tag)
        for name, make in MESSAGES
        for n in connections
    }


async def measure_alternately(servers: dict, connections: list[int], seconds: float, rounds: int) -> dict:
    """{server: {(message, conns): medians}}: each server in turn, `rounds` times per case."""
    runs: dict = {name: {} for name in servers}
    for message, make in MESSAGES:
        template = make()
        for n in connections:
            for _ in range(rounds):
                for name, (port, pid) in servers.items():
                    result = await measure_once(port, pid, template, n, seconds, name[0].upper())
                    runs[name].setdefault((message, n), []).append(result)
    return {name: {case: medians(results) for case, results in cases.items()} for name, cases in runs.items()}


def medians(results: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in results) for key in results[0] if key != "started"}


def print_table(bare: dict, durable: dict, engine: dict, log_level: str, rounds: int = 1) -> None:
    print(f"\nIntake benchmark - journal: {DURABILITY}; engine log level: {log_level}; routes configured: 0")
    print(f"durable and engine: medians of {rounds} alternate runs each per row")
    print(
        f"{'message':<10} {'conns':>5} | {'bare':>7} | {'durable':>7} {'µs/msg':>6} | {'engine':>7} "
        f"{'µs/msg':>6} {'main':>5} {'writer':>6} {'index':>5} {'p50 ms':>6} {'p99 ms':>6} {'errs':>4} | {'/durable':>8} {'/bare':>5}"
        f" | {'load':>5}"
    )
    for key in engine:
        b, d, e = bare[key], durable[key], engine[key]
        print(
            f"{key[0]:<10} {key[1]:>5} | {b['rate']:>7.0f} | {d['rate']:>7.0f} {d['cpu_us']:>6.0f} | "
            f"{e['rate']:>7.0f} {e['cpu_us']:>6.0f} {e['main_us']:>5.0f} {e['writer_us']:>6.0f} {e['index_us']:>5.0f} {e['p50']:>6.2f} {e['p99']:>6.2f} "
            f"{e['errors']:>4} | {e['rate'] / d['rate']:>8.0%} {e['rate'] / b['rate']:>5.0%} | {e['load_us']:>5.0f}"
        )
    print(
        "msg/s: ACKed messages per second (closed loop); µs/msg: server CPU (all threads) per message; "
        "main, writer, index: the engine's reactor thread, journal writer and SQLite indexer alone; "
        "load: the load generator's own CPU per message in the engine's runs (this process, on the same two cores)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--log-level", default="info", help="engine log level (production: info)")
    parser.add_argument("--rounds", type=int, default=3, help="alternate runs of durable and engine per case")
    args = parser.parse_args()
    connections = [int(n) for n in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="pfi-bench-", dir=ROOT / "var" if (ROOT / "var").exists() else None))

    async def run(reactor):
        bare_proc = start_reference("bare_server.py", str(BARE_PORT))
        try:
            bare = await measure(BARE_PORT, bare_proc.pid, connections, args.seconds, "B")
        finally:
            stop(bare_proc)
        durable_proc = start_reference("durable_server.py", str(DURABLE_PORT), str(workdir / "durable.db"))
        engine_proc = start_engine(workdir, args.log_level)
        try:
            servers = {"durable": (DURABLE_PORT, durable_proc.pid), "engine": (ENGINE_PORT, engine_proc.pid)}
            results = await measure_alternately(servers, connections, args.seconds, args.rounds)
        finally:
            stop(durable_proc)
            stop(engine_proc)
        print_table(bare, results["durable"], results["engine"], args.log_level, args.rounds)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
