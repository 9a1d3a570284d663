"""Teleradiology report flow benchmark: platform -> engine -> RIS + DMP simulator + DRIMbox (and
the MSSanté operator simulator, for the reports whose request names MSSanté recipients).

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
from engine.demo import PORTS, _environment, _start_engine, _start_mss_simulator, fictional_report  # noqa: E402
from engine.journal.sqlite import DURABILITY  # noqa: E402
from engine.sim.mllp import MllpPeer  # noqa: E402
from engine.mllp.client import connect, read_ack  # noqa: E402


async def run(seconds: float, connections: int, cda_processes: int) -> None:
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
    mail_operator, mail_ports = _start_mss_simulator(work)  # the shipped mssante channel's operator
    peers = {n: MllpPeer(n) for n in ("RIS", "TLR-A", "DRIMBOX")}
    ports = [
        reactor.listenTCP(PORTS[v], peers[n], interface="127.0.0.1")
        for n, v in (("RIS", "PFI_RIS_OUT_PORT"), ("TLR-A", "PFI_TLR_A_OUT_PORT"), ("DRIMBOX", "PFI_DRIMBOX_PORT"))
    ]
    engine = await _start_engine(work, cda_processes)
    acked: dict[str, float] = {}
    ack_times: list[float] = []
    start = time.time()
    counter = iter(range(10**6))

    async def platform(i: int):
        client = await connect(reactor, "127.0.0.1", PORTS["PFI_TLR_A_PORT"])
        while time.time() < start + seconds:
            n = next(counter)
            ctrl = f"F{n}"
            raw = fictional_report(ctrl, 100 + n)  # the demo's kit-valid report, a document of its own
            sent = time.time()
            if read_ack(await client.send(raw)).code == "AA":
                acked[ctrl] = time.time()
                ack_times.append(acked[ctrl] - sent)
        client.close()

    await defer.DeferredList([defer.Deferred.fromCoroutine(platform(i)) for i in range(connections)])
    deadline = time.time() + 180
    while not set(acked) <= set(peers["DRIMBOX"].control_ids()) and time.time() < deadline:
        d = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        await d
    drimbox = peers["DRIMBOX"]
    arrived = {_ctrl(raw): at for at, raw in zip(drimbox.times, drimbox.received)}
    end = max(arrived.values(), default=time.time())
    latencies = [arrived[c] - t for c, t in acked.items() if c in arrived]
    await engine.stopService()
    for p in ports + mail_ports:
        await p.stopListening()
    await sim.stop()
    print(
        f"\nTeleradiology flow benchmark - {connections} platform connections, zero delay, "
        f"CDA validation {f'in {cda_processes} worker process(es)' if cda_processes else 'in the engine threads'}, "
        f"journal: {DURABILITY}"
    )
    print(
        f"reports ACKed: {len(acked)}  reached RIS: {len(set(acked) & set(peers['RIS'].control_ids()))}  "
        f"published+DRIMbox: {len(latencies)}  ZAMs to platform: {len(peers['TLR-A'].received)}  "
        f"MSSanté mails: {len(mail_operator.received)}"
    )
    print(f"reports/s end to end: {len(latencies) / max(end - start, 1e-6):.1f}")
    print(
        f"platform ACK -> DRIMbox receipt: p50 {percentile(latencies, 50) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.0f} ms"
    )
    print(
        f"platform send -> ACK (intake, while reports are validated and routed): "
        f"p50 {percentile(ack_times, 50) * 1000:.1f} ms, p99 {percentile(ack_times, 99) * 1000:.1f} ms"
    )
    print("routing-only figure for comparison: bench/route.py")


def _ctrl(raw: bytes) -> str:
    from engine.hl7.scan import scan

    return scan(raw).control_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--cda-processes", type=int, default=1, help="cda_processes (0: in the engine's threads)")
    args = parser.parse_args()
    task.react(lambda r: defer.Deferred.fromCoroutine(run(args.seconds, args.connections, args.cda_processes)))


if __name__ == "__main__":
    main()
