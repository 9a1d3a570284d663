"""Programme statistics benchmark (docs/statistics.md), one command:

1. A year of statistics over a journal of 1,000,000 generated reports: the journal is filled through
   the real counting code (facts journaled as routing does, then received / queued / DMP and
   MSSanté outcome events through engine/journal/events.py and its counters observer, 1,000
   reports per transaction); then the year's table by the query API (`statistics`, what the
   console calls) and by `pfi stats` (a process: start-up included), and `pfi stats rebuild`'s
   time, checked equal to the incremental counters.
2. Intake throughput with counting on and off: engine processes (`pfi run`) fed by closed-loop
   MLLP senders, (a) ADT to a channel without routes (intake alone), (b) CI-SIS report requests
   (the ANS MDM^T02 example, a new patient each) routed to an MLLP sink that the statistics take
   for a DMP (every report classified, journaled with its facts, its outcome counted). Off = the
   events observer removed and no classification (bench/stats_engine.py). Rounds interleave on and
   off; medians of msg/s and of the engine process's CPU per message (from /proc).

    .venv/bin/python bench/stats.py [--messages 1000000] [--seconds 3] [--rounds 3] [--connections 8]
                                    [--pg]    # part 1 on PostgreSQL too (PFI_BENCH_PG or the local server)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics as stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task, threads  # noqa: E402

from bench.common import ROOT, SHARED, Sink, adt_message, run_load, sleep, stop_process  # noqa: E402
from engine.journal import events, schema  # noqa: E402
from engine.journal import stats as journal_stats  # noqa: E402
from engine.stats.facts import DEST_DMP, DEST_PATIENT, DEST_PS, INVISIBLE_PATIENT, REPORT, MessageFacts  # noqa: E402
from engine.stats.months import month_of  # noqa: E402

ENGINE_PORT, SINK_PORT = 24201, 24202
TICK = os.sysconf("SC_CLK_TCK")
YEAR_START = 1767222000.0  # 2026-01-01 00:00 Paris
YEAR = 365 * 86400
ADMIN_URL = os.environ.get("PFI_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MDM = (
    SHARED / "corpus/ans/hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/MDM/"
    "Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7"
)


# -- part 1: a year over a million reports ---------------------------------------------------------


def generated(count: int, rng: random.Random):
    """(facts, event rows) per batch of 1,000 reports spread over 2026: 5 sites, three document
    types, 300,000 patients, the DMP's answers and MSSanté mails in plausible shares."""
    sites = [f"FINESS:{300017985 + i}" for i in range(5)]
    for start in range(0, count, 1000):
        facts, rows = [], []
        for n in range(start, min(start + 1000, count)):
            at = YEAR_START + YEAR * n / count
            uid = f"B{n:08d}"
            flags = (
                DEST_DMP
                | (DEST_PS if n % 2 else 0)
                | (DEST_PATIENT if n % 7 == 0 else 0)
                | (INVISIBLE_PATIENT if n % 10 == 0 else 0)
            )
            identity = rng.choices(("qualified", "validated", "provisional", "recovered"), (80, 10, 8, 2))[0]
            facts.append(
                MessageFacts(
                    uid,
                    REPORT,
                    month_of(at),
                    sites[n % 5],
                    rng.choices(("CR-IMG", "DEMANDE-IMG", "AUTRE"), (80, 15, 5))[0],
                    identity,
                    f"p{rng.randrange(300_000)}",
                    rng.choice(("IC", "INC", "")),
                    rng.choice(("INO", "IO", "")),
                    flags,
                )
            )
            rows += [
                (uid, at, "received", "creator", "", "bench"),
                (uid, at + 0.1, "queued", "dmp", f"delivery {n} (initial)", "bench"),
            ]
            roll = n % 20
            if roll < 17:
                rows.append((uid, at + 300, "sent", "dmp", f"delivery {n}: DMP accepted (success)", "bench"))
            elif roll < 19:
                code = "XDSUnknownPatientId: no DMP" if roll == 17 else "DMPClosed: DMP fermé"
                rows.append((uid, at + 300, "dead-letter", "dmp", f"delivery {n}: {code}", "bench"))
            else:
                rows.append((uid, at + 60, "cancelled", "dmp", f"delivery {n} cancelled: superseded", "bench"))
            if flags & DEST_PS:
                rows.append(
                    (
                        uid,
                        at + 1,
                        "sent",
                        "mss",
                        f"delivery {n}: MSSanté: 1 recipient(s) accepted, 0 refused "
                        "(professionals: 1 accepted, 0 refused, 0 not sent)",
                        "bench",
                    )
                )
        yield facts, rows


