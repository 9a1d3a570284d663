"""The journal's threads carry their names for the kernel too (engine/osthread.py): `top -H`,
`ps -L` and bench/intake.py's per-thread CPU tell the writer from the indexer."""

from __future__ import annotations

import os
import threading
import time

from twisted.internet import reactor

from engine.journal.sqlite import SQLiteJournal
from engine.osthread import NamedThread


def kernel_names() -> set[str]:
    names = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            names.add(open(f"/proc/self/task/{tid}/comm").read().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    return names


def kernel_name_of_thread(name: str) -> str:
    seen: dict[str, str] = {}
    go = threading.Event()

    def look() -> None:
        seen["comm"] = open(f"/proc/self/task/{threading.get_native_id()}/comm").read().strip()
        go.set()

    thread = NamedThread(target=look, name=name)
    thread.start()
    go.wait(10)
    thread.join(10)
    return seen["comm"]


def test_a_named_thread_is_named_for_the_kernel():
    assert kernel_name_of_thread("journal-writer") == "journal-writer"


def test_a_long_name_keeps_its_first_fifteen_bytes():
    assert kernel_name_of_thread("a-name-longer-than-the-kernel-keeps") == "a-name-longer-t"


def test_a_plain_thread_keeps_the_interpreter_name():
    """The difference the tests above rely on: without NamedThread the kernel shows no name of ours."""
    seen: dict[str, str] = {}
    thread = threading.Thread(
        target=lambda: seen.update(comm=open(f"/proc/self/task/{threading.get_native_id()}/comm").read().strip()),
        name="journal-writer",
    )
    thread.start()
    thread.join(10)
    assert seen["comm"] != "journal-writer"


def test_a_started_journal_shows_its_writer_and_indexer(tmp_path):
    journal = SQLiteJournal(tmp_path / "journal", reactor)
    journal.start()
    try:
        # Each thread names itself as it begins to run, a moment after start() returned.
        deadline = time.monotonic() + 5.0
        while not {"journal-writer", "journal-indexer"} <= kernel_names() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {"journal-writer", "journal-indexer"} <= kernel_names()
    finally:
        journal.close_now()
