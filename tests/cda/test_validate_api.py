"""validate_cda: XSD, profile selection by templateIds, structured report."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from engine.cda import Severity, ValidationKit, ValidationReport, validate_cda
from engine.cda.kit import load_xsd
from engine.errors import ConfigurationError, ValidationError


def sources(report: ValidationReport) -> list[str]:
    return [p.source for p in report.profiles]


def test_n3_imaging_report_runs_xsd_structmin_img_and_prechecks(validation_kit, img_n3):
    report = validate_cda(img_n3, validation_kit)
    assert sources(report) == ["xsd", "structMin", "IMG-CR-IMG_2024.01", "PFI-DMP-prechecks"]
    assert report.valid and report.body == "structured"
    assert "1.2.250.1.213.1.1.1.45" in report.template_ids
    assert {"parse", "xsd", "structMin", "IMG-CR-IMG_2024.01", "total"} <= set(report.timings)


def test_n1_imaging_report_gets_xds_sd_not_the_n3_volet(validation_kit, img_n1):
    report = validate_cda(img_n1, validation_kit)
    assert sources(report) == ["xsd", "structMin", "IHE_XDS-SD", "PFI-DMP-prechecks"]
    assert report.valid and report.body == "nonxml"


def test_imaging_order_is_not_checked_as_a_report(validation_kit, examples):
    report = validate_cda((examples / "IMG-DA-IMG_2024.01_TEP_Thorax.xml").read_bytes(), validation_kit)
    assert "IMG-CR-IMG_2024.01" not in sources(report)


def test_forced_profile_on_n1_reports_the_four_header_failures(validation_kit, img_n1):
    report = validate_cda(img_n1, validation_kit, ["IMG-CR-IMG_2024.01"])
    assert report.profile("IMG-CR-IMG_2024.01").failed_asserts == 4 and not report.valid
    assert all(i.location == "/*:ClinicalDocument[1]" for i in report.issues)


def test_xsd_error_is_structured(validation_kit, cda_kit):
    data = (cda_kit / "derived/invalid-variants/INVALID_xsd_bogus_element.xml").read_bytes()
    report = validate_cda(data, validation_kit, [])
    [issue] = report.issues
    assert (issue.source, issue.kind, issue.severity) == ("xsd", "xsd", Severity.ERROR)
    assert issue.rule_id == "SCHEMAV_ELEMENT_CONTENT" and "bogusElement" in issue.message
    assert issue.line().startswith("xsd: SCHEMAV_ELEMENT_CONTENT at /")


def test_xsd_is_loaded_once_per_path(validation_kit):
    assert validation_kit.xsd() is validation_kit.xsd() is load_xsd(str(validation_kit.xsd_path))


def test_self_presentable_document_validates_the_embedded_cda(validation_kit, examples):
    data = (examples / "BIO-CR-BIO_2021.01_Auto-Presentable.xml").read_bytes()
    report = validate_cda(data, validation_kit)
    assert report.self_presentable and report.valid and report.document_id


def test_not_a_cda_is_rejected_clearly(validation_kit):
    with pytest.raises(ValidationError, match="CDA-NOT-CLINICALDOCUMENT"):
        validate_cda(b"<hello/>", validation_kit)


def test_unknown_profile_name_is_a_configuration_error(validation_kit, img_n3):
    with pytest.raises(ConfigurationError, match="NOPE"):
        validate_cda(img_n3, validation_kit, ["NOPE"])


def test_missing_kit_directory_is_a_configuration_error(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="not found"):
        ValidationKit(tmp_path / "absent")


def test_optional_profile_without_its_schematron_is_reported_as_skipped(kit3, tmp_path, img_n1):
    kit = ValidationKit(
        kit3,
        cache_dir=tmp_path,
        profiles=(
            __import__("engine.cda", fromlist=["Profile"]).Profile(
                "XDS", "kit:../absent-kit/IHE_XDS-SD.sch", optional=True
            ),
        ),
    )
    report = validate_cda(img_n1, kit)
    assert report.skipped == ["XDS: kit:../absent-kit/IHE_XDS-SD.sch not installed"] and report.valid


def test_report_round_trips_as_json(validation_kit, img_n1):
    report = validate_cda(img_n1, validation_kit)
    again = ValidationReport.model_validate_json(report.model_dump_json())
    assert again.valid == report.valid and again.profiles == report.profiles


def test_a_document_modified_in_memory_fails_the_imaging_volet(validation_kit, img_n3):
    root = etree.fromstring(img_n3)
    ns = {"h": "urn:hl7-org:v3"}
    for section in root.xpath("//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.206']", namespaces=ns):
        section.getparent().getparent().remove(section.getparent())
    report = validate_cda(etree.tostring(root), validation_kit, ["IMG-CR-IMG_2024.01"])
    assert any("FR-DICOM-Acte-imagerie" in i.message for i in report.issues) and not report.valid


def test_a_restarted_kit_reuses_the_cached_xslt(validation_kit, kit3, voc_overlay, schematron_cache, img_n3):
    validate_cda(img_n3, validation_kit)
    first = validation_kit.compiled("structMin")
    restarted = ValidationKit(kit3, cache_dir=schematron_cache, value_set_dirs=(voc_overlay,))
    report = validate_cda(img_n3, restarted)
    again = restarted.compiled("structMin")
    assert again.from_cache and again.key == first.key and report.valid
    assert len(list(schematron_cache.glob("*.xsl"))) >= 3


def test_a_damaged_cache_entry_is_regenerated(kit3, tmp_path, img_n1):
    from engine.cda import load_profile_table

    prechecks = tuple(p for p in load_profile_table() if p.name == "PFI-DMP-prechecks")
    ValidationKit(kit3, cache_dir=tmp_path, profiles=prechecks).warm_up()
    [entry] = tmp_path.glob("*.xsl")
    entry.write_bytes(b"<xsl:stylesheet truncated")
    kit = ValidationKit(kit3, cache_dir=tmp_path, profiles=prechecks)
    report = validate_cda(img_n1, kit)
    assert report.valid and kit.compiled("PFI-DMP-prechecks").from_cache is False
    assert entry.read_bytes().startswith(b"<?xml")
