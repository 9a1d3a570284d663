"""The imaging day of `make demo`, asserted: shipped configuration, real MLLP peers, the DMP
simulator over mutual TLS, a forced engine restart in the middle."""

from __future__ import annotations

import pytest
import pytest_twisted

from engine.demo import DELAY, run_demo


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_imaging_day_end_to_end(tmp_path, monkeypatch):
    for var in (
        "PFI_DMP_URL",
        "PFI_DMP_CERT",
        "PFI_DMP_KEY",
        "PFI_DMP_CA",
        "PFI_DMP_DELAY",
        "PFI_MSS_SMTP_PORT",
        "PFI_MSS_IMAP_PORT",
        "PFI_MSS_CA",
        "PFI_MSS_USER",
        "PFI_MSS_PASSWORD",
    ):
        monkeypatch.delenv(var, raising=False)
    import os

    saved = dict(os.environ)
    lines: list[str] = []
    try:
        result = await run_demo(tmp_path, restart_midway=True, say=lines.append)
    finally:  # the demo moves ports and the DMP endpoint through the environment
        os.environ.clear()
        os.environ.update(saved)
    ris, platform, drimbox = (result.peers[n] for n in ("RIS", "TLR-A", "DRIMBOX"))

    # Orders reach the platform, its answer reaches the RIS.
    assert "ORD-1" in platform.control_ids() and "ANS-1" in ris.control_ids()
    # Every report from the platform reached the RIS byte for byte (the CDA is never modified).
    sent = {c: raw for c, raw in _sent_reports().items()}
    for control, raw in sent.items():
        [got] = [r for r in ris.received if _ctrl(r) == control]
        assert got == raw, control
    # DMP: the initial and its replacement, and the report sent during the outage; never the
    # report withdrawn in the delay window, never the opposed patient's.
    published = {d.unique_id for d in result.dmp_documents}
    assert "1.2.250.1.999.7.1.2026.11" in published  # REP-1
    assert "1.2.250.1.999.7.1.2026.12" in published  # REP-2, its replacement
    assert "1.2.250.1.999.7.1.2026.13" in published  # OUT-1, sent during the outage
    assert "1.2.250.1.999.7.1.2026.1" not in published  # FIC-1, withdrawn in the delay window
    assert len(result.dmp_documents) == 3
    # DRIMbox: only after the DMP accepted, and after the withdrawal delay.
    assert drimbox.control_ids() == ["REP-1", "REP-2", "OUT-1"]
    for at, raw in zip(drimbox.times, drimbox.received):
        assert at - result.sent_at[_ctrl(raw)] >= DELAY
    # Business acks: success for the platform's reports, failure (opposed) for the RIS's report.
    zams = [raw for raw in platform.received if b"ZAM^Z01" in raw]
    assert any(b"|REP-1|" in z and b"ACK_RECEPTION_DMP" in z and b"|Y^^" in z for z in zams)
    ris_zams = [raw for raw in ris.received if b"ZAM^Z01" in raw]
    # The RIS, master of its reports, also learns the DMP outcome of the platform's reports.
    assert any(b"|REP-1|" in z and b"|Y^^" in z for z in ris_zams)
    [refusal] = [z for z in ris_zams if b"|REP-3|" in z]
    assert b"|N^^" in refusal and b"PATIENT_OPPOSED^" in refusal and b"^99PFI" in refusal
    assert result.journal_states["cancelled"] >= 2 and result.journal_states["retry"] >= 1
    # MSSanté out of the box: the fictional reports ask for the correspondent's and the patient's
    # mailboxes (DESTMSSANTEPS/PAT=Y): each mail carries the IHE XDM zip with the CDA.
    recipients = {r for r, _ in result.mails}
    assert {"sam.fictif-medecin@test.mssante.fr", "292089900100290@patient.mssante.fr"} <= recipients
    assert all(b"IHE_XDM.zip" in raw for _, raw in result.mails)


def _ctrl(raw: bytes) -> str:
    from engine.hl7.scan import scan

    return scan(raw).control_id


def _sent_reports() -> dict[str, bytes]:
    from engine.demo import demo_reports

    reports = demo_reports()
    del reports["REP-3"]  # the RIS's own report
    return reports
