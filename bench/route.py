"""Routing benchmark: messages/s end to end and latency from the inbound ACK to the destination's
ACK, for 1 route -> 1 MLLP destination and 1 route -> 3 destinations, beside intake alone, and
1 -> 1 with `routing_process: true` (routing and deliveries in a child process of the engine).

    .venv/bin/python bench/route.py [--seconds 3] [--connections 8] [--rounds 3]

Each round runs the four scenarios one after the other; the table gives the medians over the
rounds, and "vs intake" is the median of each round's ratio to the intake run of the same round:
the speed of a shared machine drifts by up to 1.5x within minutes, so only runs made a few seconds
apart are compared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    (cfg / "channels").mkdir(parents=True, exist_ok=True)  # the same scenario's config again each round
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


def _all_arrived(record: dict, sinks: list) -> bool:
    """Every ACKed message reached every sink. Counted first: building the two sets of some 10^4
    ids every 50 ms while the engine drains took CPU from it on a two-core machine."""
    if any(len(s.arrived) < len(record) for s in sinks):
        return False
    return all(set(record) <= set(s.arrived) for s in sinks)


def _own_cpu() -> float:
    """CPU seconds of this process: the load generator and the destinations' sinks."""
    times = os.times()
    return times.user + times.system


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
    cpu_before, harness_before = engine_cpu(proc.pid), _own_cpu()
    try:
        load = await run_load(ENGINE_PORT, adt_message(), connections, seconds, f"R{destinations}-", record)
        started = load["started"]
        drain_deadline = time.perf_counter() + 120
        while destinations and time.perf_counter() < drain_deadline and not _all_arrived(record, sinks):
            await sleep(0.05)
        elapsed = (
            max(max(s.arrived.values(), default=started) for s in sinks) - started if destinations else load["elapsed"]
        )
        cpu, harness = engine_cpu(proc.pid) - cpu_before, _own_cpu() - harness_before
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
        "harness": harness / max(len(acked), 1) * 1e6,
    }


SCENARIOS = (
    ("intake only (no route)", 0, False),
    ("1 route -> 1 destination", 1, False),
    ("1 route -> 3 destinations", 3, False),
    ("1 -> 1, routing process", 1, True),
)


async def one_round(workdir: Path, connections: int, seconds: float) -> list[dict]:
    """Each scenario once, in SCENARIOS order, with its ratio to this round's intake run."""
    results = [await scenario(workdir, n, connections, seconds, split) for _, n, split in SCENARIOS]
    for result in results:
        result["vs_intake"] = result["rate"] / results[0]["rate"]
    return results


def print_table(rounds: list[list[dict]], connections: int) -> None:
    print(f"\nRouting benchmark - ADT ~1KB, {connections} connections, journal: {DURABILITY}")
    print(f"medians of {len(rounds)} rounds; vs intake: median of each round's ratio to its own intake run")
    print(
        f"{'scenario':<28} {'msg/s':>8} {'µs/msg':>7} {'harness':>7} {'ACK->dest p50 ms':>17} {'p99 ms':>8} "
        f"{'delivered':>11} {'vs intake':>9} {'(each round)':>16}"
    )
    for i, (name, destinations, _) in enumerate(SCENARIOS):
        runs = [r[i] for r in rounds]
        keys = ("rate", "cpu", "harness", "p50", "p99", "vs_intake")
        med = {key: statistics.median(run[key] for run in runs) for key in keys}
        delivered = f"{sum(r['delivered'] for r in runs)}/{sum(r['acked'] * destinations for r in runs)}"
        each = " ".join(f"{r['vs_intake']:.0%}" for r in runs)
        if not destinations:
            delivered, p50, p99 = "-", "-", "-"
        else:
            p50, p99 = f"{med['p50']:.1f}", f"{med['p99']:.1f}"
        print(
            f"{name:<28} {med['rate']:>8.0f} {med['cpu']:>7.0f} {med['harness']:>7.0f} {p50:>17} {p99:>8} "
            f"{delivered:>11} {med['vs_intake']:>9.0%} {each:>16}"
        )
    print(
        "µs/msg: the engine's CPU (all threads of its processes, from /proc) per message received, until all"
        " were delivered; harness: this process's (load generator and destination sinks), which shares the"
        " machine's cores with the engine. routing process: `routing_process: true` (routing and deliveries in a"
        " child process)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each scenario, interleaved")
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pfi-route-bench-", dir=ROOT / "var"))

    async def run(_reactor):
        rounds = [await one_round(workdir, args.connections, args.seconds) for _ in range(args.rounds)]
        print_table(rounds, args.connections)

    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
