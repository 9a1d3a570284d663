"""The ANS kit's quirks are handled by the loader, without editing the kit."""

from __future__ import annotations

from pathlib import Path

from engine.cda import Profile, ValidationKit, validate_cda
from engine.cda.compiler import SchematronCompiler
from engine.cda.sch_source import preprocess


def test_case_mismatched_include_is_resolved(kit3: Path):
    # profils/IHE.sch includes E_directiveAnticipee_int.sch; the file is E_directiveanticipee_int.sch
    _, files = preprocess(kit3 / "schematrons" / "profils" / "IHE.sch")
    assert any(f.name == "E_directiveanticipee_int.sch" for f in files)


def test_accented_folder_include_is_resolved(cda_kit: Path):
    # kit 2.41's structuration minimale includes include/jeuxDeValeurs/en-tête/*.sch
    sch = cda_kit / "TestContenuCDA-2-41" / "schematrons" / "profils" / "CI-SIS_StructurationMinimale.sch"
    _, files = preprocess(sch)
    assert any("en-tête" in str(f) for f in files)


def test_include_href_with_a_space_is_resolved(kit3: Path):
    _, files = preprocess(kit3 / "schematrons" / "profils" / "CI-SIS_ModelesDeContenusCDA.sch")
    assert any(f.name == "E_observationTNM _fr.sch" for f in files)


def test_missing_structmin_value_set_comes_from_the_overlay(kit3: Path, voc_overlay: Path, schematron_cache: Path):
    compiled = SchematronCompiler(schematron_cache, (voc_overlay,)).compile(
        kit3 / "schematrons" / "profils" / "structurationMinimale" / "ASIP-STRUCT-MIN-StrucMin.sch"
    )
    overlay_uri = (voc_overlay / "voc-1.2.250.1.213.1.1.5.471-DYNAMIC.xml").resolve().as_uri()
    assert overlay_uri.encode() in compiled.xslt
    assert b"doc('include/voc-1.2.250.1.213.1.1.5.467-DYNAMIC.xml')" in compiled.xslt  # present ones stay relative


def test_accented_include_schematron_runs_under_saxon(kit3: Path, examples: Path, tmp_path: Path):
    profile = Profile(
        "StructMin_2-41", "kit:../TestContenuCDA-2-41/schematrons/profils/CI-SIS_StructurationMinimale.sch"
    )
    kit = ValidationKit(kit3, cache_dir=tmp_path, profiles=(profile,))
    report = validate_cda((examples / "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml").read_bytes(), kit, ["StructMin_2-41"])
    result = report.profile("StructMin_2-41")
    assert result is not None and result.failed_asserts == 0 and report.valid
