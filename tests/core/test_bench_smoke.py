"""The in-process benchmarks drive the engine's internals (the destination worker's lanes, the
listener protocol and Intake, the journal writer) with no sockets: a short run of each keeps them in step with the
code they measure (a renamed method once left `make bench-send` broken unnoticed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "script, prefix",
    [
        ("send_path.py", "send path, ADT, 4 lanes: "),
        ("reactor_path.py", "intake reactor path, ADT, "),
        ("writer_path.py", "journal writer, ADT in batches of 8: "),
    ],
)
def test_a_short_run_prints_its_cost_per_message(script, prefix):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--rounds", "2", "--messages", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith(prefix), line
    assert float(re.search(r": ([0-9.]+) µs/(msg|record)", line).group(1)) > 0
