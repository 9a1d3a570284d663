"""Helpers for the DMP flow tests: the ANS MDM examples adapted in memory, an engine wired to the
DMP simulator (real HTTPS + mTLS) and to recording MLLP peers (creator-out, drimbox)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from engine.journal.reader import JournalReader
from tests.routing.peers import RecordingPeer
from tests.support import inbound, write_config

MDM_DIR = "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/MDM"
INITIAL = f"{MDM_DIR}/Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7"
REPLACE = f"{MDM_DIR}/Remplacement MDM/message_MDM_CR_Radio_RPLC_N1.er7"
DELETE = f"{MDM_DIR}/Suppression MDM/message_MDM_CR_Radio_DEL_N1.er7"
ORU_INITIAL = (
    "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/ORU/"
    "Transmission initiale ORU/message_ORU_CR_Bio_INIT_N3_SEGUR.hl7"
)
V1_ID = "1.2.250.1.71.4.2.2.120456789.71024000081"
V2_ID = "1.2.250.1.71.4.2.2.120456789.71024000082"
FAST_RETRY = {"initial": 0.05, "maximum": 0.2, "jitter": 0.0}


def segments(raw: bytes) -> list[str]:
    text = raw.decode("utf-8").replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s.strip()]


def set_field(segment: str, index: int, value: str) -> str:
    """Set field `index` (HL7 numbering; MSH-1 is the separator) of one segment."""
    fields = segment.split("|")
    position = index - 1 if segment.startswith("MSH") else index
    fields += [""] * (position + 1 - len(fields))
    fields[position] = value
    return "|".join(fields)


def adapt(raw: bytes, control_id: str, status: str = "VALI", ack: str = "Y") -> bytes:
    """The example as the creator would send it to us: its own MSH-10, the identity status in
    PID-32 (the examples leave it empty) and ACK_RECEPTION as asked (the examples say N)."""
    out = []
    for seg in segments(raw):
        if seg.startswith("MSH|"):
            seg = set_field(seg, 10, control_id)
        elif seg.startswith("PID|"):
            seg = set_field(seg, 32, status)
        elif seg.startswith("OBX|") and "|ACK_RECEPTION^" in seg:
            seg = set_field(seg, 5, f"{ack}^^expandedYes-NoIndicator")
        out.append(seg)
    return ("\r".join(out) + "\r").encode("utf-8")


def renumber_document(raw: bytes, old_id: str, new_id: str) -> bytes:
    """Another initial document: the same example with a new document id in TXA-12 and the CDA."""
    out = []
    for seg in segments(raw):
        if seg.startswith("OBX|") and "|ED|" in seg and "^Base64^" in seg:
            fields = seg.split("|")
            parts = fields[5].split("^")
            cda = base64.b64decode(parts[4] + "=" * (-len(parts[4]) % 4))
            parts[4] = base64.b64encode(cda.replace(old_id.encode(), new_id.encode())).decode()
            fields[5] = "^".join(parts)
            seg = "|".join(fields)
        out.append(seg.replace(old_id, new_id) if seg.startswith("TXA|") else seg)
    return ("\r".join(out) + "\r").encode("utf-8")


def dmp_channel(sim, pki, retry: dict | None = None) -> dict:
    return {
        "type": "dmp",
        "endpoint": sim.base_url,
        "client_cert": str(pki.client.cert),
        "client_key": str(pki.client.key),
        "ca_bundle": str(pki.ca.cert),
        # the ANS examples' PRT-8 `FINEG^^^300017985` is structure 1300017985: its certificate
        # (structure read from the subject OU)
        "certificates": [{"cert": str(pki.client_second.cert), "key": str(pki.client_second.key)}],
        "structure_id": "3300017985",
        "source_oid": "1.2.250.1.999.1",
        "lps": {"name": "PFI-engine", "version": "0.1.0", "homologation_id": "HOMOLOGATION-TEST"},
        "response_timeout": 10,
        "retry": retry or FAST_RETRY,
        "sender_roles": ["10^1.2.250.1.71.1.2.7", "SM44^1.2.250.1.71.4.2.5"],
    }


def mllp_out(port: int) -> dict:
    return {"type": "mllp-out", "host": "127.0.0.1", "port": port, "ack_timeout": 2, "retry": FAST_RETRY}


def dmp_routes() -> list[dict]:
    """The route under test: what docs/dmp.md shows as the wiring example."""
    zam = {"zam": {"kind": "Z01", "to": "creator-out"}}
    return [
        {"name": "patients", "match": {"channel": "gam", "type": "ADT"}, "steps": [{"patients": "update"}]},
        {
            "name": "reports-to-dmp",
            "match": {"channel": "creator", "type": ["MDM", "ORU"], "fields": {"OBX[code=DESTDMP]-5.1": "Y"}},
            "steps": [
                {"validate": "document-request"},
                {
                    "label": "dmp",
                    "deliver": {"to": "dmp"},
                    "on_success": [zam, {"deliver": {"to": "drimbox"}}],
                    "on_failure": [zam],
                },
            ],
        },
    ]


@dataclass
class Flow:
    """A running engine with its peers."""

    engine: object
    creator_out: RecordingPeer
    drimbox: RecordingPeer

    def events(self) -> list:
        return JournalReader(self.engine.journal.data_dir).events_after(0, limit=10000)

    def states_of(self, control_id: str) -> list[tuple[str, str]]:
        return [(e.state, e.detail) for e in self.events() if e.control_id == control_id]

    async def close(self) -> None:
        await self.engine.stopService()
        await self.creator_out.close()
        await self.drimbox.close()


async def start_flow(tmp_path: Path, sim, pki, retry: dict | None = None) -> Flow:
    from twisted.internet import reactor

    from engine.config.load import load_config
    from engine.service import Engine

    creator_out, drimbox = RecordingPeer(), RecordingPeer()
    channels = {
        "creator": inbound(),
        "gam": inbound(),
        "dmp": dmp_channel(sim, pki, retry),
        "creator-out": mllp_out(await creator_out.listen()),
        "drimbox": mllp_out(await drimbox.listen()),
    }
    cfg = write_config(tmp_path / "cfg", channels, dmp_routes())
    engine = Engine(load_config(cfg), tmp_path / "data", reactor, with_metrics=False)
    await engine.startService()
    return Flow(engine, creator_out, drimbox)


def statuses(sim) -> dict[str, list[str]]:
    """unique id -> availability statuses of its stored versions, as the simulator holds them."""
    out: dict[str, list[str]] = {}
    for entry in sim.store.all():
        out.setdefault(entry.unique_id, []).append(entry.status.rsplit(":", 1)[1])
    return out
