"""Teleradiology and DRIMbox through the shipped configuration (channels/, routes.yaml) on real
MLLP sockets: the RIS is master of the platforms' reports (it gets each one first, the DMP only
after its ACK, the DRIMbox after the DMP), orders are checked against their profile before the
ACK, and the DRIMbox is served as the reference one reads (no ACK, IPP in PID-3 repetition 2)."""

from __future__ import annotations

import base64
import re

import pytest_twisted
from structlog.testing import capture_logs

from engine.demo import TLR, as_message, fictional_replacement, fictional_report
from engine.hl7.message import Message
from tests.flows.tlr_support import start_site, zams
from tests.routing.peers import until
from tests.support import ROOT


def ipp_first(raw: bytes) -> bytes:
    """The report with the IPP as PID-3 repetition 1 and the INS second (the DRIMbox wants it 2nd)."""
    pid = re.search(rb"\rPID\|\|\|([^|]*)\|", raw)
    ins, ipp = pid.group(1).split(b"~")
    return raw[: pid.start(1)] + ipp + b"~" + ins + raw[pid.end(1) :]


def edit_cda(raw: bytes, edit) -> bytes:
    """The report with its embedded CDA (OBX 1) edited."""
    segments = raw.split(b"\r")
    for i, seg in enumerate(segments):
        if seg.startswith(b"OBX|1|ED|"):
            fields = seg.split(b"|")
            parts = fields[5].split(b"^")
            parts[4] = base64.b64encode(edit(base64.b64decode(parts[4] + b"=" * (-len(parts[4]) % 4))))
            fields[5] = b"^".join(parts)
            segments[i] = b"|".join(fields)
    return b"\r".join(segments)


def index_of(events: list[tuple[str, str]], state: str) -> int:
    return next(i for i, (s, _) in enumerate(events) if s == state)