def fill(conn, count: int, postgres: bool) -> float:
    """Write `count` reports through the counting code; returns the seconds it took."""
    rng = random.Random(7)
    started = time.perf_counter()
    journal_stats.register_channels(conn, {"dmp": "dmp", "mss": "mssante", "creator": "mllp-in"})
    for facts, rows in generated(count, rng):
        conn.execute("BEGIN" if postgres else "BEGIN IMMEDIATE")
        journal_stats.record_messages(conn, facts)
        events.write(conn, rows)
        conn.execute("COMMIT")
    return time.perf_counter() - started


def counters_of(conn) -> dict:
    return {
        tuple(r[:4]): r[4]
        for r in journal_stats.counters(lambda s, a=(): conn.execute(s, a).fetchall(), "2026-01", "2026-12")
        if r[4]
    }


def part1(workdir: Path, count: int, postgres_url: str | None) -> dict:
    postgres = postgres_url is not None
    if postgres:
        from engine.journal.postgres import connect

        conn = connect(postgres_url)
    else:
        conn = sqlite3.connect(workdir / "data" / "journal" / "journal.sqlite", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        schema.upgrade(conn)
    filled = fill(conn, count, postgres)
    read = lambda s, a=(): conn.execute(s, a).fetchall()  # noqa: E731
    api = []
    for _ in range(5):
        t0 = time.perf_counter()
        table = journal_stats.statistics(read, "2026-01", "2026-12")
        api.append(time.perf_counter() - t0)
    incremental = counters_of(conn)
    t0 = time.perf_counter()
    from engine.journal.dialect import POSTGRES, SQLITE

    done = journal_stats.rebuild(conn, POSTGRES if postgres else SQLITE)
    rebuilt = time.perf_counter() - t0
    equal = counters_of(conn) == incremental
    conn.close()
    cli = cli_time(workdir, postgres_url)
    return {
        "filled": filled,
        "api_ms": stat.median(api) * 1000,
        "rows": len(table.rows),
        "cli_s": cli,
        "rebuild_s": rebuilt,
        "rebuild_equal": equal,
        "events": done.events,
        "counters": len(incremental),
    }


def cli_time(workdir: Path, postgres_url: str | None) -> float:
    journal = ["--journal", postgres_url] if postgres_url else []
    t0 = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "stats",
            "--from",
            "2026-01",
            "--to",
            "2026-12",
            "--format",
            "csv",
            "-o",
            str(workdir / "year.csv"),
            "--config",
            str(workdir / "cfg"),
            "--data",
            str(workdir / "data"),
            *journal,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return elapsed


# -- part 2: intake with counting on and off ------------------------------------------------------


def report_message(pdf_chars: int = 30_000) -> bytes:
    """The ANS MDM^T02 (CR d'imagerie, CDA N1) with {CTRL} in MSH-10 and as a new patient's IPP,
    its embedded PDF cut to `pdf_chars` base64 characters (a ~45 KB message instead of 330 KB)."""
    import base64
    import re

    text = MDM.read_bytes().decode("utf-8").replace("\r\n", "\n")
    out = []
    for seg in (s for s in text.split("\n") if s.strip()):
        fields = seg.split("|")
        if seg.startswith("MSH|"):
            fields[9] = "{CTRL}"
        elif seg.startswith("PID|"):
            fields[3] = "{CTRL}^^^RIS&1.2.250.1.999.2&ISO^PI~" + fields[3]
            fields += [""] * (33 - len(fields))
            fields[32] = "VALI"
        elif seg.startswith("OBX|1|ED|"):
            parts = fields[5].split("^")
            cda = base64.b64decode(parts[4] + "=" * (-len(parts[4]) % 4)).decode("utf-8")
            cda = re.sub(
                r"(<text[^>]*>)\s*([A-Za-z0-9+/=\s]+?)\s*(</text>)",
                lambda m: m.group(1) + re.sub(r"\s", "", m.group(2))[:pdf_chars] + m.group(3),
                cda,
            )
            parts[4] = base64.b64encode(cda.encode("utf-8")).decode()
            fields[5] = "^".join(parts)
        out.append("|".join(fields))
    return ("\r".join(out) + "\r").encode("utf-8")


def engine_config(workdir: Path, routed: bool) -> Path:
    cfg = workdir / f"cfg-{'routed' if routed else 'intake'}"
    (cfg / "channels").mkdir(parents=True, exist_ok=True)
    (cfg / "channels" / "in.yaml").write_text(f"type: mllp-in\nport: {ENGINE_PORT}\nmax_message_bytes: 64MiB\n")
    (cfg / "channels" / "sink.yaml").write_text(
        f"type: mllp-out\nhost: 127.0.0.1\nport: {SINK_PORT}\nqueue_key: PID-3.1\nparallel_keys: 4\n"
    )
    routes = "routes:\n  - name: reports\n    match: {channel: in}\n    steps:\n      - deliver: {to: sink}\n"
    (cfg / "routes.yaml").write_text(routes if routed else "routes: []\n")
    (cfg / "pfi.yaml").write_text("log_level: info\nmetrics:\n  enabled: false\n")
    return cfg


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start_engine(cfg: Path, data: Path, counting: bool, log: Path, timing: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "stats_engine.py"),
                "on" if counting else "off",
                str(timing),
                "run",
                "--config",
                str(cfg),
                "--data",
                str(data),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "engine.started" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


async def one_run(
    workdir: Path, routed: bool, counting: bool, template: bytes, connections: int, seconds: float, tag: str
) -> dict:
    data, timing = workdir / f"data-{tag}", workdir / f"timing-{tag}.json"
    proc = start_engine(engine_config(workdir, routed), data, counting, workdir / f"engine-{tag}.log", timing)
    sink = Sink()
    port = reactor.listenTCP(SINK_PORT, sink, interface="127.0.0.1")
    try:
        if routed:  # the statistics take the sink for a DMP: each outcome is counted
            conn = sqlite3.connect(data / "journal" / "journal.sqlite", isolation_level=None, timeout=30)
            conn.execute(
                "INSERT INTO stats_channels (name, kind) VALUES ('sink', 'dmp') ON CONFLICT (name)"
                " DO UPDATE SET kind = excluded.kind"
            )
            conn.close()
        await run_load(ENGINE_PORT, template, 2, 0.5, f"W{tag}")  # warm-up: imports, first connections
        await drain(sink, routed, 0)
        warm = len(sink.arrived)
        cpu0 = cpu_seconds(proc.pid)
        load = await run_load(ENGINE_PORT, template, connections, seconds, f"{tag}-")
        delivered_at = await drain(sink, routed, warm + load["count"])
        cpu = cpu_seconds(proc.pid) - cpu0
        total_cpu = cpu_seconds(proc.pid)
        elapsed = (delivered_at - load["started"]) if routed else load["elapsed"]
        result = {
            "acked": load["rate"],
            "through": load["count"] / elapsed,
            "cpu_us": cpu / max(load["count"], 1) * 1e6,
            "errors": load["errors"],
            "messages": warm + load["count"],
            "total_cpu": total_cpu,
        }
    finally:  # in a thread: the sink (this reactor) must answer the engine's last sends while it stops
        await threads.deferToThread(stop_process, proc)
        await port.stopListening()
    if counting:  # CPU spent in the counting functions over the engine's life, per message
        totals = json.loads(timing.read_text())
        result["counting_us"] = {name: ns / 1000 / max(result["messages"], 1) for name, (ns, _) in totals.items()}
    return result


async def drain(sink: Sink, routed: bool, expected: int) -> float:
    """Wait until the sink has every routed message; when the last arrived."""
    deadline = time.perf_counter() + 120
    while routed and len(sink.arrived) < expected and time.perf_counter() < deadline:
        await sleep(0.02)
    return max(sink.arrived.values(), default=time.perf_counter())


async def part2(workdir: Path, rounds: int, seconds: float, connections: int) -> dict:
    results: dict = {}
    cases = (
        ("intake alone: ADT, no route", False, adt_message()),
        ("reports routed, outcome counted", True, report_message()),
    )
    for number in range(rounds):
        for name, routed, template in cases:
            for counting in (True, False) if number % 2 == 0 else (False, True):
                tag = f"{'r' if routed else 'i'}{'on' if counting else 'off'}{number}"
                result = await one_run(workdir, routed, counting, template, connections, seconds, tag)
                results.setdefault((name, counting), []).append(result)
    return results


def report_part2(results: dict, connections: int, seconds: float, rounds: int) -> None:
    print(
        f"\n2. Intake with counting on and off - {connections} connections, {seconds:g} s per run, {rounds} rounds "
        "interleaved (medians)"
    )
    print(f"{'case':<34} {'counting':>8} {'ACKed msg/s':>11} {'through msg/s':>13} {'CPU µs/msg':>10}")
    for name in dict.fromkeys(n for n, _ in results):
        medians = {}
        for counting in (False, True):
            runs = results[(name, counting)]
            medians[counting] = {k: stat.median(r[k] for r in runs) for k in ("acked", "through", "cpu_us")}
            m = medians[counting]
            print(
                f"{name:<34} {'on' if counting else 'off':>8} {m['acked']:>11.0f} {m['through']:>13.0f} "
                f"{m['cpu_us']:>10.0f}"
            )
        on, off = medians[True], medians[False]
        print(
            f"{'':<34} {'on/off':>8} {on['acked'] / off['acked'] - 1:>+11.1%} {on['through'] / off['through'] - 1:>+13.1%}"
            f" {on['cpu_us'] / off['cpu_us'] - 1:>+10.1%}"
        )
        counted = results[(name, True)]
        parts = {k: stat.median(r["counting_us"][k] for r in counted) for k in counted[0]["counting_us"]}
        # the registry look-up happens inside `classify`: not added twice
        per_message = [
            sum(v for k, v in r["counting_us"].items() if k != "registry") / (r["total_cpu"] * 1e6 / r["messages"])
            for r in counted
        ]
        print(
            f"{'':<34} counting CPU per message (measured in the engine): "
            + ", ".join(
                f"{k} {v:.1f} µs" if k != "registry" else f"(of which registry {v:.1f} µs)" for k, v in parts.items()
            )
            + f"; share of the engine's CPU per message: {stat.median(per_message):.2%}"
        )
    errors = sum(r["errors"] for runs in results.values() for r in runs)
    if errors:
        print(f"NACKs during the runs: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--pg", action="store_true", help="part 1 on PostgreSQL as well")
    parser.add_argument("--skip-intake", action="store_true", help="part 1 only")
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pfi-stats-bench-", dir=ROOT / "var"))
    try:
        (workdir / "data" / "journal").mkdir(parents=True)
        engine_config(workdir, False).rename(workdir / "cfg")
        print(f"1. A year of statistics over {args.messages:,} generated reports")
        backends = [("SQLite", None)] + ([("PostgreSQL", "pg")] if args.pg else [])
        for name, pg in backends:
            if pg:
                result = with_database(lambda url: part1(workdir, args.messages, url))
            else:
                result = part1(workdir, args.messages, None)
            print(
                f"   {name}: filled through the counting code in {result['filled']:.0f} s "
                f"({args.messages / result['filled']:,.0f} reports/s, {result['counters']:,} counters); "
                f"the year's table ({result['rows']} rows): API {result['api_ms']:.1f} ms, "
                f"`pfi stats` process {result['cli_s']:.2f} s; rebuild {result['rebuild_s']:.1f} s "
                f"({result['events']:,} outcome events), equal to incremental: {result['rebuild_equal']}"
            )
        if args.skip_intake:
            return

        async def run(_reactor):
            results = await part2(workdir, args.rounds, args.seconds, args.connections)
            report_part2(results, args.connections, args.seconds, args.rounds)

        task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def with_database(run):
    """A throw-away PostgreSQL database with the journal schema, dropped afterwards."""
    import psycopg

    from engine.journal import pgschema

    base = ADMIN_URL.rsplit("/", 1)[0]
    name = f"pfi_bench_stats_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
                pgschema.upgrade(conn)
            return run(f"{base}/{name}")
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
