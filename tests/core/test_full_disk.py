"""A full disk on a real small file system (a tmpfs mounted by the test): while it is full
(once the zeros written ahead of the log are used up) every message is answered AR 207 and the
segment log stays exactly as it was; when space comes
back the engine accepts again by itself, every AA'd message is readable, and it restarts. Damaged
bytes in the log never stop a start, and a damaged indexed record leaves routing once, visibly."""

from __future__ import annotations

import os
import subprocess

import pytest
import pytest_twisted

from engine.journal.payloads import ZERO_AHEAD, PayloadStore
from engine.journal.reader import JournalReader
from tests.support import client_for, exchange, inbound, intake_events, sample_adt, start_engine, write_config


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs; removed whatever the test did."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:  # like PostgreSQL and the browser: a failure, unless explicitly opted out
        reason = f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}"
        if os.environ.get("PFI_SKIP_TMPFS") == "1":
            pytest.skip(reason + " (PFI_SKIP_TMPFS=1)")
        pytest.fail(reason + " (run as root, or opt out with PFI_SKIP_TMPFS=1)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def big_adt(control_id: str) -> bytes:
    return (sample_adt(control_id) + "NTE|1||" + "x" * 200_000 + "\r").encode()


def fill(mount, leave: int) -> None:
    """Fill the file system, then give `leave` bytes back (filled to the last byte first: the
    engine's zero-fill thread may be writing at the same time)."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError:
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)


async def send_all(engine, ids, index_follows: bool = True) -> dict[str, str]:
    client = await client_for(engine, "in")
    if not index_follows:  # a full disk: the log's records are answered, the index waits for room
        client.indexed = None
    try:
        return {i: (await exchange(client, big_adt(i))).code for i in ids}
    finally:
        client.close()


def readable(data_dir, control_ids) -> bool:
    reader = JournalReader(data_dir / "journal")
    stored = {e.control_id: e.message_uid for e in intake_events(reader) if e.state == "received"}
    return all(reader.load_message(stored[c]).raw == big_adt(c) for c in control_ids)


@pytest_twisted.ensureDeferred
async def test_a_full_disk_gives_ar_keeps_the_log_intact_and_recovers_by_itself(small_disk, tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound(max_message_bytes="1MB")})
    data = small_disk / "data"
    engine = await start_engine(cfg, data)
    try:
        before = await send_all(engine, ["OK-1", "OK-2"])
        fill(small_disk, leave=300_000)  # room for one record, then ENOSPC in the middle of one
        # The zeros ahead of the log (payloads.py) are a reserve the records use first.
        full = [f"FULL-{i}" for i in range(ZERO_AHEAD // len(big_adt("x")) + 6)]
        during = await send_all(engine, full, index_follows=False)
        assert "AR" in during.values()
        ar = [c for c, code in during.items() if code == "AR"]
        (small_disk / "filler").unlink()  # space comes back
        after = await send_all(engine, ["BACK-1", "BACK-2", ar[0]])  # the refused one, sent again
    finally:
        await engine.stopService()
    accepted = [c for c, code in {**before, **during, **after}.items() if code == "AA"]
    assert set(after.values()) == {"AA"} and len(accepted) >= 5
    assert readable(data, accepted)  # no AA'd message damaged by a partial write
    engine = await start_engine(cfg, data)  # a clean restart on the same log
    await engine.stopService()
    assert readable(data, accepted)


@pytest_twisted.ensureDeferred
async def test_a_torn_tail_and_damaged_bytes_never_stop_a_start(tmp_path):
    cfg = write_config(tmp_path / "cfg", {"in": inbound(max_message_bytes="1MB")})
    data = tmp_path / "data"
    engine = await start_engine(cfg, data)
    await send_all(engine, ["T-1", "T-2", "T-3"])
    await engine.stopService()
    store = PayloadStore(data / "journal" / "payloads")
    [segment] = store.segments()
    path = data / "journal" / "payloads" / f"seg-{segment:08d}.dat"
    with open(path, "r+b") as log:  # damage T-2's body, then add a torn tail
        log.seek(os.path.getsize(path) // 2)
        log.write(b"\xff" * 64)
        log.seek(0, 2)
        log.write(b"PFI1\x00\x00\x00\x10garbage")
    for index in (data / "journal").glob("journal.sqlite*"):  # the index is rebuilt from the log
        index.unlink()
    engine = await start_engine(cfg, data)  # starts: the tail is cut, the damage skipped and reported
    try:
        assert (await send_all(engine, ["T-4"]))["T-4"] == "AA"
    finally:
        await engine.stopService()
    reader = JournalReader(data / "journal")
    states = {e.control_id: e.state for e in intake_events(reader)}
    assert set(states) == {"T-1", "T-3", "T-4"}  # T-3, after the damage, is not given up
    assert readable(data, ["T-1", "T-3", "T-4"])


@pytest_twisted.ensureDeferred
async def test_a_damaged_indexed_record_leaves_routing_once_and_visibly(tmp_path):
    routes = [{"name": "r", "match": {"channel": "in"}, "steps": [{"stop": "nothing to do"}]}]
    cfg = write_config(tmp_path / "cfg", {"in": inbound(max_message_bytes="1MB")}, routes)
    data = tmp_path / "data"
    engine = await start_engine(cfg, data)
    await engine.dispatcher.stop()  # keep the message `received` while we damage it
    await send_all(engine, ["D-1"])
    await engine.journal.stop()
    path = next((data / "journal" / "payloads").glob("seg-*.dat"))
    with open(path, "r+b") as log:
        log.seek(os.path.getsize(path) - 1000)
        log.write(b"\x00" * 100)
    engine = await start_engine(cfg, data)
    try:
        from tests.routing.peers import until

        reader = JournalReader(data / "journal")
        await until(
            lambda: any(e.state == "damaged" for e in reader.events_after(0, limit=100)),
            what="the damaged message marked once",
        )
    finally:
        await engine.stopService()
    damaged = [e for e in JournalReader(data / "journal").events_after(0, limit=100) if e.state == "damaged"]
    assert len(damaged) == 1 and "unreadable" in damaged[0].detail
