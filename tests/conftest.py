"""Shared fixtures: paths to the reference corpus in ../shared (used in place, never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ANS = SHARED / "corpus" / "ans"
CDA_KIT = SHARED / "corpus" / "cda"


@pytest.fixture(scope="session")
def ans_corpus() -> Path:
    if not ANS.is_dir():
        pytest.fail(f"reference corpus missing: {ANS} (clone the project beside shared/)")
    return ANS


@pytest.fixture(scope="session")
def cda_kit() -> Path:
    if not CDA_KIT.is_dir():
        pytest.fail(f"CDA kit missing: {CDA_KIT}")
    return CDA_KIT
