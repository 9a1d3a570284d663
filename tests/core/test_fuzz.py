"""A short run of the fuzzing harness (bench/fuzz.py) against a real engine process: 1,600
mutated frames over 4 persistent connections on 127.0.0.1. The long run is `make bench-fuzz`."""

from __future__ import annotations

import random

from bench.fuzz import Mutator, defects, run


def test_mutated_frames_are_all_answered_journaled_and_survived(tmp_path):
    result = run(frames=1600, connections=4, seconds=300, seed=7, workdir=tmp_path)
    assert defects(result) == []
    assert result["frames"] >= 1600
    assert result["answers"].get("AA", 0) > 100  # clean and harmless mutations still get through
    assert sum(v for k, v in result["answers"].items() if k in ("AE", "AR")) > 100
    assert result["journal"]["aa_ids"] > 100 and result["journal"]["intake_rows"] >= result["journal"]["expected_rows"]
    assert set(result["mutations"]) == {op.__name__ for op in Mutator(random.Random()).ops}  # every kind sent
    assert result["closed_after_oversize"] > 0  # the harness really sent frames over the limit
