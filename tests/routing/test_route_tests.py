"""`pfi test` runs the YAML route tests (the shipped ones must pass; a wrong one must fail)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def pfi(*args):
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_shipped_route_tests_pass():
    result = pfi("test", "--config", str(ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout


def test_a_wrong_expectation_fails_with_a_reason(tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"""tests:
  - name: expects the report to go to the platform too
    channel: tlr-platform-a
    message: {ROOT}/samples/mdm_t02_fictional.hl7
    deliveries: {{ris-out: 1, tlr-platform-b-out: 1}}
    checks:
      - {{channel: ris-out, path: MSH-9, equals: NOPE}}
""")
    result = pfi("test", str(wrong), "--config", str(ROOT))
    assert result.returncode == 1
    assert "tlr-platform-b-out: 0 deliveries (expected 1)" in result.stdout
    assert "dmp: 1 deliveries (expected 0)" in result.stdout
    assert "ris-out MSH-9 = 'ZAM^Z01^ZAM_Z01' (expected 'NOPE')" in result.stdout  # the last one: the ZAM
