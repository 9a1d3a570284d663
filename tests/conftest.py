"""Shared fixtures: paths to the reference corpus in ../shared (used in place, never copied)."""

from __future__ import annotations

import os
import uuid
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


# -- PostgreSQL: each test gets its own database on the real server, dropped after. The server is
# PFI_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres, as on the project's machines).
# An unreachable server fails these tests with the reason: `make test` never passes without having
# run them. A developer without PostgreSQL may opt out explicitly with PFI_SKIP_PG=1 (skipped, with
# the reason).
ADMIN_URL = os.environ.get("PFI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin():
    import psycopg

    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL not reachable at {ADMIN_URL}: {exc}".strip()
        if os.environ.get("PFI_SKIP_PG") == "1":
            pytest.skip(message + " (PFI_SKIP_PG=1)")
        pytest.fail(message + " (start it, point PFI_TEST_PG at one, or opt out with PFI_SKIP_PG=1)")


def _url_for(database: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture
def pg_empty_url():
    """A new, empty database (schema version 0)."""
    admin = _admin()
    name = f"pfi_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _url_for(name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_url(pg_empty_url):
    """A new database with the journal schema applied (as `pfi db upgrade` does)."""
    import psycopg

    from engine.journal import pgschema

    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        pgschema.upgrade(conn)
    return pg_empty_url
