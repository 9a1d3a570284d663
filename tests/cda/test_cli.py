"""`pfi validate`: readable report, verdict line, exit codes."""

from __future__ import annotations

from pathlib import Path

from engine.cli import main


def run(capsys, *argv) -> tuple[int, list[str]]:
    code = main(["validate", *map(str, argv)])
    return code, [line for line in capsys.readouterr().out.splitlines() if "schematron.compiled" not in line]


def test_valid_and_invalid_files(capsys, kit3, voc_overlay, schematron_cache, examples, cda_kit):
    invalid = cda_kit / "derived/invalid-variants/INVALID_sch_no_conclusion.xml"
    code, lines = run(
        capsys,
        examples / "IMG_CR_IMG_2024.01.xml",
        invalid,
        "--kit",
        kit3,
        "--value-sets",
        voc_overlay,
        "--cache-dir",
        schematron_cache,
    )
    assert code == 1
    assert lines[0].startswith(
        f"{examples / 'IMG_CR_IMG_2024.01.xml'}: VALID (xsd 0 errors; structMin 0 errors; "
        "IMG-CR-IMG_2024.01 0 errors; PFI-DMP-prechecks 0 errors) in "
    )
    assert lines[1].startswith(
        "IMG-CR-IMG_2024.01: CI-SIS_IMG-CR-IMG at /*:ClinicalDocument[1]/*:component[1]"
        "/*:structuredBody[1]: [CI-SIS_IMG-CR-IMG] Erreur de conformité au modèle : "
        'La section "FR-DICOM-Conclusion"'
    )
    assert lines[2].startswith(f"{invalid}: INVALID (xsd 0 errors; structMin 0 errors; IMG-CR-IMG_2024.01 1 error")
    assert len(lines) == 3


def test_valid_file_exits_zero_and_warnings_are_optional(capsys, kit3, schematron_cache, examples):
    doc = examples / "CARD-F-PRC-AVK_2022.01.xml"  # versionNumber 2 without RPLC: a pre-check warning
    code, lines = run(capsys, doc, "--kit", kit3, "--cache-dir", schematron_cache, "--profile", "PFI-DMP-prechecks")
    assert code == 0 and len(lines) == 1 and "PFI-DMP-prechecks 0 errors, 1 warning" in lines[0]
    code, lines = run(
        capsys, doc, "--kit", kit3, "--cache-dir", schematron_cache, "--profile", "PFI-DMP-prechecks", "--warnings"
    )
    assert code == 0 and lines[0].startswith("warning: PFI-DMP-prechecks: PFI-030 at /*:ClinicalDocument[1]: ")


def test_hl7_message_is_validated_through_its_request(capsys, kit3, cda_kit, schematron_cache):
    # Was "not yet supported"; the document-request wiring (tests/docrequest) now validates the CDA inside.
    message = next(cda_kit.glob("hl7V2-exemples/**/message_MDM_CR_Radio_INIT_N1_Base64.er7"))
    code, lines = run(capsys, message, "--kit", kit3, "--cache-dir", schematron_cache)
    assert code == 1 and lines[-1] == f"{message}: INVALID (request 0 errors; 1 document, 0 valid)"


def test_hostile_and_unreadable_files(capsys, kit3, schematron_cache, tmp_path: Path):
    hostile = tmp_path / "xxe.xml"
    hostile.write_text('<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>')
    code, lines = run(capsys, hostile, "--kit", kit3, "--cache-dir", schematron_cache)
    assert code == 1 and lines == [f"{hostile}: REJECTED: XML document declares a DTD or entities, which are refused"]
    code, lines = run(capsys, tmp_path / "absent.xml", "--kit", kit3, "--cache-dir", schematron_cache)
    assert code == 2 and lines == [f"{tmp_path / 'absent.xml'}: cannot read: No such file or directory"]


def test_missing_kit_is_a_configuration_error(capsys, tmp_path: Path, examples):
    code, lines = run(capsys, examples / "IMG_CR_IMG_2024.01.xml", "--kit", tmp_path / "nokit")
    assert code == 2 and lines == [f"configuration error: CDA validation kit directory not found: {tmp_path / 'nokit'}"]
