"""MLLP fuzzing harness: mutated frames against a real engine process on 127.0.0.1.

    python bench/fuzz.py [--frames N] [--connections C] [--seconds S] [--seed K]

Seeds are the project's samples, the ANS example messages (../shared/corpus/ans) and a bench
ADT; each frame is mutated (bit flips, truncations, delimiters and CR/LF/VT/FS injected, MSH
damage, invalid encodings, huge fields, framing errors, noise) and pipelined over several
persistent connections. A mirror of the engine's MLLP decoder, fed the same bytes, predicts how
many answers each batch must get and how many journal rows it must leave. Printed: answers by
code, unanswered frames, connections closed (expected after an oversized frame, unexpected
otherwise), unhandled errors in the engine log, RSS before/after, /metrics series count, and a
journal check (every AA'd control id stored, one intake row per frame or noise). Exit status 1
when `defects()` finds any. Bounded by --frames and --seconds; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from bench.common import SHARED, adt_message, free_port, start_engine_process, stop_process  # noqa: E402
from engine.hl7.ack import ECHO_LIMIT  # noqa: E402
from engine.mllp.framing import Frame, MLLPDecoder, Noise, Oversized, frame  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOISE_REASON = "bytes outside any MLLP frame"  # engine.mllp.server's quarantine reason
MAX_MESSAGE = 256 * 1024
BATCH = 16
DELIMS = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\x0b", b"\x1c", b"\x1c\r", b"\x00", b"\xff", b"\xc3"]


def seeds() -> list[bytes]:
    found = [adt_message().replace(b"{CTRL}", b"SEED")]
    paths = sorted((ROOT / "samples").glob("*.hl7"))
    corpus = SHARED / "corpus" / "ans"
    if corpus.exists():
        paths += sorted(p for p in corpus.rglob("*") if p.suffix.lower() in (".hl7", ".er7"))
    for path in paths:
        data = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        if data.lstrip().startswith(b"MSH") and len(data) < MAX_MESSAGE:
            found.append(data.strip() + b"\r")
    return found


def with_control_id(message: bytes, ctrl: bytes) -> bytes:
    """Put `ctrl` in MSH-10 so that an AA can be traced to the journal."""
    head, sep, rest = message.partition(b"\r")
    fields = head.split(b"|")
    if len(fields) > 10:
        fields[9] = ctrl
    return b"|".join(fields) + sep + rest


class Mutator:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.ops = [
            self.clean,
            self.bit_flips,
            self.truncate,
            self.inject_delimiters,
            self.damage_msh,
            self.lf_separators,
            self.invalid_encoding,
            self.huge_field,
            self.drop_segment,
            self.duplicate_segment,
            self.msh_only,
            self.empty,
            self.noise_before,
            self.double_start,
            self.missing_end,
            self.stray_end,
        ]

    def __call__(self, message: bytes) -> tuple[str, bytes]:
        """(mutation name, bytes to write on the wire: one or more frames, maybe with noise)."""
        op = self.rng.choice(self.ops)
        return op.__name__, op(message)

    def clean(self, m):
        return frame(m)

    def bit_flips(self, m):
        data = bytearray(m)
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(data))
            data[i] ^= 1 << self.rng.randrange(8)
        return frame(bytes(data).replace(b"\x1c\r", b"\x1c "))  # flips must not forge an end block

    def truncate(self, m):
        return frame(m[: self.rng.randrange(1, len(m))])

    def inject_delimiters(self, m):
        data = bytearray(m)
        for _ in range(self.rng.randint(1, 6)):
            i = self.rng.randrange(len(data))
            data[i:i] = self.rng.choice(DELIMS)
        return frame(bytes(data))

    def damage_msh(self, m):
        variants = [
            b"MSH\r" + m[4:],
            b"MSH" + m[8:],
            b"MSH|" + m[8:],
            b"MSH|\xe9\xe8\\&" + m[8:],
            b"MSH" + bytes([self.rng.randrange(256)]) + m[4:],
            b"msh" + m[3:],
            m[:9] + m[9:].replace(b"|", b"", 3),
        ]
        return frame(self.rng.choice(variants))

    def lf_separators(self, m):
        return frame(m.replace(b"\r", self.rng.choice([b"\n", b"\r\n"])))

    def invalid_encoding(self, m):
        data = bytearray(m)
        i = self.rng.randrange(len(data))
        data[i:i] = self.rng.choice([b"\xc3\x28", b"\xff\xfe", b"\xed\xa0\x80", b"\xe9"])
        return frame(bytes(data))

    def huge_field(self, m):
        size = self.rng.choice([10_000, 100_000, MAX_MESSAGE + 10])
        fields = m.split(b"|")
        i = self.rng.randrange(1, len(fields))
        fields[i] = b"X" * size
        return frame(b"|".join(fields))

    def drop_segment(self, m):
        segments = m.split(b"\r")
        if len(segments) > 2:
            del segments[self.rng.randrange(len(segments))]
        return frame(b"\r".join(segments))

    def duplicate_segment(self, m):
        segments = m.split(b"\r")
        i = self.rng.randrange(len(segments))
        segments.insert(i, segments[i])
        return frame(b"\r".join(segments))

    def msh_only(self, m):
        return frame(self.rng.choice([b"MSH\rPID|1\r", b"MSH|", b"MSH|^~\\&", m.split(b"\r")[0]]))

    def empty(self, m):
        return frame(self.rng.choice([b"", b"\r", b" "]))

    def noise_before(self, m):
        return b"GARBAGE" + bytes(self.rng.randrange(1, 255) for _ in range(8)).replace(b"\x0b", b"") + frame(m)

    def double_start(self, m):
        return b"\x0b" + frame(m)

    def missing_end(self, m):
        return b"\x0b" + m  # merges with the next frame: the mirror decoder accounts for it

    def stray_end(self, m):
        cut = self.rng.randrange(1, len(m))
        return frame(m[:cut]) + frame(m[cut:])


NOISE_PADDING = b"\r\n\x00 \t\x1c"  # what the decoder strips from noise (engine.mllp.framing)


def significant(noise: bytes) -> int:
    return len(noise.translate(None, NOISE_PADDING))


def msa_field(payload: bytes, n: int, missing: str) -> str:
    """MSA-n of an answer, split with its own field separator; `missing` when absent."""
    for segment in re.split(rb"[\r\n]+", payload):
        if segment.startswith(b"MSA") and len(segment) > 4:
            fields = segment.split(segment[3:4])
            return fields[n].decode("ascii", "replace") if len(fields) > n else missing
    return "no-MSA" if n == 1 else ""


def answer_code(payload: bytes) -> str:
    return msa_field(payload, 1, "?")


def answer_control_id(payload: bytes) -> str:
    return msa_field(payload, 2, "")


class Connection:
    """One persistent connection and the mirror decoder predicting what the engine will see."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.mirror = MLLPDecoder(MAX_MESSAGE)
        self.answers = MLLPDecoder(64 * 1024 * 1024)
        self.closed = False

    def send(self, data: bytes) -> tuple[int, int, bool]:
        """Write `data`; returns (answers expected, noise bytes expected, engine will close).

        Noise is counted in bytes, not rows: how bytes outside frames split into journal rows
        depends on how TCP cut them, but every significant byte must be kept."""
        answers = noise = 0
        closing = False
        for event in self.mirror.feed(data):
            if isinstance(event, Noise):
                noise += significant(event.data)
            elif isinstance(event, Frame):
                answers += 1
            elif isinstance(event, Oversized):
                answers += 1
                closing = True
                break  # the engine reads nothing more on this connection
        try:
            self.sock.sendall(data)
        except OSError:  # the engine closed on us: counted as an unexpected close by the caller
            self.closed = True
        return answers, noise, closing

    def receive(self, count: int, timeout: float) -> tuple[list[bytes], bool]:
        """Up to `count` answers; (answers, connection closed by the engine)."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                return got, True
            if not data:
                return got, True
            got += [e.payload for e in self.answers.feed(data) if isinstance(e, Frame)]
        return got, False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def write_config(directory: Path, port: int, metrics_port: int, document_check: bool = False) -> Path:
    (directory / "channels").mkdir(parents=True)
    channel = {
        "type": "mllp-in",
        "host": "127.0.0.1",
        "port": port,
        "max_message_bytes": MAX_MESSAGE,
        "idle_timeout": 600,
    }
    if document_check:  # the shipped RIS channel: request and CDA checked before the ACK
        channel.update(ack_mode="document-request", check_cda="full")
    (directory / "channels" / "fuzz.yaml").write_text(yaml.safe_dump(channel))
    (directory / "routes.yaml").write_text(yaml.safe_dump({"routes": []}))
    (directory / "pfi.yaml").write_text(yaml.safe_dump({"metrics": {"port": metrics_port}, "log_level": "info"}))
    return directory


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def unhandled_errors(log_text: str) -> list[str]:
    bad = []
    for line in log_text.splitlines():
        if "Traceback" in line or "Unhandled" in line or '"level": "error"' in line or '"level": "critical"' in line:
            bad.append(line[:300])
    return bad


def run(
    frames: int = 2000,
    connections: int = 4,
    seconds: float = 120.0,
    seed: int = 1,
    workdir: Path | None = None,
    document_check: bool = False,
) -> dict:
    rng = random.Random(seed)
    mutate = Mutator(rng)
    pool = seeds()
    base = Path(workdir or tempfile.mkdtemp(prefix="pfi-fuzz-"))
    port, metrics_port = free_port(), free_port()
    config = write_config(base / "cfg", port, metrics_port, document_check)
    log_path = base / "engine.log"
    proc = start_engine_process(["run", "--config", str(config), "--data", str(base / "data")], log_path)
    stats = Counter()
    aa_ids: set[str] = set()
    expected_rows = expected_noise = 0
    try:
        time.sleep(0.2)
        rss_before = rss_kib(proc.pid)
        conns = [Connection(port) for _ in range(connections)]
        deadline = time.monotonic() + seconds
        sent = 0
        while sent < frames and time.monotonic() < deadline:
            for i, conn in enumerate(conns):
                batch_answers = batch_noise = 0
                closing = False
                for _ in range(BATCH):
                    name, data = mutate(with_control_id(rng.choice(pool), f"FZ{sent}".encode()))
                    stats[f"mutation.{name}"] += 1
                    answers, noise, closing = conn.send(data)
                    batch_answers += answers
                    batch_noise += noise
                    sent += 1
                    if closing or conn.closed:
                        break
                expected_rows += batch_answers
                expected_noise += batch_noise
                stats["frames.expected_answers"] += batch_answers
                got, closed = conn.receive(batch_answers, timeout=30.0)
                stats["answers.received"] += len(got)
                # TCP may hand the engine a frame after an oversized one in the same read, which it
                # still answers: more answers than the mirror predicted is not a defect, fewer is.
                stats["answers.missing"] += max(0, batch_answers - len(got))
                stats["answers.extra"] += max(0, len(got) - batch_answers)
                for payload in got:
                    code = answer_code(payload)
                    stats[f"code.{code}"] += 1
                    ctrl = answer_control_id(payload)
                    if code == "AA" and ctrl.isascii() and ctrl.isprintable():
                        aa_ids.add(ctrl)
                if closing or closed or conn.closed:
                    if closing and not conn.closed:
                        stats["connections.closed_after_oversize"] += 1
                        conn.receive(1, timeout=5.0)  # wait for the engine's close
                    else:
                        stats["connections.closed_unexpectedly"] += 1
                    conn.close()
                    conns[i] = Connection(port)
        for conn in conns:  # an unfinished frame (missing end) at the end is not counted
            conn.close()
        stats["frames.sent"] = sent
        time.sleep(0.5)
        rss_after = rss_kib(proc.pid)
        series, metrics_bytes = metrics_size(metrics_port)
    finally:
        stop_process(proc)
    journal = journal_check(base / "data", aa_ids, expected_rows, expected_noise)
    return {
        "frames": sent,
        "connections": connections,
        "seed": seed,
        "answers": {k[5:]: v for k, v in sorted(stats.items()) if k.startswith("code.")},
        "expected_answers": stats["frames.expected_answers"],
        "unanswered": stats["answers.missing"],
        "extra_answers": stats["answers.extra"],
        "closed_after_oversize": stats["connections.closed_after_oversize"],
        "closed_unexpectedly": stats["connections.closed_unexpectedly"],
        "unhandled_errors": unhandled_errors(log_path.read_text()),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "metrics_series": series,
        "metrics_bytes": metrics_bytes,
        "journal": journal,
        "workdir": str(base),
        "mutations": {k[9:]: v for k, v in sorted(stats.items()) if k.startswith("mutation.")},
    }


def metrics_size(port: int) -> tuple[int, int]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    except OSError:
        return -1, -1
    lines = [line for line in text.splitlines() if line and not line.startswith(b"#")]
    return len(lines), len(text)


def journal_check(data_dir: Path, aa_ids: set[str], expected_rows: int, expected_noise: int) -> dict:
    from engine.journal.reader import JournalReader

    reader = JournalReader(data_dir / "journal" if (data_dir / "journal").exists() else data_dir)
    events = [e for e in reader.events_after(0, limit=10_000_000) if e.state in ("received", "rejected", "duplicate")]
    # ACKs echo MSH-10 bounded and without control characters (engine.hl7.ack): compare alike
    stored_ids = {
        re.sub(r"[\x00-\x1f\x7f]", "", (e.control_id or "")[:ECHO_LIMIT]) for e in events if e.state == "received"
    }
    missing = sorted(aa_ids - stored_ids)
    unreadable = noise_bytes = noise_rows = 0
    for e in events:
        try:
            raw = reader.load_message(e.message_uid).raw
        except Exception:  # noqa: BLE001 — a damaged record is what we are counting
            unreadable += 1
            continue
        if (e.detail or "").startswith(NOISE_REASON):
            noise_rows += 1
            noise_bytes += significant(raw)
    return {
        "intake_rows": len(events) - noise_rows,
        "expected_rows": expected_rows,
        "noise_rows": noise_rows,
        "noise_bytes": noise_bytes,
        "expected_noise_bytes": expected_noise,
        "aa_ids": len(aa_ids),
        "aa_missing": len(missing),
        "aa_missing_sample": missing[:5],
        "unreadable": unreadable,
    }


def defects(result: dict) -> list[str]:
    found = []
    if result["unhandled_errors"]:
        found.append(f"{len(result['unhandled_errors'])} unhandled errors in the engine log")
    if result["unanswered"]:
        found.append(f"{result['unanswered']} frames without an answer")
    if result["closed_unexpectedly"]:
        found.append(f"{result['closed_unexpectedly']} connections closed unexpectedly")
    j = result["journal"]
    if j["aa_missing"]:
        found.append(f"{j['aa_missing']} AA'd control ids missing from the journal")
    if j["unreadable"]:
        found.append(f"{j['unreadable']} unreadable journal records")
    if j["intake_rows"] < j["expected_rows"]:
        found.append(f"journal has {j['intake_rows']} rows for frames, expected {j['expected_rows']}")
    if j["noise_bytes"] < j["expected_noise_bytes"]:
        found.append(f"journal kept {j['noise_bytes']} bytes of noise, expected {j['expected_noise_bytes']}")
    if result["answers"].get("no-MSA"):
        found.append(f"{result['answers']['no-MSA']} answers without MSA")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--document-check",
        action="store_true",
        help="the channel checks document requests and their CDA before the ACK (shipped RIS)",
    )
    args = parser.parse_args()
    result = run(args.frames, args.connections, args.seconds, args.seed, document_check=args.document_check)
    print(json.dumps({k: v for k, v in result.items() if k != "unhandled_errors"}, indent=2))
    for line in result["unhandled_errors"][:10]:
        print("unhandled:", line)
    found = defects(result)
    print("defects:", found or "none")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
