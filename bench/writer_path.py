"""The journal's work per intake record alone: the segment log (duplicate check, record encoding,
pwritev, fdatasync) in batches of 8 as the writer thread does it under 8-connection load, and the
SQLite index of every 512 records as its indexer thread does it, here both in this thread with
no reactor and no network.

    .venv/bin/python bench/writer_path.py [--rounds 4] [--messages 8000]

Records are made by the real Intake from a bench ADT (distinct control ids, duplicate window on),
so the duplicate-key filter, the record meta and the index rows are the engine's own. Thread CPU
per record, split into the log part and the index part; compare two versions by their fastest
rounds (bench/reactor_path.py is the same for intake's reactor thread). The fdatasync makes the
log part depend on the disk: run it where the engine's data directory would be.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402

from bench.common import ROOT, adt_message  # noqa: E402
from engine.journal import events, schema  # noqa: E402
from engine.journal.sqlite import INDEX_BATCH, SQLiteJournal, connect  # noqa: E402
from engine.metrics import EngineMetrics  # noqa: E402
from engine.mllp.intake import Intake, IntakePolicy  # noqa: E402

BATCH = 8


class ImmediateReactor:
    """The writer answers its callers through callFromThread: here, at once."""

    def callFromThread(self, f, *args):
        f(*args)


def open_journal(directory: Path) -> SQLiteJournal:
    """The journal's writer state opened as `start` does, without starting its thread."""
    journal = SQLiteJournal(directory, reactor=ImmediateReactor(), node="bench")
    directory.mkdir(parents=True, exist_ok=True)
    journal._writer = connect(journal.db_path)
    schema.upgrade(journal._writer)
    journal.payloads.open()
    journal._build_key_filter()
    journal._reader = connect(journal.db_path)
    events.collect_into(journal._written)
    return journal


def records(count: int, offset: int) -> list:
    clock = task.Clock()
    clock.advance(time.time())
    intake = Intake(journal=None, metrics=EngineMetrics(node="bench"), clock=clock)
    policy = IntakePolicy(channel="bench", duplicate_window=86400)
    template = adt_message()
    return [intake._read_plain(policy, template.replace(b"{CTRL}", f"W{offset + i}".encode()))[0] for i in range(count)]


def one_round(count: int, offset: int) -> tuple[float, float]:
    """(log, index) thread CPU µs per record."""
    directory = Path(tempfile.mkdtemp(prefix="pfi-writer-", dir=ROOT / "var" if (ROOT / "var").exists() else None))
    journal = open_journal(directory / "journal")
    batches = [[(r, lambda _: None, True) for r in chunk] for chunk in _chunks(records(count, offset), BATCH)]
    log_cpu = index_cpu = 0.0
    try:
        for batch in batches:
            started = time.thread_time()
            journal._commit_to_log(batch)
            log_cpu += time.thread_time() - started
            if len(journal._tail) >= INDEX_BATCH or batch is batches[-1]:  # the indexer thread's part
                started = time.thread_time()
                journal._index_tail()
                index_cpu += time.thread_time() - started
        journal._close_resources()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return log_cpu / count * 1e6, index_cpu / count * 1e6


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--messages", type=int, default=8000, help="records per round")
    args = parser.parse_args()
    rounds = [one_round(args.messages, i * args.messages) for i in range(args.rounds)]
    totals = [log + index for log, index in rounds]
    best = rounds[totals.index(min(totals))]
    print(
        f"journal writer, ADT in batches of {BATCH}: {min(totals):.1f} µs/record thread CPU, fastest round"
        f" (log and fdatasync {best[0]:.1f}, index {best[1]:.1f}; median {statistics.median(totals):.1f};"
        f" rounds {', '.join(f'{t:.1f}' for t in totals)})"
    )


if __name__ == "__main__":
    main()
