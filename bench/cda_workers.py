"""CDA validation beside a busy engine: in one of its threads (`cda_processes: 0`) or in worker
processes (the default, engine/cda/pool.py).

    .venv/bin/python bench/cda_workers.py [--seconds 3] [--processes 1]

For each, one thread validates the kit's imaging report (IMG_CR_IMG_2024.01, all stages) in a
loop while the main thread, standing for the reactor, counts loop turns: printed are the
validations per second and the main thread's speed as a share of its speed alone (100 %: the
validation took nothing from it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED  # noqa: E402
from engine.cda.checker import CdaChecker  # noqa: E402
from engine.cda.pool import CdaProcessPool  # noqa: E402
from engine.log import configure_logging  # noqa: E402

KIT = SHARED / "corpus" / "cda" / "TestContenuCDA-3-0"
REPORT = KIT / "ExemplesCDA" / "IMG_CR_IMG_2024.01.xml"


def spin(seconds: float) -> int:
    turns, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        turns += 1
    return turns


def beside(check, document: bytes, seconds: float, alone: int) -> tuple[float, float]:
    done = {}

    def validate() -> None:
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            check(document)
            count += 1
        done["rate"] = count / (time.perf_counter() - start)

    thread = threading.Thread(target=validate)
    thread.start()
    turns = spin(seconds)
    thread.join()
    return done["rate"], turns / alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    configure_logging("warning")
    cache = Path(tempfile.mkdtemp(prefix="pfi-cda-bench-"))
    document = REPORT.read_bytes()
    in_thread = CdaChecker.from_settings(str(KIT), Path("."), cache)
    workers = CdaProcessPool(KIT, cache, ("conformance", "dmp"), args.processes)
    started = time.perf_counter()
    workers.warm_up()
    warm = time.perf_counter() - started
    in_thread.warm_up()
    assert in_thread(document) == workers(document), "the workers must give the in-process verdict"
    alone = spin(args.seconds)
    print(f"\nCDA validation of {REPORT.name} ({len(document)} bytes), {args.seconds:g} s each")
    print(f"{'where':<28} {'validations/s':>14} {'main thread speed':>18}")
    for name, check in (("a thread of the engine", in_thread), (f"{args.processes} worker process(es)", workers)):
        rate, speed = beside(check, document, args.seconds, alone)
        print(f"{name:<28} {rate:>14.1f} {speed:>17.0%}")
    print(f"workers started and compiled in {warm:.1f} s")
    workers.close()


if __name__ == "__main__":
    main()
