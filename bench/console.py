"""Console benchmark (docs/console.md).

1. Intake throughput (ADT, closed loop, 8 connections) of `pfi run` alone, then with the console
   polled by a browser-like client (signed in, GET /dashboard/live every second, as the page's
   script does), the console either in its own process (`pfi console`, the design) or served on
   the engine's reactor (bench/console_inprocess.py). Rounds interleaved; medians. Target: under
   5 % lower than alone.
2. Search over a journal of N messages (default 1,000,000, generated through the SQLite journal's
   own writer, keys indexed by the console's indexer): p50/p95 of the browser's queries.
   Target: p95 under 200 ms.

    .venv/bin/python bench/console.py [--seconds 5] [--rounds 3] [--messages 1000000] [--skip-intake|--skip-search]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer  # noqa: E402

from bench.common import ROOT, adt_message, free_port, percentile, run_load, stop_process  # noqa: E402

PASSWORD = "tidal-copper-walnut-9"


def write_config(cfg: Path, port: int, metrics_port: int, console_port: int) -> None:
    (cfg / "channels").mkdir(parents=True)
    (cfg / "channels" / "bench.yaml").write_text(f"type: mllp-in\nport: {port}\n", encoding="utf-8")
    (cfg / "routes.yaml").write_text("routes: []\n", encoding="utf-8")
    (cfg / "pfi.yaml").write_text(
        f"log_level: warning\nmetrics:\n  port: {metrics_port}\nconsole:\n  enabled: false\n  port: {console_port}\n",
        encoding="utf-8",
    )


def start(argv: list[str], log: Path, ready: str, timeout: float = 30.0) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while ready not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return proc


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Poller(threading.Thread):
    """A signed-in browser: the dashboard's live part every second."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.times, self.cookie = base, [], ""
        self.running = True

    def sign_in(self) -> None:
        page = self._request("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        self._request("/login", urllib.parse.urlencode({"csrf": token, "user": "bench", "password": PASSWORD}).encode())
        assert "Destinations" in self._request("/dashboard/live")

    def _request(self, path: str, data: bytes | None = None) -> str:
        """The session cookie is Secure: urllib's jar keeps it off plain http, a browser on
        127.0.0.1 does not; so it is carried by hand."""
        request = urllib.request.Request(
            self.base + path, data=data, headers={"Origin": self.base, "Cookie": self.cookie}
        )
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            response = opener.open(request, timeout=10)
        except urllib.error.HTTPError as exc:  # the login page answers 401, a sign-in 303
            response = exc
        for header in response.headers.get_all("Set-Cookie") or []:
            self.cookie = header.split(";")[0]
        return response.read().decode()

    def _get(self, path: str) -> str:
        return self._request(path)

    def run(self) -> None:
        while self.running:
            started = time.perf_counter()
            try:
                self._get("/dashboard/live")
            except OSError:  # the round is over and the servers are stopping
                return
            self.times.append(time.perf_counter() - started)
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))


async def intake_round(port: int, seconds: float) -> float:
    result = await run_load(port, adt_message(), 8, seconds, "c")
    return result["rate"]


def run_intake(args) -> None:
    rates: dict[str, list[float]] = {"alone": [], "console process": [], "console in-process": []}
    polls: dict[str, list[float]] = {k: [] for k in rates}
    for round_number in range(args.rounds):
        for mode in rates:
            work = Path(tempfile.mkdtemp(prefix="pfi-console-bench-"))
            port, metrics_port, console_port = free_port(), free_port(), free_port()
            cfg, data = work / "cfg", work / "data"
            write_config(cfg, port, metrics_port, console_port)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "engine.cli",
                    "user",
                    "add",
                    "bench",
                    "--role",
                    "viewer",
                    "--config",
                    str(cfg),
                    "--data",
                    str(data),
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
                env={**os.environ, "PFI_CONSOLE_PASSWORD": PASSWORD},
            )
            procs = []
            try:
                if mode == "console in-process":
                    procs.append(
                        start(
                            [str(ROOT / "bench" / "console_inprocess.py"), str(cfg), str(data)],
                            work / "engine.log",
                            "console.started",
                        )
                    )
                else:
                    procs.append(
                        start(
                            ["-m", "engine.cli", "run", "--config", str(cfg), "--data", str(data)],
                            work / "engine.log",
                            "engine.started",
                        )
                    )
                if mode == "console process":
                    procs.append(
                        start(
                            ["-m", "engine.cli", "console", "--config", str(cfg), "--data", str(data)],
                            work / "console.log",
                            "console.started",
                        )
                    )
                poller = None
                if mode != "alone":
                    poller = Poller(f"http://127.0.0.1:{console_port}")
                    poller.sign_in()
                    poller.start()
                rate = _react(intake_round(port, args.seconds))
                rates[mode].append(rate)
                if poller is not None:
                    poller.running = False
                    polls[mode] += poller.times
                print(f"round {round_number + 1} {mode:<20} {rate:8.0f} msg/s", flush=True)
            finally:
                for proc in reversed(procs):
                    stop_process(proc)
                shutil.rmtree(work, ignore_errors=True)
    alone = statistics.median(rates["alone"])
    print("\nIntake, ADT, 8 connections, closed loop; medians of", args.rounds, "interleaved rounds")
    for mode, values in rates.items():
        med = statistics.median(values)
        poll = (
            f"dashboard poll p50 {percentile(polls[mode], 50) * 1000:.0f} ms p95 "
            f"{percentile(polls[mode], 95) * 1000:.0f} ms"
            if polls[mode]
            else ""
        )
        print(f"  {mode:<20} {med:8.0f} msg/s  ({(med / alone - 1) * 100:+.1f} % vs alone)  {poll}")


