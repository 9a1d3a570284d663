"""Fixtures for the CDA validation tests: one kit (compiled once per session) over ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cda import ValidationKit, load_profile_table


@pytest.fixture(scope="session")
def kit3(cda_kit: Path) -> Path:
    return cda_kit / "TestContenuCDA-3-0"


@pytest.fixture(scope="session")
def examples(kit3: Path) -> Path:
    return kit3 / "ExemplesCDA"


@pytest.fixture(scope="session")
def voc_overlay(cda_kit: Path) -> Path:
    return cda_kit / "derived" / "structMin-missing-voc"


@pytest.fixture(scope="session")
def schematron_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("schematron-cache")


@pytest.fixture(scope="session")
def validation_kit(kit3: Path, voc_overlay: Path, schematron_cache: Path) -> ValidationKit:
    """The production profile table plus nothing else, with the structMin value-set overlay."""
    return ValidationKit(kit3, cache_dir=schematron_cache, value_set_dirs=(voc_overlay,), profiles=load_profile_table())


@pytest.fixture(scope="session")
def img_n3(examples: Path) -> bytes:
    return (examples / "IMG_CR_IMG_2024.01.xml").read_bytes()


@pytest.fixture(scope="session")
def img_n1(examples: Path) -> bytes:
    return (examples / "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml").read_bytes()
