"""`pfi patient` as a real process on a registry filled from ADT messages."""

from __future__ import annotations

import subprocess
import sys

from engine.hl7 import Message
from engine.patients import PatientRegistry, read_adt
from tests.patients.messages import OTHER_INS, TEST_INS, adt
from tests.support import ROOT


def pfi(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def fill(data_dir) -> None:
    registry = PatientRegistry(data_dir)
    try:
        for raw in (
            adt(
                control="m1",
                ipp="900001",
                ins=OTHER_INS,
                feeding="IO",
                feeding_date="20240301100000",
                consult="INC",
                consult_date="20240301100000",
            ),
            adt(control="m2", ipp="900002", ins=None, zfa=False),
            adt(event="A40", control="m3", ipp="900002", ins=None, mrg_ipp="900001", zfa=False),
        ):
            registry.apply(read_adt(Message.parse(raw)))
    finally:
        registry.close()


def test_patient_is_shown_masked_by_default(tmp_path):
    fill(tmp_path)
    result = pfi("patient", "900001", "--data", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "900001" not in out and "900002" not in out and OTHER_INS not in out
    assert "IO = informed and OPPOSED" in out and "collected 2024-03-01 10:00:00" in out
    assert "INC = informed, refuses" in out
    assert "DMP status   ACTIF 2024-03-06 11:11:54" in out  # moved by the merge
    assert "PID-32       VALI" in out and "INS-NIR-TEST" in out
    assert "merged       IPP *** " in out and "(message m3)" in out
    assert all(f"ctrl={c}" in out for c in ("m1", "m2", "m3"))


def test_show_phi_prints_identifiers(tmp_path):
    fill(tmp_path)
    out = pfi("patient", OTHER_INS, "--data", str(tmp_path), "--show-phi").stdout
    assert "IPP          900002" in out and f"INS          {OTHER_INS}" in out
    assert "merged       IPP 900001" in out


def test_unknown_patient_and_missing_registry(tmp_path):
    missing = pfi("patient", TEST_INS, "--data", str(tmp_path))
    assert missing.returncode == 1 and "no patient registry" in missing.stdout
    fill(tmp_path)
    unknown = pfi("patient", TEST_INS, "--data", str(tmp_path))
    assert unknown.returncode == 1 and "unknown" in unknown.stdout


def test_an_a47_withdrawal_is_shown_masked(tmp_path):
    from tests.patients.messages import INS_OID

    registry = PatientRegistry(tmp_path)
    try:
        registry.apply(read_adt(Message.parse(adt(control="w1", ipp="900005", ins=TEST_INS))))
        downgrade = adt(event="A47", control="w2", ipp="900005", ins=None, status="PROV", zfa=False).replace(
            b"PV1|1|I\n", f"MRG|{TEST_INS}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS\n".encode()
        )
        registry.apply(read_adt(Message.parse(downgrade)))
    finally:
        registry.close()
    out = pfi("patient", "900005", "--data", str(tmp_path)).stdout
    assert TEST_INS not in out and "900005" not in out  # the withdrawn INS is patient data too
    assert "INS withdrawn ***" in out and "PID-32       PROV" in out
    shown = pfi("patient", "900005", "--data", str(tmp_path), "--show-phi").stdout
    assert f"INS withdrawn {TEST_INS} (A47: a report still carrying it waits)" in shown
