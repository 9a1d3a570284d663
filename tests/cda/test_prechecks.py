"""The engine's own DMP pre-send checks (schematron/pfi-dmp-prechecks.sch).

Failing documents are derived in memory from the official N3 CR d'imagerie (no copies committed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from engine.cda import Severity, validate_cda

H = "urn:hl7-org:v3"
NS = {"h": H}
PRECHECKS = ["PFI-DMP-prechecks"]


def prechecks(kit, data: bytes):
    report = validate_cda(data, kit, PRECHECKS)
    return report, [i for i in report.issues if i.source == "PFI-DMP-prechecks"]


@pytest.mark.parametrize(
    "relative",
    [
        "TestContenuCDA-3-0/ExemplesCDA/IMG_CR_IMG_2024.01.xml",
        "TestContenuCDA-3-0/ExemplesCDA/IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml",
        "hl7V2-exemples/Vague 2/RIS/transmission_initiale_cr_imagerie.xml",
        "hl7V2-exemples/Vague 2/RIS/remplacement_cr_imagerie.xml",
    ],
)
def test_corpus_imaging_reports_pass(validation_kit, cda_kit: Path, relative: str):
    report, issues = prechecks(validation_kit, (cda_kit / relative).read_bytes())
    assert issues == [] and report.valid


def test_official_hl7_example_cda_without_set_id_fails(validation_kit, cda_kit: Path):
    path = next(cda_kit.glob("hl7V2-exemples/**/Transmission initiale MDM/CR_Radio_CDAN1_v1.XML"))
    _, issues = prechecks(validation_kit, path.read_bytes())
    assert [i.rule_id for i in issues] == ["PFI-002"]


def remove(xpath):
    def mutate(root):
        for node in root.xpath(xpath, namespaces=NS):
            node.getparent().remove(node)

    return mutate


def set_attr(xpath, name, value):
    def mutate(root):
        for node in root.xpath(xpath, namespaces=NS):
            node.set(name, value)

    return mutate


def duplicate(xpath):
    def mutate(root):
        node = root.xpath(xpath, namespaces=NS)[0]
        node.addnext(etree.fromstring(etree.tostring(node)))

    return mutate


def point_rplc_to_self(root):
    parent_id = root.xpath("h:relatedDocument/h:parentDocument/h:id", namespaces=NS)[0]
    parent_id.set("root", root.xpath("h:id/@root", namespaces=NS)[0])


MUTATIONS = {
    "no id": (remove("h:id"), "PFI-001"),
    "no setId": (remove("h:setId"), "PFI-002"),
    "no versionNumber": (remove("h:versionNumber"), "PFI-003"),
    "versionNumber 0": (set_attr("h:versionNumber", "value", "0"), "PFI-003"),
    "no effectiveTime": (remove("h:effectiveTime"), "PFI-004"),
    "no confidentialityCode": (remove("h:confidentialityCode"), "PFI-005"),
    "SNOMED type code": (set_attr("h:code", "codeSystem", "2.16.840.1.113883.6.96"), "PFI-006"),
    "no author": (remove("h:author"), "PFI-007"),
    "no custodian": (remove("h:custodian"), "PFI-008"),
    "no legalAuthenticator": (remove("h:legalAuthenticator"), "PFI-009"),
    "two recordTargets": (duplicate("h:recordTarget"), "PFI-010"),
    "no INS": (
        set_attr("h:recordTarget/h:patientRole/h:id[@root='1.2.250.1.213.1.4.10']", "root", "1.2.3.4"),
        "PFI-020",
    ),
    "short INS": (
        set_attr("h:recordTarget/h:patientRole/h:id[@root='1.2.250.1.213.1.4.10']", "extension", "2790351215189"),
        "PFI-021",
    ),
    "RPLC to itself": (point_rplc_to_self, "PFI-031"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_derived_failing_documents(validation_kit, img_n3: bytes, name: str):
    mutate, expected = MUTATIONS[name]
    root = etree.fromstring(img_n3)
    mutate(root)
    report, issues = prechecks(validation_kit, etree.tostring(root))
    assert expected in [i.rule_id for i in issues if i.severity is Severity.ERROR]
    assert not report.valid


@pytest.mark.parametrize("root_oid", ["1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.11"])
def test_every_ins_oid_is_accepted(validation_kit, img_n3: bytes, root_oid: str):
    root = etree.fromstring(img_n3)
    set_attr("h:recordTarget/h:patientRole/h:id[@root='1.2.250.1.213.1.4.10']", "root", root_oid)(root)
    _, issues = prechecks(validation_kit, etree.tostring(root))
    assert issues == []


def test_corsican_nir_is_accepted(validation_kit, img_n3: bytes):
    root = etree.fromstring(img_n3)
    set_attr("h:recordTarget/h:patientRole/h:id[@root='1.2.250.1.213.1.4.10']", "extension", "179012A00100145")(root)
    _, issues = prechecks(validation_kit, etree.tostring(root))
    assert issues == []


def test_later_version_without_rplc_is_only_a_warning(validation_kit, img_n3: bytes):
    root = etree.fromstring(img_n3)
    remove("h:relatedDocument")(root)
    report, issues = prechecks(validation_kit, etree.tostring(root))
    assert [(i.rule_id, i.severity) for i in issues] == [("PFI-030", Severity.WARNING)]
    assert report.valid
