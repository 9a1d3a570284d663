"""A scripted imaging day through the shipped configuration (`make demo`, and the end-to-end test).

Starts, on 127.0.0.1: the DMP simulator (test PKI), MLLP peers playing the RIS, teleradiology
platform A and the DRIMbox, and the engine with the repository's channels/ and routes.yaml (ports
and the DMP endpoint moved by environment variables so that a running `make run` is not
disturbed). Then it sends orders, reports, a replace, a delete inside the withdrawal delay, a
patient opposed to DMP feeding, and a DMP outage, optionally restarts the engine in the middle,
and reports what each peer received and the journal summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer, reactor

from engine.hl7.scan import scan
from engine.sim.mllp import MllpPeer

ROOT = Path(__file__).resolve().parent.parent
ANS = ROOT.parent / "shared" / "corpus" / "ans"
MDM = ANS / "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/MDM"
ORU_INIT = (
    ANS
    / "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/ORU"
    / "Transmission initiale ORU/message_ORU_CR_Bio_INIT_N3_SEGUR.hl7"
)
TLR = ANS / "interop-ig-hl7v2-teleradiologie/_extracted_from_pages/exemples"
CONSENT = ANS / "hl7V2-exemples/Vague 2/Consentement_DMP_PAMFR"
PORTS = {
    "PFI_RIS_PORT": 32575,
    "PFI_TLR_A_PORT": 32580,
    "PFI_TLR_B_PORT": 32582,
    "PFI_ADT_PORT": 32577,
    "PFI_RIS_OUT_PORT": 32576,
    "PFI_TLR_A_OUT_PORT": 32581,
    "PFI_TLR_B_OUT_PORT": 32583,
    "PFI_DRIMBOX_PORT": 32590,
}
DELAY = 2.0
MSS_MAILBOX, MSS_PASSWORD = "pfi@localhost.mssante.fr", "pfi"


def as_message(path: Path, control_id: str, edits: dict[bytes, bytes] | None = None) -> bytes:
    """A corpus or sample file as one CR-separated message with our control id (and edits)."""
    data = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for old, new in (edits or {}).items():
        data = data.replace(old, new)
    lines = [line for line in data.split(b"\n") if line.strip()]
    fields = lines[0].split(b"|")
    fields[9] = control_id.encode()
    lines[0] = b"|".join(fields)
    return b"\r".join(lines) + b"\r"


# The ACK_RECEPTION flag set, and the sender organisation in the IDNST form of the ANS examples'
# May 2026 branch (`IDNST^^^3300017985` for `FINEG^^^300017985`): the demo's organisation
# certificate is that structure's (the VIHF structure must be the certificate's, docs/dmp.md).
ASK_RECEIPT = {
    b"ACK_RECEPTION^Accus\xc3\xa9 de r\xc3\xa9ception^MetaDMPMSS||N": b"ACK_RECEPTION^Accus\xc3\xa9 de r\xc3\xa9ception^MetaDMPMSS||Y",
    b"^FINEG^^^300017985": b"^IDNST^^^3300017985",
}


def new_version_of(path: Path, control_id: str, old: bytes, new: bytes) -> bytes:
    """The same report as a new document: `old` -> `new` in TXA-12 and inside the embedded CDA
    (decoded, edited, re-encoded), so that the DMP sees a document it does not know yet."""
    import base64

    raw = as_message(path, control_id, ASK_RECEIPT)
    segments = raw.split(b"\r")
    for i, seg in enumerate(segments):
        fields = seg.split(b"|")
        if seg.startswith(b"OBX|1|ED|"):
            parts = fields[5].split(b"^")
            cda = base64.b64decode(parts[4] + b"=" * (-len(parts[4]) % 4)).replace(old, new)
            parts[4] = base64.b64encode(cda)
            fields[5] = b"^".join(parts)
        elif seg.startswith(b"TXA|"):
            fields[12] = fields[12].replace(old, new)
        segments[i] = b"|".join(fields)
    return b"\r".join(segments)


SAMPLE = ROOT / "samples" / "mdm_t02_fictional.hl7"
FICTIONAL_INS = b"292089900100290"


def demo_reports() -> dict[str, bytes]:
    """The reports of the imaging day: the fictional kit-valid CR as several documents."""
    return {
        "REP-1": fictional_report("REP-1", 11),
        "REP-2": fictional_replacement("REP-2", 11, 12),
        "FIC-1": as_message(SAMPLE, "FIC-1"),
        "OUT-1": fictional_report("OUT-1", 13),
        "REP-3": fictional_report("REP-3", 14),
    }


SAMPLE_DOC, SAMPLE_SET = b"1.2.250.1.999.7.1.2026.1", b"1.2.250.1.999.7.2.2026.1"
# The fictional report's sender organisation, as the structure of the demo's DMP certificate.
FICTIONAL_SENDER = {b"^IDNST^^^3999999999": b"^IDNST^^^3300017985"}


def _edit_report(raw: bytes, edit_cda, edit_segment) -> bytes:
    """Apply `edit_cda(cda) -> cda` to the embedded CDA and `edit_segment(fields)` to the others."""
    import base64

    segments = raw.split(b"\r")
    for i, seg in enumerate(segments):
        fields = seg.split(b"|")
        if seg.startswith(b"OBX|1|ED|"):
            parts = fields[5].split(b"^")
            parts[4] = base64.b64encode(edit_cda(base64.b64decode(parts[4] + b"=" * (-len(parts[4]) % 4))))
            fields[5] = b"^".join(parts)
        edit_segment(fields)
        segments[i] = b"|".join(fields)
    return b"\r".join(segments)


def fictional_report(control_id: str, n: int) -> bytes:
    """The fictional kit-valid CR as a document of its own (id and set id ending in `.n`)."""
    doc, set_id = SAMPLE_DOC[:-1] + str(n).encode(), SAMPLE_SET[:-1] + str(n).encode()
    raw = as_message(SAMPLE, control_id, FICTIONAL_SENDER)

    def segment(fields):
        if fields[0] == b"TXA":
            fields[12] = doc

    return _edit_report(raw, lambda cda: cda.replace(SAMPLE_DOC, doc).replace(SAMPLE_SET, set_id), segment)


def fictional_replacement(control_id: str, parent: int, n: int) -> bytes:
    """MDM^T10 replacing `fictional_report(.., parent)`: new id, version 2, relatedDocument RPLC."""
    parent_doc, doc = SAMPLE_DOC[:-1] + str(parent).encode(), SAMPLE_DOC[:-1] + str(n).encode()
    set_id = SAMPLE_SET[:-1] + str(parent).encode()
    raw = as_message(SAMPLE, control_id, FICTIONAL_SENDER)
    raw = raw.replace(b"MDM^T02^MDM_T02", b"MDM^T10^MDM_T02").replace(b"\rORC|NW", b"\rORC|RO")

    def cda(data: bytes) -> bytes:
        data = data.replace(SAMPLE_DOC, doc).replace(SAMPLE_SET, set_id)
        data = data.replace(b'<versionNumber value="1"/>', b'<versionNumber value="2"/>')
        related = (
            b'  <relatedDocument typeCode="RPLC"><parentDocument><id root="'
            + parent_doc
            + b'"/></parentDocument></relatedDocument>\n  <componentOf>'
        )
        return data.replace(b"  <componentOf>", related, 1)

    def segment(fields):
        if fields[0] == b"TXA":
            fields[12], fields[13:14] = doc, [parent_doc]
        elif fields[0] == b"OBX" and fields[1] == b"1":
            fields[11] = b"C"

    return _edit_report(raw, cda, segment)


def fictional_delete(control_id: str) -> bytes:
    """The fictional initial report turned into its delete (MDM^T04, ORC-1 CA, OBX-11 D)."""
    raw = as_message(ROOT / "samples" / "mdm_t02_fictional.hl7", control_id)
    raw = raw.replace(b"MDM^T02^MDM_T02", b"MDM^T04^MDM_T02").replace(b"\rORC|NW", b"\rORC|CA")
    segments = raw.split(b"\r")
    for i, seg in enumerate(segments):
        if seg.startswith(b"OBX|1|ED|"):
            fields = seg.split(b"|")
            fields[11] = b"D"
            segments[i] = b"|".join(fields)
    return b"\r".join(segments)


@dataclass
class DemoResult:
    peers: dict[str, MllpPeer]
    dmp_documents: list = field(default_factory=list)
    journal_states: dict[str, int] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    acks: dict[str, str] = field(default_factory=dict)
    mails: list[tuple[str, bytes]] = field(default_factory=list)  # (recipient, raw mail) at the MSSanté simulator


async def run_demo(workdir: Path, restart_midway: bool = False, say=print) -> DemoResult:
    from engine.sim.dmp import DmpSimulator
    from engine.pki import ensure_test_pki

    pki = ensure_test_pki(workdir / "pki")
    sim = DmpSimulator(reactor, port=0, pki_dir=pki.directory, data_dir=workdir / "dmp-sim")
    sim.start()
    _environment(pki, sim.base_url)
    mail_operator, mail_ports = _start_mss_simulator(workdir)
    peers = {name: MllpPeer(name) for name in ("RIS", "TLR-A", "DRIMBOX")}
    listening = [
        reactor.listenTCP(PORTS[var], peers[name], interface="127.0.0.1")
        for name, var in (("RIS", "PFI_RIS_OUT_PORT"), ("TLR-A", "PFI_TLR_A_OUT_PORT"), ("DRIMBOX", "PFI_DRIMBOX_PORT"))
    ]
    result = DemoResult(peers)
    engine = await _start_engine(workdir)
    try:
        engine = await _script(engine, sim, result, workdir, restart_midway, say)
        result.dmp_documents = sim.store.all()
        result.mails = list(mail_operator.received)
        result.journal_states = await _journal_summary(engine)
    finally:
        await engine.stopService()
        for port in listening + mail_ports:
            await port.stopListening()
        await sim.stop()
    return result


def _start_mss_simulator(workdir: Path):
    """The MSSanté operator the shipped mssante channel talks to (`pfi mss sim`, in process)."""
    from engine.sim.mss import MailOperator, imap_factory, smtp_factory
    from engine.mss.testpki import ensure_test_pki as ensure_mss_pki
    from engine.mss.tls import server_tls

    pki = ensure_mss_pki(workdir / "mss-pki")
    operator = MailOperator(users={MSS_MAILBOX: MSS_PASSWORD})
    tls = server_tls(pki.server_pem, pki.ca_cert)
    smtp = reactor.listenTCP(0, smtp_factory(operator, tls, implicit=False), interface="127.0.0.1")
    imap = reactor.listenTCP(0, imap_factory(operator, tls), interface="127.0.0.1")
    os.environ.update(
        PFI_MSS_SMTP_PORT=str(smtp.getHost().port),
        PFI_MSS_IMAP_PORT=str(imap.getHost().port),
        PFI_MSS_CA=str(pki.ca_cert),
        PFI_MSS_USER=MSS_MAILBOX,
        PFI_MSS_PASSWORD=MSS_PASSWORD,
    )
    return operator, [smtp, imap]


def _environment(pki, dmp_url: str) -> None:
    os.environ.update({k: str(v) for k, v in PORTS.items()})
    os.environ.update(
        PFI_DMP_URL=dmp_url.rstrip("/"),
        PFI_DMP_CERT=str(pki.client.cert),
        PFI_DMP_KEY=str(pki.client.key),
        PFI_DMP_CA=str(pki.ca.cert),
        PFI_DMP_DELAY=f"{DELAY}s",
    )


async def _start_engine(workdir: Path, cda_processes: int | None = None):
    from engine.config.load import load_config
    from engine.service import Engine

    config = load_config(ROOT)
    if cda_processes is not None:  # bench/flow.py compares validation in workers and in threads
        config.engine.cda_processes = cda_processes
    engine = Engine(config, workdir / "data", reactor, with_metrics=False)
    await engine.startService()
    return engine


async def _send(result: DemoResult, port_var: str, raw: bytes, say) -> str:
    from engine.mllp.client import connect, read_ack

    client = await connect(reactor, "127.0.0.1", PORTS[port_var])
    d = client.send(raw)
    d.addTimeout(30, reactor)
    ack = read_ack(await d)
    client.close()
    h = scan(raw)
    result.sent_at[h.control_id] = time.time()
    result.acks[h.control_id] = ack.code
    say(f"  -> {h.message_type:<8} {h.control_id:<10} ACK {ack.code}")
    return ack.code


async def _script(engine, sim, result: DemoResult, workdir: Path, restart_midway: bool, say):
    peers = result.peers
    say("Morning: orders and answers")
    await _send(result, "PFI_RIS_PORT", as_message(TLR / "flux1_ORM_O01_NW_transmission_demande.hl7", "ORD-1"), say)
    await _send(result, "PFI_TLR_A_PORT", as_message(TLR / "flux3_ORU_R01_OK_reponse_demande.hl7", "ANS-1"), say)
    await _until(lambda: "ORD-1" in peers["TLR-A"].control_ids() and "ANS-1" in peers["RIS"].control_ids())

    say("Reports from platform A: initial, then its replacement once published (RIS first, then DMP)")
    await _send(result, "PFI_TLR_A_PORT", demo_reports()["REP-1"], say)
    await _until(lambda: "REP-1" in peers["DRIMBOX"].control_ids(), timeout=30)
    await _send(result, "PFI_TLR_A_PORT", demo_reports()["REP-2"], say)
    await _until(lambda: "REP-2" in peers["DRIMBOX"].control_ids(), timeout=30)

    say("A fictional report withdrawn inside the delay window")
    await _send(result, "PFI_TLR_A_PORT", demo_reports()["FIC-1"], say)
    # The RIS has it (sent at once); the DMP's copy waits out the delay window when the delete comes.
    await _until(lambda: "FIC-1" in peers["RIS"].control_ids(), timeout=30)
    await _send(result, "PFI_TLR_A_PORT", fictional_delete("FIC-DEL"), say)

    if restart_midway:
        say("Forced restart of the engine")
        await engine.stopService()
        engine = await _start_engine(workdir)

    say("DMP outage: a report waits, then drains")
    await sim.go_down()
    await _send(result, "PFI_TLR_A_PORT", demo_reports()["OUT-1"], say)
    await _sleep(DELAY + 2)
    sim.come_back()
    await _until(lambda: "OUT-1" in peers["DRIMBOX"].control_ids(), timeout=60)

    say("The patient opposes DMP feeding (PAM.fr ZFA-9 IO), then the RIS sends a new report")
    await _send(
        result,
        "PFI_ADT_PORT",
        as_message(
            CONSENT / "NonConsentementConsultation_OppositionAlimentation.er7",
            "ADT-1",
            {b"279035121518989": FICTIONAL_INS},
        ),
        say,
    )
    await _send(result, "PFI_RIS_PORT", demo_reports()["REP-3"], say)
    await _until(lambda: any(b"REP-3" in raw and b"ZAM^Z01" in raw for raw in peers["RIS"].received), timeout=30)
    await _sleep(1.0)
    return engine


async def _journal_summary(engine) -> dict[str, int]:
    from engine.journal.deliveries import event_counts

    return await engine.journal.submit(lambda c, s: event_counts(c), logged=True)


async def _sleep(seconds: float) -> None:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


async def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo waited too long: see the journal (pfi tail)")
        await _sleep(0.05)


def print_result(result: DemoResult, say=print) -> None:
    say("\nWhat each system received:")
    for name, peer in result.peers.items():
        say(f"  {name}: {', '.join(peer.summary()) or 'nothing'}")
    say(
        f"  DMP simulator: {len(result.dmp_documents)} document version(s): "
        + ", ".join(f"{d.unique_id} [{d.status.rsplit(':', 1)[-1]}]" for d in result.dmp_documents)
    )
    say(
        f"  MSSanté simulator: {len(result.mails)} mail(s) to "
        + ", ".join(sorted({recipient for recipient, _ in result.mails}))
    )
    say("Journal summary (events by state): " + ", ".join(f"{k}={v}" for k, v in sorted(result.journal_states.items())))