_LOOP: list = []


def _react(coroutine):
    """Run one coroutine on the reactor, returning its result (the reactor runs once per process,
    so it is driven in a thread shared by every round)."""
    from twisted.internet import reactor

    if not _LOOP:
        thread = threading.Thread(target=lambda: reactor.run(installSignalHandlers=False), daemon=True)
        thread.start()
        _LOOP.append(thread)
    done = threading.Event()
    box = {}

    def go():
        d = defer.ensureDeferred(coroutine)
        d.addBoth(lambda r: (box.setdefault("r", r), done.set()))

    reactor.callFromThread(go)
    done.wait()
    if isinstance(box["r"], BaseException) or hasattr(box["r"], "raiseException"):
        box["r"].raiseException()
    return box["r"]


# -- search over a large journal -------------------------------------------------------------------


async def fill(journal_dir: Path, count: int) -> float:
    from engine.ids import new_id
    from engine.journal.base import InboundRecord
    from engine.journal.sqlite import SQLiteJournal

    journal = SQLiteJournal(journal_dir)
    journal.start()
    template = adt_message()
    started = time.time() - count * 0.01  # one message every 10 ms, ending now
    chunk = 4000
    for base in range(0, count, chunk):
        records = []
        for i in range(base, min(base + chunk, count)):
            ctrl = f"C{i:08d}"
            raw = template.replace(b"{CTRL}", ctrl.encode())
            ipp = f"P{i % 200_000:07d}"  # five messages per patient
            raw = raw.replace(ctrl.encode() + b"^^^CHU-BENCH", ipp.encode() + b"^^^CHU-BENCH", 1)
            raw = raw.replace(b"248067512345678", f"2{i % 200_000:014d}".encode())  # one INS per patient
            state = "rejected" if i % 97 == 0 else "received"
            records.append(
                InboundRecord(
                    uid=new_id(),
                    channel=("ris", "tlr-a", "identity")[i % 3],
                    received_at=started + i * 0.01,
                    raw=raw,
                    state=state,
                    sender="GAM",
                    facility="CHU-BENCH",
                    control_id=ctrl,
                    msg_type=("ADT^A01", "ORU^R01", "ORM^O01")[i % 3],
                    version="2.5",
                    patient_ids=f"{ipp}^^^CHU-BENCH^PI",
                    ack_code="AE" if state == "rejected" else "AA",
                )
            )
        await defer.gatherResults([journal.append_inbound(r) for r in records])
        if base % 100_000 == 0:
            print(f"  {base:,} messages journaled", flush=True)
    await journal.stop()
    return started


def run_search(args) -> None:
    from engine.console.indexer import KeyIndexer
    from engine.journal.access import SqliteAccess
    from engine.journal.search import SearchFilters, search_messages

    work = Path(tempfile.mkdtemp(prefix="pfi-console-search-"))
    try:
        journal_dir = work / "journal"
        t0 = time.perf_counter()
        first = _react(fill(journal_dir, args.messages))
        print(f"journal of {args.messages:,} messages written in {time.perf_counter() - t0:.0f} s", flush=True)
        access = SqliteAccess(journal_dir)
        indexer = KeyIndexer(access)
        t0 = time.perf_counter()
        while indexer.run_pass(budget=50_000):
            pass
        indexed = time.perf_counter() - t0
        print(f"keys indexed in {indexed:.0f} s ({args.messages / indexed:,.0f} messages/s)", flush=True)
        rng = random.Random(7)
        n = args.messages
        span = n * 0.01

        def window() -> tuple[float, float]:
            start = first + rng.random() * span * 0.9
            return start, start + 3600

        queries = {
            "IPP": lambda: SearchFilters(ipp=f"P{rng.randrange(min(n, 200_000)):07d}"),
            "INS": lambda: SearchFilters(ins=f"2{rng.randrange(min(n, 200_000)):014d}"),
            "control id": lambda: SearchFilters(control_id=f"C{rng.randrange(n):08d}"),
            "channel + type": lambda: SearchFilters(channel="ris", msg_type="ADT^A01"),
            "state rejected": lambda: SearchFilters(state="rejected"),
            "date range (1 h)": lambda: SearchFilters(**dict(zip(("since", "until"), window()))),
            "channel + 1 h": lambda: SearchFilters(channel="tlr-a", **dict(zip(("since", "until"), window()))),
            "latest page": lambda: SearchFilters(),
            "IPP + channel": lambda: SearchFilters(ipp=f"P{rng.randrange(min(n, 200_000)):07d}", channel="ris"),
        }
        every = []
        print(f"\nSearch over {n:,} messages (first page of 50, newest first), 200 runs each:")
        for name, make in queries.items():
            times = []
            for _ in range(200):
                filters = make()
                t = time.perf_counter()
                rows = search_messages(access.read, filters)
                if rows and rng.random() < 0.3:  # the next page, as "Older →" asks
                    search_messages(access.read, filters, before_id=rows[-1].id)
                times.append(time.perf_counter() - t)
            every += times
            print(
                f"  {name:<18} p50 {percentile(times, 50) * 1000:7.1f} ms   p95 {percentile(times, 95) * 1000:7.1f} ms"
            )
        print(
            f"  {'all queries':<18} p50 {percentile(every, 50) * 1000:7.1f} ms   p95 "
            f"{percentile(every, 95) * 1000:7.1f} ms  (target p95 < 200 ms)"
        )
        access.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--skip-intake", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    if not args.skip_intake:
        run_intake(args)
    if not args.skip_search:
        run_search(args)
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
