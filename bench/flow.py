"""Teleradiology report flow benchmark: platform -> engine -> RIS + DMP simulator + DRIMbox.

    .venv/bin/python bench/flow.py [--seconds 5] [--connections 4]

Reports per second and latency from the platform's ACK to the DRIMbox's receipt (the DRIMbox
gets a report only after the DMP accepted it), with zero withdrawal delay, the shipped
routes.yaml, the DMP simulator over mutual TLS. Everything runs in this process on 127.0.0.1
(engine, simulator, peers, load), so the figure is a floor for a machine where they are apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task  # noqa: E402

from bench.common import percentile  # noqa: E402
from engine.demo import MDM, PORTS, Peer, _environment, _start_engine, new_version_of  # noqa: E402
from engine.journal.sqlite import DURABILITY  # noqa: E402
from engine.mllp.client import connect, read_ack  # noqa: E402

INIT = MDM / "Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7"


async def run(seconds: float, connections: int) -> None:
    from engine.sim.dmp import DmpSimulator
    from engine.log import configure_logging
    from engine.pki import ensure_test_pki

    configure_logging("warning")
    work = Path(tempfile.mkdtemp(prefix="pfi-flow-bench-"))
    pki = ensure_test_pki(work / "pki")
    sim = DmpSimulator(reactor, port=0, pki_dir=pki.directory, data_dir=work / "sim")
    sim.start()
    _environment(pki, sim.base_url)
    os.environ["PFI_DMP_DELAY"] = "0s"
    peers = {n: Peer(n) for n in ("RIS", "TLR-A", "DRIMBOX")}
    ports = [
        reactor.listenTCP(PORTS[v], peers[n], interface="127.0.0.1")
        for n, v in (("RIS", "PFI_RIS_OUT_PORT"), ("TLR-A", "PFI_TLR_A_OUT_PORT"), ("DRIMBOX", "PFI_DRIMBOX_PORT"))
    ]
    engine = await _start_engine(work)
    acked: dict[str, float] = {}
    start = time.time()
    counter = iter(range(10**6))

    async def platform(i: int):
        client = await connect(reactor, "127.0.0.1", PORTS["PFI_TLR_A_PORT"])
        while time.time() < start + seconds:
            n = next(counter)
            ctrl = f"F{n}"
            raw = new_version_of(INIT, ctrl, b"71024000081", f"7{n:010d}".encode())
            if read_ack(await client.send(raw)).code == "AA":
                acked[ctrl] = time.time()
        client.close()

    await defer.DeferredList([defer.Deferred.fromCoroutine(platform(i)) for i in range(connections)])
    deadline = time.time() + 180
    while not set(acked) <= set(peers["DRIMBOX"].control_ids()) and time.time() < deadline:
        d = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        await d
    arrived = {c: at for at, c in ((at, _ctrl(raw)) for at, raw in peers["DRIMBOX"].received)}
    end = max(arrived.values(), default=time.time())
    latencies = [arrived[c] - t for c, t in acked.items() if c in arrived]
    await engine.stopService()
    for p in ports:
        await p.stopListening()
    await sim.stop()
    print(f"\nTeleradiology flow benchmark - {connections} platform connections, zero delay, journal: {DURABILITY}")
    print(
        f"reports ACKed: {len(acked)}  reached RIS: {len(set(acked) & set(peers['RIS'].control_ids()))}  "
        f"published+DRIMbox: {len(latencies)}  ZAMs to platform: {len(peers['TLR-A'].received)}"
    )
    print(f"reports/s end to end: {len(latencies) / max(end - start, 1e-6):.1f}")
    print(
        f"platform ACK -> DRIMbox receipt: p50 {percentile(latencies, 50) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.0f} ms"
    )
    print("routing-only figure for comparison: bench/route.py")


def _ctrl(raw: bytes) -> str:
    from engine.hl7.scan import scan

    return scan(raw).control_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    task.react(lambda r: defer.Deferred.fromCoroutine(run(args.seconds, args.connections)))


if __name__ == "__main__":
    main()
