"""Benchmark helpers: realistic messages, a closed-loop MLLP load generator, an MLLP sink,
engine subprocesses, percentiles."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from engine.hl7.scan import scan
from engine.mllp.directwrite import write_now
from engine.sim.mllp import MllpPeer, ack_for_control_id
from engine.mllp.framing import Frame, MLLPDecoder, frame

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def adt_message() -> bytes:
    """A ~1 KB PAM.fr ADT^A01 with a placeholder control id (fictional patient)."""
    segs = [
        "MSH|^~\\&|GAM|CHU-BENCH|PFI|CHU-BENCH|20261122101010||ADT^A01^ADT_A01|{CTRL}|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM",
        "EVN||20261122101010||||20261122100000",
        "PID|1||{CTRL}^^^CHU-BENCH&1.2.250.1.999.1&ISO^PI~248067512345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||"
        "TESTBENCH^Émile^Émile^^^^L||19800615|M|||12 rue des Lilas^^LYON^^69003^FRA^H||^PRN^PH^^^^^^^^^0472000000|||M||"
        "ACC{CTRL}^^^CHU-BENCH&1.2.250.1.999.1&ISO^AN|||||||||||N||VALI|20261122101000",
        "PD1||U||||||||||N",
        "ROL||UC|ODRP|10000000001^MEDECIN^Jean^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^L^^^RPPS",
        "PV1|1|I|CARDIO^101^1^CHU-BENCH||||10000000001^MEDECIN^Jean^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^L^^^RPPS|||||||||||"
        "VN{CTRL}^^^CHU-BENCH&1.2.250.1.999.1&ISO^VN|||||||||||||||||||||||||20261122100000",
        "ZBE|MVT{CTRL}^CHU-BENCH^1.2.250.1.999.1^ISO|20261122100000||INSERT|N",
        "ZFA|ACTIF|20261122101154|||||||INO|20261122101154|IC|20261122101154",
        "ZFD|||Y||INSI",
    ]
    return ("\r".join(segs) + "\r").encode()


def oru_message(target: int = 40_000) -> bytes:
    """A ~40 KB ORU^R01 carrying a base64 CDA in OBX-5.5 (a real kit CDA, trimmed to size)."""
    cda_path = SHARED / "corpus/ans/hl7V2-exemples/Vague 2/RIS/transmission_initiale_cr_imagerie.xml"
    cda = cda_path.read_bytes() if cda_path.exists() else os.urandom(30_000)
    payload = base64.b64encode(cda)[: target - 1500].decode()
    segs = [
        "MSH|^~\\&|RIS|CABINET-BENCH|PFI|CHU-BENCH|20261122101010||ORU^R01^ORU_R01|{CTRL}|P|2.5|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2",
        "PID|1||{CTRL}^^^RIS&1.2.250.1.999.2&ISO^PI~248067512345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||TESTBENCH^Émile^Émile^^^^L||19800615|M|||||||||||||||||||||||VALI",
        "PV1|1|N",
        "ORC|NW||||||||20261122101010",
        "OBR|1|||18748-4^CR d'imagerie médicale^LN|||20261122100000",
        f"OBX|1|ED|18748-4^CR d'imagerie médicale^LN||^TEXT^XML^Base64^{payload}||||||F",
        "OBX|2|CE|DESTDMP^Destination DMP^MetaDMPMSS||Y^^expandedYes-NoIndicator||||||F",
    ]
    return ("\r".join(segs) + "\r").encode()


class LoadClient(protocol.Protocol):
    """Closed loop: one message in flight per connection, the next sent when its ACK arrives."""

    def __init__(self, template: bytes, prefix: str, deadline: float, latencies: list, record: dict | None = None):
        self.template, self.prefix, self.deadline = template, prefix, deadline
        self.latencies = latencies
        self.record = record  # when given: control id -> (sent at, ACKed at), for end-to-end timings
        self.decoder = MLLPDecoder()
        self.count = 0
        self.errors = 0
        self.done = defer.Deferred()

    def connectionMade(self):
        self._send()

    def _send(self):
        if time.perf_counter() >= self.deadline:
            self.transport.loseConnection()
            return
        self.count += 1
        self._ctrl = f"{self.prefix}{self.count}"
        self._sent_at = time.perf_counter()
        self.transport.write(frame(self.template.replace(b"{CTRL}", self._ctrl.encode())))

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                acked_at = time.perf_counter()
                self.latencies.append(acked_at - self._sent_at)
                if self.record is not None:
                    self.record[self._ctrl] = (self._sent_at, acked_at)
                if b"MSA|AA|" not in event.payload:
                    self.errors += 1
                self._send()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(None)


async def run_load(
    port: int | list[int], template: bytes, connections: int, seconds: float, tag: str, record: dict | None = None
) -> dict:
    """Closed loop on `connections` connections, spread round robin over `port` (one or several
    listeners), for `seconds`. `record` (optional) gets control id -> (sent at, ACKed at)."""
    ports = [port] if isinstance(port, int) else list(port)
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    clients = []
    for i in range(connections):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", ports[i % len(ports)])
        client = LoadClient(template, f"{tag}{i}-{os.getpid()}-{time.time_ns()}-", deadline, latencies, record)
        clients.append(await connectProtocol(endpoint, client))
    await defer.DeferredList([c.done for c in clients])
    elapsed = time.perf_counter() - started
    return {
        "rate": len(latencies) / elapsed,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "count": len(latencies),
        "errors": sum(c.errors for c in clients),
        "started": started,
        "elapsed": elapsed,
    }


class Sink(MllpPeer):
    """A destination (the shared MLLP peer, engine/sim/mllp.py) that answers AA at once and notes
    when each control id first arrived (`arrived`, perf_counter seconds)."""

    def __init__(self):
        super().__init__("SINK")
        self.arrived: dict[str, float] = {}

    def on_message(self, transport, raw: bytes) -> None:
        # Only the first arrival per id, not every message: a benchmark sends millions. One scan
        # per message: the harness shares the machine's cores with the engine it measures.
        control_id = scan(raw).control_id
        self.arrived.setdefault(control_id, time.perf_counter())
        write_now(transport, frame(ack_for_control_id(control_id, "AA", self.name)))


async def sleep(seconds: float) -> None:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for a listener in another process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_engine_process(
    args: list[str], log_path: Path, timeout: float = 30.0, started: list | None = None
) -> subprocess.Popen:
    """`pfi <args>` in a subprocess logging to `log_path`; returns once it logged engine.started
    (or exited, or `timeout` passed: the caller sees it in the log). The process is appended to
    `started` at once, so that a caller interrupted while it starts can still stop it."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    if started is not None:
        started.append(proc)
    deadline = time.monotonic() + timeout
    while "engine.started" not in log_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited within `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]
