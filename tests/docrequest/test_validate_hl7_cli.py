"""`pfi validate FILE.hl7` as a subprocess: request summary, ERR lines, each embedded CDA's report."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.docrequest.corpus import GOOD, INS_MISMATCH, V20_MDM
from tests.support import ROOT

KIT = ROOT.parent / "shared" / "corpus" / "cda" / "TestContenuCDA-3-0"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("docwire-schematron")


def pfi_validate(cache_dir, *args) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "validate",
            *map(str, args),
            "--kit",
            str(KIT),
            "--cache-dir",
            str(cache_dir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if "schematron.compiled" not in line]
    return proc.returncode, lines


def test_defective_oru_prints_summary_err_and_the_cda_report(cache_dir):
    code, lines = pfi_validate(cache_dir, INS_MISMATCH)
    assert code == 1
    assert lines[0] == f"{INS_MISMATCH}: ORU^R01 2.1^CISIS_CDA_HL7_V2 control id 015: delete (transmission)"
    assert lines[1] == (
        "  flags: MASQUE_PS=N INVISIBLE_PATIENT=N INVISIBLE_REP_LEGAUX=N CONNEXION_SECRETE=N "
        "MODIF_CONF_CODE=N DESTDMP=Y DESTMSSANTEPS=Y DESTMSSANTEPAT=Y ACK_RECEPTION=N "
        "ACK_LECTURE_MSS=N CORPSMAIL_PS=present CORPSMAIL_PATIENT=-"
    )
    assert lines[2] == "  patient: INS INS-NIR-TEST ***********8989 (key ok, qualified), identity status VALI"
    assert lines[3] == "  documents: OBX^1 11502-2"
    assert lines[4].startswith("request: ERR-3 207 [INS_MISMATCH] at PID^1^3: INS in PID-3")
    assert any(line.startswith(f"{INS_MISMATCH} OBX^1: INVALID (xsd 0 errors; structMin ") for line in lines)
    assert lines[-1] == f"{INS_MISMATCH}: INVALID (request 1 error; 1 document, 0 valid)"
    assert not any("279035121518989" in line or "PAT-TROIS" in line for line in lines)  # patient data


def test_consistent_request_with_a_valid_cda_exits_zero(cache_dir):
    path = GOOD["oru-init"]
    code, lines = pfi_validate(cache_dir, path, "--profile", "PFI-DMP-prechecks")
    assert code == 0
    assert lines[-2].startswith(f"{path} OBX^1: VALID (xsd 0 errors; PFI-DMP-prechecks 0 errors) in ")
    assert lines[-1] == f"{path}: VALID (request 0 errors; 1 document, 1 valid)"
    code, lines = pfi_validate(cache_dir, path, "--profile", "PFI-DMP-prechecks", "--warnings")
    assert "warning: request: ERR-3 207 [MAILBODY_TRUNCATED] at OBX^12^5: " in "\n".join(lines)


def test_superseded_profile_is_rejected_with_its_err(cache_dir, tmp_path):
    garbage = tmp_path / "garbage.hl7"
    garbage.write_bytes(b"MSH|^~\\&|A|B\rPID|\xff")
    code, lines = pfi_validate(cache_dir, V20_MDM, garbage)
    assert code == 1
    assert lines[:2] == [
        "request: ERR-3 203 at MSH^1^21: profile 2.0^CISIS_CDA_HL7_V2 is superseded; accepted: "
        "2.1^CISIS_CDA_HL7_V2, 1.1^CISIS_CDA_HL7_LPS",
        f"{V20_MDM}: REJECTED (request refused: ERR-3 203, MSA AE)",
    ]
    assert lines[2].startswith(f"{garbage}: REJECTED: ") and len(lines) == 3
