"""Fixtures of the MSSanté tests: one test PKI per session, one fake operator per test."""

from __future__ import annotations

import pytest

from engine.mss.testpki import generate_test_pki
from mss_helpers import start_operator


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return generate_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def operator(pki):
    running = start_operator(pki)
    yield running
    running.stop()
