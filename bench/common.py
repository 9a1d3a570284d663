"""Benchmark helpers: realistic messages, a closed-loop MLLP load generator, percentiles."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

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

    def __init__(self, template: bytes, prefix: str, deadline: float, latencies: list):
        self.template, self.prefix, self.deadline = template, prefix, deadline
        self.latencies = latencies
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
        ctrl = f"{self.prefix}{self.count}".encode()
        self._sent_at = time.perf_counter()
        self.transport.write(frame(self.template.replace(b"{CTRL}", ctrl)))

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.latencies.append(time.perf_counter() - self._sent_at)
                if b"MSA|AA|" not in event.payload:
                    self.errors += 1
                self._send()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(None)


async def run_load(port: int, template: bytes, connections: int, seconds: float, tag: str) -> dict:
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    clients = []
    for i in range(connections):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        clients.append(await connectProtocol(endpoint, LoadClient(template, f"{tag}{i}-{os.getpid()}-{time.time_ns()}-", deadline, latencies)))
    await defer.DeferredList([c.done for c in clients])
    elapsed = time.perf_counter() - started
    return {
        "rate": len(latencies) / elapsed,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "count": len(latencies),
        "errors": sum(c.errors for c in clients),
    }


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]
