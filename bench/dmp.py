"""DMP publication benchmark: the connector against the simulator running in another process.

    python bench/dmp.py [--count 100] [--concurrency 8]

Prints, for the ANS CR d'imagerie N1 and N3 examples: documents published per second (sequential
and with `concurrency` in flight), p50/p99 publication latency (sequential), and the share of the
client's time spent in metadata extraction (XSLT), VIHF signing and HTTP (incl. the simulator).
Bounded and self-stopping; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from engine.dmp.client import DmpClient  # noqa: E402
from engine.dmp.config import DmpChannelSettings, DmpEndpoints, LpsIdentity  # noqa: E402
from engine.dmp.model import Organisation, Person, PublishRequest  # noqa: E402
from engine.pki import generate_test_pki  # noqa: E402

KIT = ROOT.parent / "shared" / "corpus" / "cda" / "TestContenuCDA-3-0"
DOCS = {
    "N3": (KIT / "ExemplesCDA" / "IMG_CR_IMG_2024.01.xml", "1.2.250.1.213.1.1.1.45.2024.1.1"),
    "N1": (KIT / "ExemplesCDA" / "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml", "1.2.250.1.213.1.1.1.45.2024.2.1"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_simulator(pki_dir: Path, data_dir: Path, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "sim",
        "dmp",
        "--port",
        str(port),
        "--pki",
        str(pki_dir),
        "--data",
        str(data_dir),
        "--valuesets",
        str(KIT / "jeuxDeValeurs"),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("simulator did not start")


def settings_for(pki, port: int, signature: bool) -> DmpChannelSettings:
    return DmpChannelSettings(
        submission_signature=signature,
        endpoints=DmpEndpoints.from_base(f"https://127.0.0.1:{port}"),
        client_cert=pki.client.cert,
        client_key=pki.client.key,
        ca_bundle=pki.ca.cert,
        structure_id="3300017985",
        source_oid="1.2.250.1.999.1",
        lps=LpsIdentity(homologation_id="BENCH"),
    )


SENDER = Person(id="801234560801", family="BIDEAULT", given="Jacques", roles=(("10", "1.2.250.1.71.1.2.7"),))
ORG = Organisation(name="Centre de radiologie Ambroise", id="3300017985")


def requests(
    level: str, count: int, run: str, action: str = "initial", replaces: str | None = None
) -> list[PublishRequest]:
    """`count` requests on copies of the example with ids `<id>.<run>.<n>`."""
    path, doc_id = DOCS[level]
    data = path.read_bytes()
    out = []
    for n in range(count):
        unique = data.replace(f'root="{doc_id}"'.encode(), f'root="{doc_id}.{run}.{n}"'.encode(), 1)
        out.append(
            PublishRequest(
                action=action,
                cda=unique,
                ins="279035121518989",
                ins_oid="1.2.250.1.213.1.4.10",
                ins_qualified=True,
                sender=SENDER,
                sender_organisation=ORG,
                replaced_document_id=f"{doc_id}.{replaces}.{n}" if replaces else None,
                message_control_id=f"B{n}",
            )
        )
    return out


async def sequential(client: DmpClient, batch: list[PublishRequest]) -> tuple[float, list[float]]:
    latencies = []
    started = time.perf_counter()
    for request in batch:
        t0 = time.perf_counter()
        result = await client.publish(request)
        latencies.append(time.perf_counter() - t0)
        if not result.ok:
            raise SystemExit(f"publication failed: {result}")
    return time.perf_counter() - started, latencies


async def concurrent(client: DmpClient, batch: list[PublishRequest], width: int) -> float:
    queue = list(batch)

    async def worker():
        while queue:
            result = await client.publish(queue.pop())
            if not result.ok:
                raise SystemExit(f"publication failed: {result}")

    started = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(width)])
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def bench_level(reactor, settings, level: str, count: int, width: int) -> None:
    client = DmpClient(reactor, settings)
    await client.publish(requests(level, 1, "warm")[0])  # TLS session, XSLT compile, imports
    client.timings.__init__()
    elapsed, latencies = await sequential(client, requests(level, count, "seq"))
    t = client.timings
    total = sum(latencies)
    other = total - t.metadata - t.signing - t.http
    print(
        f"{level}: sequential {count / elapsed:7.1f} docs/s   p50 {statistics.median(latencies) * 1000:6.1f} ms"
        f"   p99 {pct(latencies, 0.99) * 1000:6.1f} ms"
    )
    print(
        f"{level}: time share  metadata(XSLT) {t.metadata / total:5.1%}  signing(VIHF) "
        f"{t.signing / total:5.1%}  HTTP+simulator {t.http / total:5.1%}  other(ebRIM, MTOM, "
        f"SOAP) {other / total:5.1%}"
    )
    elapsed = await concurrent(client, requests(level, count, "par"), width)
    print(f"{level}: {width} in flight {count / elapsed:7.1f} docs/s")
    lifecycle = max(10, count // 5)
    _, replace = await sequential(client, requests(level, lifecycle, "v2", "replace", "seq"))
    _, delete = await sequential(client, requests(level, lifecycle, "v2", "delete"))
    print(
        f"{level}: replace (ITI-18 + ITI-41) p50 {statistics.median(replace) * 1000:6.1f} ms, "
        f"delete (ITI-18 + ITI-57) p50 {statistics.median(delete) * 1000:6.1f} ms "
        f"({lifecycle} each)"
    )
    await client.close()


async def main(reactor, args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pki = generate_test_pki(Path(tmp) / "pki")
        port = free_port()
        proc = start_simulator(pki.directory, Path(tmp) / "data", port)
        try:
            print(
                f"DMP bench: {args.count} documents per run, simulator pid {proc.pid}, "
                f"{os.cpu_count()} CPUs, submission signature {args.signature}"
            )
            for level in ("N1", "N3"):
                await bench_level(reactor, settings_for(pki, port, args.signature), level, args.count, args.concurrency)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--signature", action="store_true", help="add the XAdES submission-set signature document")
    arguments = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