@pytest_twisted.ensureDeferred
async def test_a_platform_report_failing_the_dmp_checks_reaches_the_ris_not_the_dmp(
    tmp_path, monkeypatch, simulator, pki
):
    site = await start_site(tmp_path, monkeypatch, simulator, pki)
    try:
        raw = as_message(ROOT / "samples" / "mdm_t02_no_legal_authenticator_fictional.hl7", "SLIP-1")
        assert (await site.send("tlr-platform-a", raw)).code == "AA"  # usable by the RIS: accepted
        await until(lambda: zams(site.platform_a) and zams(site.ris), what="the failure ZAMs")
        assert site.ris.received[0] == raw  # the report itself, unchanged, before its ZAM
        assert (
            zams(site.ris) == zams(site.platform_a) == [{"original": "SLIP-1", "status": "N", "error": "CDA_INVALID"}]
        )
        assert simulator.requests_seen == 0 and site.drimbox.connections == 0
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_a_platform_report_goes_to_the_ris_then_the_dmp_after_its_ack_then_the_drimbox(
    tmp_path, monkeypatch, simulator, pki
):
    site = await start_site(tmp_path, monkeypatch, simulator, pki)
    try:
        site.ris.hold()  # the RIS has the report but has not acknowledged it yet
        raw = ipp_first(fictional_report("TLR-1", 31))
        assert (await site.send("tlr-platform-a", raw)).code == "AA"
        await until(lambda: site.ris.control_ids() == ["TLR-1"], what="the report at the RIS")
        # Routing is done (the RIS send exists): nothing for the DMP was even queued.
        assert site.events("TLR-1", "dmp") == [] and simulator.requests_seen == 0
        site.ris.release()
        await until(
            lambda: len(site.drimbox.received) == 1 and zams(site.ris) and zams(site.platform_a),
            what="DMP outcome to both, report to the DRIMbox",
        )
        assert [d.unique_id for d in simulator.store.all()] == ["1.2.250.1.999.7.1.2026.31"]
        assert zams(site.ris) == zams(site.platform_a) == [{"original": "TLR-1", "status": "Y", "error": ""}]
        # the DRIMbox's send was planned only once the DMP accepted
        dmp, drimbox = site.events("TLR-1", "dmp"), site.events("TLR-1", "drimbox")
        everything = site.events("TLR-1")
        assert everything.index(dmp[index_of(dmp, "sent")]) < everything.index(drimbox[0])
        # no ACK awaited from this DRIMbox: sent once, on its own connection, recorded as sent
        assert [s for s, _ in drimbox] == ["queued", "sent"] and "written and flushed" in drimbox[1][1]
        assert site.drimbox.connections == 1 and site.drimbox.control_ids() == ["TLR-1"]
        pid3 = Message.parse(site.drimbox.received[0]).get_all("PID-3.5")
        assert pid3 == ["INS", "PI"]  # the IPP where the reference DRIMbox reads it
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_a_platform_report_the_ris_refuses_goes_no_further(tmp_path, monkeypatch, simulator, pki):
    site = await start_site(tmp_path, monkeypatch, simulator, pki, ris_answer=lambda raw, n: "AE")
    try:
        assert (await site.send("tlr-platform-a", fictional_report("REF-1", 35))).code == "AA"
        await until(
            lambda: any(s == "dead-letter" for s, _ in site.events("REF-1", "ris-out")),
            what="the RIS's refusal recorded",
        )
        assert site.events("REF-1", "dmp") == [] and site.events("REF-1", "drimbox") == []
        assert simulator.requests_seen == 0 and site.drimbox.connections == 0
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_a_replace_superseding_a_deferred_initial_reaches_the_drimbox_as_a_new_document(
    tmp_path, monkeypatch, simulator, pki
):
    # The withdrawal delay outlasts the two sends below: the replace arrives while its initial
    # still waits, so the initial never leaves and the DMP takes the replace as the first version.
    site = await start_site(tmp_path, monkeypatch, simulator, pki, dmp_delay="4s")
    try:
        assert (await site.send("tlr-platform-a", fictional_report("INI-1", 41))).code == "AA"
        assert (await site.send("tlr-platform-a", fictional_replacement("REP-1", 41, 42))).code == "AA"
        await until(lambda: len(site.drimbox.received) == 1, timeout=30, what="the DRIMbox copy")
        assert "cancelled" in [s for s, _ in site.events("INI-1", "dmp")]
        assert [d.unique_id for d in simulator.store.all()] == ["1.2.250.1.999.7.1.2026.42"]
        assert site.ris.control_ids()[:2] == ["INI-1", "REP-1"]  # the RIS got both, as sent
        got = Message.parse(site.drimbox.received[0])
        assert (got.get("MSH-10"), got.get("MSH-9"), got.get("ORC-1")) == ("REP-1", "MDM^T02^MDM_T02", "NW")
        assert got.get("TXA-13") in (None, "") and got.get("OBX-11") == "F"
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_a_report_without_what_a_drimbox_needs_is_dead_lettered_with_the_reason(
    tmp_path, monkeypatch, simulator, pki
):
    site = await start_site(tmp_path, monkeypatch, simulator, pki)
    try:
        no_order = edit_cda(
            fictional_report("NOACC-1", 51),
            lambda cda: re.sub(rb"\s*<inFulfillmentOf>.*?</inFulfillmentOf>", b"", cda, flags=re.S),
        )
        with capture_logs() as logs:
            assert (await site.send("tlr-platform-a", no_order)).code == "AA"
            await until(
                lambda: any(s == "dead-letter" for s, _ in site.events("NOACC-1", "drimbox")),
                what="the DRIMbox send dead-lettered",
            )
        # The ZAM and the DRIMbox send both follow the DMP's success, on two workers: either may come first.
        await until(lambda: zams(site.platform_a), what="the ZAM to the platform")
        assert zams(site.platform_a) == [{"original": "NOACC-1", "status": "Y", "error": ""}]  # the DMP took it
        [(_, reason)] = [e for e in site.events("NOACC-1", "drimbox") if e[0] == "dead-letter"]
        assert "DRIMBOX_DATA_MISSING" in reason and "accession number" in reason
        assert site.drimbox.connections == 0  # never sent
        [line] = [entry for entry in logs if entry["event"] == "delivery.content_refused"]
        assert line["log_level"] == "warning" and "accession number" in line["reason"]
        assert "292089900100290" not in str(line) and "FICTIF" not in str(line)  # no patient data
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_teleradiology_orders_are_checked_against_their_profile_before_the_ack(
    tmp_path, monkeypatch, simulator, pki
):
    site = await start_site(tmp_path, monkeypatch, simulator, pki)
    request = TLR / "flux1_ORM_O01_NW_transmission_demande.hl7"
    try:
        wrong = as_message(request, "ORD-BAD", {b"1.0^CISIS_TLR_HL7_V2": b"2.1^CISIS_CDA_HL7_V2"})
        ack = await site.send("ris-documents", wrong)
        assert ack.code == "AE" and ack.control_id == "ORD-BAD"
        [err] = ack.errors
        assert err.split("|")[2] == "MSH^1^21" and err.split("|")[3].startswith("101^")
        assert (await site.send("ris-documents", as_message(request, "ORD-OK"))).code == "AA"
        await until(lambda: site.platform_a.control_ids() == ["ORD-OK"], what="the valid order at platform A")
    finally:
        await site.close()
