"""Routing benchmark: messages/s end to end and latency from the inbound ACK to the destination's
ACK, for 1 route -> 1 MLLP destination and 1 route -> 3 destinations, beside intake alone.

    .venv/bin/python bench/route.py [--seconds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, protocol, reactor, task  # noqa: E402

from bench.common import ROOT, adt_message, percentile  # noqa: E402
from bench.intake import ENGINE_PORT  # noqa: E402
from engine.hl7.scan import scan  # noqa: E402
from engine.journal.sqlite import DURABILITY  # noqa: E402
from engine.mllp.framing import Frame, MLLPDecoder, frame  # noqa: E402

SINK_PORTS = (24101, 24102, 24103)


class Sink(protocol.ServerFactory):
    """A destination that answers AA at once and notes when each control id arrived."""

    def __init__(self):
        self.arrived: dict[str, float] = {}

    def buildProtocol(self, addr):
        p = _SinkProtocol()
        p.factory = self
        return p


class _SinkProtocol(protocol.Protocol):
    def connectionMade(self):
        self.decoder = MLLPDecoder()

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                ctrl = scan(event.payload).control_id
                self.factory.arrived.setdefault(ctrl, time.perf_counter())
                self.transport.write(frame(f"MSH|^~\\&|S|S|P|P|1||ACK|{ctrl}|P|2.5\rMSA|AA|{ctrl}\r".encode()))


class Sender(protocol.Protocol):
    def __init__(self, prefix, deadline, acked):
        self.prefix, self.deadline, self.acked = prefix, deadline, acked
        self.decoder, self.n, self.done = MLLPDecoder(), 0, defer.Deferred()
        self.template = adt_message()

    def connectionMade(self):
        self._send()

    def _send(self):
        if time.perf_counter() >= self.deadline:
            self.transport.loseConnection()
            return
        self.n += 1
        self.ctrl = f"{self.prefix}{self.n}"
        self.transport.write(frame(self.template.replace(b"{CTRL}", self.ctrl.encode())))

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.acked[self.ctrl] = time.perf_counter()
                self._send()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(None)


def write_config(workdir: Path, destinations: int) -> Path:
    cfg = workdir / "cfg"
    (cfg / "channels").mkdir(parents=True)
    (cfg / "channels" / "in.yaml").write_text(f"type: mllp-in\nport: {ENGINE_PORT}\n")
    names = []
    for i in range(destinations):
        names.append(f"dest{i}")
        (cfg / "channels" / f"dest{i}.yaml").write_text(
            f"type: mllp-out\nhost: 127.0.0.1\nport: {SINK_PORTS[i]}\nqueue_key: PID-3.1\nparallel_keys: 4\n")
    routes = (f"routes:\n  - name: bench\n    match: {{channel: in}}\n    steps:\n"
              f"      - deliver: {{to: [{', '.join(names)}]}}\n") if destinations else "routes: []\n"
    (cfg / "routes.yaml").write_text(routes)
    (cfg / "pfi.yaml").write_text("log_level: info\nmetrics:\n  enabled: false\n")
    return cfg


def start_engine(workdir: Path, cfg: Path) -> subprocess.Popen:
    log_path = workdir / f"engine-{time.time_ns()}.log"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--config", str(cfg),
                             "--data", str(workdir / f"data-{time.time_ns()}")], cwd=ROOT,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "engine.started" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


async def scenario(workdir: Path, destinations: int, connections: int, seconds: float) -> dict:
    sinks = [Sink() for _ in range(destinations)]
    ports = [reactor.listenTCP(SINK_PORTS[i], s, interface="127.0.0.1") for i, s in enumerate(sinks)]
    proc = start_engine(workdir, write_config(workdir / f"s{destinations}", destinations))
    acked: dict[str, float] = {}
    started = time.perf_counter()
    try:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        senders = [await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", ENGINE_PORT),
                                         Sender(f"R{destinations}-{i}-", started + seconds, acked))
                   for i in range(connections)]
        await defer.DeferredList([s.done for s in senders])
        intake_elapsed = time.perf_counter() - started
        drain_deadline = time.perf_counter() + 120
        while destinations and time.perf_counter() < drain_deadline and not all(
                set(acked) <= set(s.arrived) for s in sinks):
            await _sleep(0.05)
        elapsed = max(max(s.arrived.values(), default=started) for s in sinks) - started if destinations else intake_elapsed
    finally:
        proc.terminate()
        proc.wait(30)
        for p in ports:
            await p.stopListening()
    latencies = [s.arrived[c] - t for s in sinks for c, t in acked.items() if c in s.arrived]
    delivered = sum(len(set(acked) & set(s.arrived)) for s in sinks)
    elapsed = max(elapsed, 1e-6)
    return {"acked": len(acked), "rate": len(acked) / elapsed, "delivered": delivered,
            "p50": percentile(latencies, 50) * 1000 if latencies else float("nan"),
            "p99": percentile(latencies, 99) * 1000 if latencies else float("nan")}


async def _sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pfi-route-bench-", dir=ROOT / "var"))

    async def run(_reactor):
        intake = await scenario(workdir, 0, args.connections, args.seconds)
        one = await scenario(workdir, 1, args.connections, args.seconds)
        three = await scenario(workdir, 3, args.connections, args.seconds)
        print(f"\nRouting benchmark - ADT ~1KB, {args.connections} connections, journal: {DURABILITY}")
        print(f"{'scenario':<28} {'msg/s':>8} {'ACK->dest p50 ms':>17} {'p99 ms':>8} {'delivered':>10} {'vs intake':>9}")
        print(f"{'intake only (no route)':<28} {intake['rate']:>8.0f} {'-':>17} {'-':>8} {'-':>10} {'100%':>9}")
        for name, r, n in (("1 route -> 1 destination", one, 1), ("1 route -> 3 destinations", three, 3)):
            print(f"{name:<28} {r['rate']:>8.0f} {r['p50']:>17.1f} {r['p99']:>8.1f} "
                  f"{r['delivered']:>5}/{r['acked'] * n:<5} {r['rate'] / intake['rate']:>8.0%}")

    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
