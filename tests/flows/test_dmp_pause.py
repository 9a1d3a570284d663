"""A DMP that refuses our organisation certificate pauses the DMP queue (nothing dead-lettered);
`pfi queue` says why, `pfi resume dmp` lets it go. Certificate expiry: gauge and warnings.
Real engine, real MLLP, real HTTPS + mTLS to the DMP simulator, the real command line."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
from types import SimpleNamespace

import pytest_twisted
from structlog.testing import capture_logs
from twisted.internet import threads

from engine.dmp.expiry import watch
from engine.metrics import EngineMetrics
from engine.pki import generate_test_pki
from tests.flows.dmp_support import INITIAL, V1_ID, adapt, start_flow, statuses
from tests.flows.test_dmp_flow import send, zam_fields
from tests.routing.peers import until
from tests.support import ROOT

SECOND = "1300017985"  # the structure of the ANS example's PRT-8 (FINEG 300017985)


class _WrongStructure:
    """A VIHF for another structure than the certificate's: the DMP answers an authentication
    fault, as it does for a certificate it does not accept for that structure."""

    def __init__(self, signer):
        self.signer = signer

    def assertion(self, context, now):
        return self.signer.assertion(dataclasses.replace(context, structure_id="3300017985"), now)


def _pfi(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest_twisted.ensureDeferred
async def test_refused_certificate_pauses_the_queue_until_resumed(tmp_path, simulator, pki, ans_corpus):
    flow = await start_flow(tmp_path, simulator, pki)
    identity = flow.engine.dispatcher.workers["dmp"].connector.destination._client._identities[SECOND]
    good_signer, identity.signer = identity.signer, _WrongStructure(identity.signer)
    journal = ("--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data"))
    try:
        assert await send(flow, adapt((ans_corpus / INITIAL).read_bytes(), "INIT-1")) == "AA"
        await until(lambda: any(s == "paused" for s, _ in flow.states_of("INIT-1")), what="pause")
        states = [s for s, _ in flow.states_of("INIT-1")]
        assert "dead-letter" not in states and flow.creator_out.received == []
        shown = await threads.deferToThread(_pfi, "queue", *journal)
        assert "PAUSED dmp since" in shown.stdout and "wsse:FailedAuthentication" in shown.stdout
        assert f"structure {SECOND}" in shown.stdout and "pfi resume dmp" in shown.stdout

        identity.signer = good_signer  # the operator fixed the certificate
        resumed = await threads.deferToThread(_pfi, "resume", "dmp", *journal, "--operator", "erin")
        assert resumed.returncode == 0 and "dmp resumed" in resumed.stdout
        assert any(e.state == "destination-resumed" and e.detail == "resumed by erin" for e in flow.events())
        await until(lambda: len(flow.creator_out.received) == 1, what="ZAM after resume")
        assert zam_fields(flow.creator_out.received[0])["status"] == "Y"
        assert statuses(simulator) == {V1_ID: ["Approved"]}
        again = await threads.deferToThread(_pfi, "resume", "dmp", *journal)
        assert again.returncode == 1 and "not paused" in again.stdout
        shown = await threads.deferToThread(_pfi, "queue", *journal)
        assert "PAUSED" not in shown.stdout
    finally:
        await flow.close()


@pytest_twisted.ensureDeferred
async def test_certificate_days_left_gauge_at_start(tmp_path, simulator, ans_corpus):
    # certificates issued 815 days ago for 825 days: 10 days left
    pki = generate_test_pki(tmp_path / "pki", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=815))
    flow = await start_flow(tmp_path, simulator, pki)
    try:
        metrics = flow.engine.metrics.registry
        for structure in ("3300017985", SECOND):
            left = metrics.get_sample_value(
                "pfi_certificate_days_left", {"channel": "dmp", "structure": structure, "node": flow.engine.node}
            )
            assert 9 < left <= 10
    finally:
        await flow.close()


def test_expiry_warnings_at_60_and_15_days():
    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    expiry = {f"S{days}": now + dt.timedelta(days=days) for days in (90, 60, 40, 15, 3, -1)}
    gauge = EngineMetrics().certificate_days_left
    with capture_logs() as logs:
        watch("dmp", expiry, now, gauge)
    seen = {entry["structure"]: (entry["log_level"], entry["event"]) for entry in logs}
    assert seen == {
        "S60": ("warning", "dmp.certificate_expiring"),
        "S40": ("warning", "dmp.certificate_expiring"),
        "S15": ("error", "dmp.certificate_expiring"),
        "S3": ("error", "dmp.certificate_expiring"),
        "S-1": ("error", "dmp.certificate_expired"),
    }
    assert gauge.labels("dmp", "S90")._value.get() == 90


@pytest_twisted.ensureDeferred
async def test_a_tls_refusal_of_the_certificate_pauses_too(tmp_path, simulator, pki, ans_corpus):
    # organisation certificates from a CA the DMP does not know: the handshake fails
    foreign = generate_test_pki(tmp_path / "foreign")
    mixed = SimpleNamespace(client=foreign.client, client_second=foreign.client_second, ca=pki.ca)
    flow = await start_flow(tmp_path, simulator, mixed)
    try:
        assert await send(flow, adapt((ans_corpus / INITIAL).read_bytes(), "INIT-TLS")) == "AA"
        await until(lambda: any(s == "paused" for s, _ in flow.states_of("INIT-TLS")), what="pause")
        detail = next(d for s, d in flow.states_of("INIT-TLS") if s == "paused")
        assert "TLS_CLIENT_CERT_REFUSED" in detail and f"structure {SECOND}" in detail
        assert "dead-letter" not in [s for s, _ in flow.states_of("INIT-TLS")]
        assert simulator.requests_seen == 0 and flow.creator_out.received == []
    finally:
        await flow.close()
