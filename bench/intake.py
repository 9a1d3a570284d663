"""Intake benchmark: ACKed messages/s and ACK latency, durable engine vs a bare MLLP ceiling.

    .venv/bin/python bench/intake.py [--seconds 3] [--connections 1,8,64]

Each server runs in its own process; the load generator is a closed loop (one message in flight
per connection, the next sent when its ACK arrives) in this process.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402

from bench.common import ROOT, adt_message, oru_message, run_load, start_engine_process, stop_process  # noqa: E402
from engine.journal.sqlite import DURABILITY  # noqa: E402

BARE_PORT, ENGINE_PORT = 24001, 24002


def start_bare() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_server.py"), str(BARE_PORT)],
                            stdout=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()
    return proc


def start_engine(workdir: Path, log_level: str) -> subprocess.Popen:
    cfg = workdir / "cfg"
    (cfg / "channels").mkdir(parents=True)
    (cfg / "channels" / "bench.yaml").write_text(
        f"type: mllp-in\nport: {ENGINE_PORT}\nmax_message_bytes: 64MiB\n", encoding="utf-8")
    (cfg / "routes.yaml").write_text("routes: []\n", encoding="utf-8")
    (cfg / "pfi.yaml").write_text(f"log_level: {log_level}\nmetrics:\n  enabled: false\n", encoding="utf-8")
    return start_engine_process(["run", "--config", str(cfg), "--data", str(workdir / "data")],
                                workdir / "engine.log")


def stop(proc: subprocess.Popen) -> None:
    stop_process(proc)


async def measure(port: int, connections: list[int], seconds: float, tag: str) -> dict:
    results = {}
    for name, template in (("ADT ~1KB", adt_message()), ("ORU ~40KB", oru_message())):
        for n in connections:
            results[(name, n)] = await run_load(port, template, n, seconds, f"{tag}{n}")
    return results


def print_table(bare: dict, engine: dict, log_level: str) -> None:
    print(f"\nIntake benchmark - journal: {DURABILITY}; engine log level: {log_level}")
    print(f"{'message':<10} {'conns':>5} | {'bare msg/s':>10} | {'engine msg/s':>12} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} | {'ratio':>6}")
    for key in engine:
        b, e = bare[key], engine[key]
        print(f"{key[0]:<10} {key[1]:>5} | {b['rate']:>10.0f} | {e['rate']:>12.0f} {e['p50']:>7.2f} "
              f"{e['p99']:>7.2f} {e['errors']:>6} | {e['rate'] / b['rate']:>6.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--log-level", default="info", help="engine log level (production: info)")
    args = parser.parse_args()
    connections = [int(n) for n in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="pfi-bench-", dir=ROOT / "var" if (ROOT / "var").exists() else None))

    async def run(reactor):
        bare_proc = start_bare()
        try:
            bare = await measure(BARE_PORT, connections, args.seconds, "B")
        finally:
            stop(bare_proc)
        engine_proc = start_engine(workdir, args.log_level)
        try:
            engine = await measure(ENGINE_PORT, connections, args.seconds, "E")
        finally:
            stop(engine_proc)
        print_table(bare, engine, args.log_level)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
