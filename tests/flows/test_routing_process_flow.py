"""The shipped configuration's report flows with `routing_process: true`, through a real `pfi run`
and its routing process: orders and answers between the RIS and a teleradiology platform, a
report to the RIS, the DMP simulator (mutual TLS) and then the DRIMbox, and a patient's
opposition turning the next report into a ZAM failure to the RIS. The same flows as `make demo`
(engine/demo.py), with routing and every connector in the child process."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from engine.demo import (
    CONSENT,
    FICTIONAL_INS,
    PORTS,
    TLR,
    _environment,
    _start_mss_simulator,
    as_message,
    demo_reports,
)
from engine.mllp.client import connect
from engine.pki import ensure_test_pki
from engine.sim.dmp import DmpSimulator
from engine.sim.mllp import MllpPeer
from tests.support import ROOT, EngineProcess, exchange, until

SHIPPED = ("channels", "mappings", "schematron", "routes.yaml")
ROUTING_STARTED = '"role": "routing", "event": "engine.started"'


def _shipped_config_with_routing_process(directory):
    """The repository's configuration, read in place (links), plus `routing_process: true`; its
    own `var/` for the mailbox state, with the simulators' test PKIs."""
    directory.mkdir()
    for name in SHIPPED:
        (directory / name).symlink_to(ROOT / name)
    (directory / "var").mkdir()
    for pki in ("pki", "mss-sim-pki"):
        (directory / "var" / pki).symlink_to(ROOT / "var" / pki)
    (directory / "pfi.yaml").write_text("routing_process: true\nmetrics: {enabled: false}\n", encoding="utf-8")
    return directory


async def _send(port_var: str, raw: bytes) -> str:
    client = await connect(reactor, "127.0.0.1", PORTS[port_var])
    try:
        return (await exchange(client, raw, timeout=30)).code
    finally:
        client.close()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_report_flows_run_in_the_routing_process(tmp_path):
    saved = dict(os.environ)
    pki = ensure_test_pki(tmp_path / "pki")
    sim = DmpSimulator(reactor, port=0, pki_dir=pki.directory, data_dir=tmp_path / "dmp-sim")
    sim.start()
    peers = {name: MllpPeer(name) for name in ("RIS", "TLR-A", "DRIMBOX")}
    listening = [
        reactor.listenTCP(PORTS[var], peers[name], interface="127.0.0.1")
        for name, var in (("RIS", "PFI_RIS_OUT_PORT"), ("TLR-A", "PFI_TLR_A_OUT_PORT"), ("DRIMBOX", "PFI_DRIMBOX_PORT"))
    ]
    engine = None
    try:
        _environment(pki, sim.base_url)  # ports and the DMP endpoint, read by the child too
        _, mail_ports = _start_mss_simulator(tmp_path)
        listening += mail_ports
        engine = EngineProcess(_shipped_config_with_routing_process(tmp_path / "cfg"), tmp_path / "data")
        engine.start(wait_for=ROUTING_STARTED, timeout=60)
        ris, platform, drimbox = peers["RIS"], peers["TLR-A"], peers["DRIMBOX"]

        order = as_message(TLR / "flux1_ORM_O01_NW_transmission_demande.hl7", "ORD-1")
        answer = as_message(TLR / "flux3_ORU_R01_OK_reponse_demande.hl7", "ANS-1")
        assert await _send("PFI_RIS_PORT", order) == "AA"
        assert await _send("PFI_TLR_A_PORT", answer) == "AA"
        await until(lambda: "ORD-1" in platform.control_ids() and "ANS-1" in ris.control_ids(), 30, "order, answer")

        assert await _send("PFI_TLR_A_PORT", demo_reports()["REP-1"]) == "AA"
        await until(lambda: "REP-1" in drimbox.control_ids(), 60, "the report at the DRIMbox")
        assert "REP-1" in ris.control_ids() and len(sim.store.all()) == 1  # RIS, DMP, then DRIMbox

        opposition = as_message(
            CONSENT / "NonConsentementConsultation_OppositionAlimentation.er7",
            "ADT-1",
            {b"279035121518989": FICTIONAL_INS},
        )
        assert await _send("PFI_ADT_PORT", opposition) == "AA"
        assert await _send("PFI_RIS_PORT", demo_reports()["REP-3"]) == "AA"
        await until(lambda: any(b"REP-3" in raw and b"ZAM^Z01" in raw for raw in ris.received), 30, "the ZAM failure")
        assert len(sim.store.all()) == 1  # the opposed patient's report never reached the DMP
        assert '"process": "routing"' in engine.output() and "Traceback" not in engine.output()
        # In a thread: the simulators and peers of this process keep answering while it stops
        # (terminate waits 20 s at most, then fails).
        assert await threads.deferToThread(engine.terminate) == 0
    finally:
        if engine is not None:
            engine.ensure_dead()  # and its routing processes, by PID
        for port in listening:
            await port.stopListening()
        await sim.stop()
        os.environ.clear()
        os.environ.update(saved)
