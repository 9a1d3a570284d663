"""Routing benchmark: messages/s end to end and latency from the inbound ACK to the destination's
ACK, for 1 route -> 1 MLLP destination and 1 route -> 3 destinations, beside intake alone, and
1 -> 1 with `routing_process: true` (routing and deliveries in a child process of the engine).

    .venv/bin/python bench/route.py [--seconds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task  # noqa: E402

from bench.common import ROOT, Sink, adt_message, percentile, run_load, sleep, start_engine_process, stop_process  # noqa: E402
from bench.intake import ENGINE_PORT, cpu_seconds  # noqa: E402
from engine.journal.sqlite import DURABILITY  # noqa: E402

SINK_PORTS = (24101, 24102, 24103)


def write_config(workdir: Path, destinations: int, routing_process: bool = False) -> Path:
    cfg = workdir / "cfg"
    (cfg / "channels").mkdir(parents=True)
    (cfg / "channels" / "in.yaml").write_text(f"type: mllp-in\nport: {ENGINE_PORT}\n")
    names = []
    for i in range(destinations):
        names.append(f"dest{i}")
        (cfg / "channels" / f"dest{i}.yaml").write_text(
            f"type: mllp-out\nhost: 127.0.0.1\nport: {SINK_PORTS[i]}\nqueue_key: PID-3.1\nparallel_keys: 4\n"
        )
    routes = (
        (
            f"routes:\n  - name: bench\n    match: {{channel: in}}\n    steps:\n"
            f"      - deliver: {{to: [{', '.join(names)}]}}\n"
        )
        if destinations
        else "routes: []\n"
    )
    (cfg / "routes.yaml").write_text(routes)
    split = "routing_process: true\n" if routing_process else ""
    (cfg / "pfi.yaml").write_text("log_level: info\nmetrics:\n  enabled: false\n" + split)
    return cfg


def start_engine(workdir: Path, cfg: Path):
    return start_engine_process(
        ["run", "--config", str(cfg), "--data", str(workdir / f"data-{time.time_ns()}")],
        workdir / f"engine-{time.time_ns()}.log",
    )


def engine_cpu(pid: int) -> float:
    """CPU seconds of the engine process and of its children (the routing process)."""
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        children = []
    total = cpu_seconds(pid)
    for child in children:
        try:
            total += cpu_seconds(int(child))
        except OSError:
            pass
    return total


async def scenario(
    workdir: Path, destinations: int, connections: int, seconds: float, routing_process: bool = False
) -> dict:
    sinks = [Sink() for _ in range(destinations)]
    ports = [reactor.listenTCP(SINK_PORTS[i], s, interface="127.0.0.1") for i, s in enumerate(sinks)]
    name = f"s{destinations}{'-split' if routing_process else ''}"
    proc = start_engine(workdir, write_config(workdir / name, destinations, routing_process))
    if routing_process:  # the routing process starts after the engine's own engine.started
        await sleep(1.0)
    record: dict[str, tuple[float, float]] = {}
    cpu_before = engine_cpu(proc.pid)
    try:
        load = await run_load(ENGINE_PORT, adt_message(), connections, seconds, f"R{destinations}-", record)
        started = load["started"]
        drain_deadline = time.perf_counter() + 120
        while (
            destinations
            and time.perf_counter() < drain_deadline
            and not all(set(record) <= set(s.arrived) for s in sinks)
        ):
            await sleep(0.05)
        elapsed = (
            max(max(s.arrived.values(), default=started) for s in sinks) - started if destinations else load["elapsed"]
        )
        cpu = engine_cpu(proc.pid) - cpu_before
    finally:
        stop_process(proc)
        for p in ports:
            await p.stopListening()
    acked = {c: times[1] for c, times in record.items()}
    latencies = [s.arrived[c] - t for s in sinks for c, t in acked.items() if c in s.arrived]
    delivered = sum(len(set(acked) & set(s.arrived)) for s in sinks)
    elapsed = max(elapsed, 1e-6)
    return {
        "acked": len(acked),
        "rate": len(acked) / elapsed,
        "delivered": delivered,
        "p50": percentile(latencies, 50) * 1000 if latencies else float("nan"),
        "p99": percentile(latencies, 99) * 1000 if latencies else float("nan"),
        "cpu": cpu / max(len(acked), 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pfi-route-bench-", dir=ROOT / "var"))

    async def run(_reactor):
        intake = await scenario(workdir, 0, args.connections, args.seconds)
        one = await scenario(workdir, 1, args.connections, args.seconds)
        three = await scenario(workdir, 3, args.connections, args.seconds)
        split = await scenario(workdir, 1, args.connections, args.seconds, routing_process=True)
        print(f"\nRouting benchmark - ADT ~1KB, {args.connections} connections, journal: {DURABILITY}")
        print(
            f"{'scenario':<28} {'msg/s':>8} {'µs/msg':>7} {'ACK->dest p50 ms':>17} {'p99 ms':>8} "
            f"{'delivered':>10} {'vs intake':>9}"
        )
        print(
            f"{'intake only (no route)':<28} {intake['rate']:>8.0f} {intake['cpu']:>7.0f} {'-':>17} {'-':>8} "
            f"{'-':>10} {'100%':>9}"
        )
        for name, r, n in (
            ("1 route -> 1 destination", one, 1),
            ("1 route -> 3 destinations", three, 3),
            ("1 -> 1, routing process", split, 1),
        ):
            print(
                f"{name:<28} {r['rate']:>8.0f} {r['cpu']:>7.0f} {r['p50']:>17.1f} {r['p99']:>8.1f} "
                f"{r['delivered']:>5}/{r['acked'] * n:<5} {r['rate'] / intake['rate']:>8.0%}"
            )
        print(
            "µs/msg: the engine's CPU (all threads of its processes, from /proc) per message received, until all"
            " were delivered. routing process: `routing_process: true` (routing and deliveries in a child process)."
        )

    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
