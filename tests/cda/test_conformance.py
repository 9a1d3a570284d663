"""Conformance: every CDA of the corpus gets the reference verdicts.

Two references:
* ../shared/corpus/cda/derived/baseline_validation.csv — failed-assert counts per document and per
  profile, produced with the kit's own ISO skeleton under saxonche (114 documents: the 94 kit
  examples, the derived invalid variants, the HL7/RIS/DRIMbox CDAs, 2.41 examples);
* the ANS expected-result SVRL reports in TestContenuCDA-3-0/schematrons/rapports/ for the kit
  examples that still exist (01_Modèles_contenus_CDA, CANCER-CR-GM_2022.01_*).

`make conformance` (PFI_CONFORMANCE=full) runs every document; `make test` runs a representative
subset (imaging reports N1/N3, orders, invalid variants, self-presentable, 2.41, HL7 CDAs, failures).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from engine.cda import Profile, ValidationKit, load_profile_table, validate_cda

pytestmark = pytest.mark.conformance

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "cda"
BASELINE = CORPUS / "derived" / "baseline_validation.csv"
REPORTS = CORPUS / "TestContenuCDA-3-0" / "schematrons" / "rapports"
FULL = os.environ.get("PFI_CONFORMANCE") == "full"

EXTRA_PROFILES = (
    Profile("IMG-DA-IMG_2024.01", "kit:schematrons/CI-SIS_IMG-DA-IMG_2024.01.sch"),
    Profile("StructMin_2-41", "kit:../TestContenuCDA-2-41/schematrons/profils/CI-SIS_StructurationMinimale.sch"),
    Profile("IHE_3-0", "kit:schematrons/profils/IHE.sch"),
    Profile("ModelesANS_3-0", "kit:schematrons/profils/CI-SIS_Modeles_ANS.sch"),
    Profile("ModelesDeContenusCDA_3-0", "kit:schematrons/profils/CI-SIS_ModelesDeContenusCDA.sch"),
    Profile("CANCER-CR-GM_2022.01", "kit:schematrons/CI-SIS_CANCER-CR-GM_2022.01.sch"),
)

# baseline column → profile name (table profiles keep their production names)
BASELINE_COLUMNS = {
    "IMG-CR-IMG_2024.01": "IMG-CR-IMG_2024.01",
    "IMG-DA-IMG_2024.01": "IMG-DA-IMG_2024.01",
    "StructMin_3-0_fixed": "structMin",
    "StructMin_2-41": "StructMin_2-41",
    "IHE_XDS-SD_2-41": "IHE_XDS-SD",
    "IHE_3-0": "IHE_3-0",
    "ModelesANS_3-0": "ModelesANS_3-0",
}

# ANS report schemaVersion → our profile. The ANS "StructurationMinimale" report was produced by the
# hand-written CI-SIS_StructurationMinimale.sch whose 3.0 successor is the ART-DECOR structMin.
REPORT_PROFILES = {
    "CI-SIS_StructurationMinimale.sch": "structMin",
    "IHE.sch": "IHE_3-0",
    "IHE_XDS-SD.sch": "IHE_XDS-SD",
    "CI-SIS_ModelesDeContenusCDA.sch": "ModelesDeContenusCDA_3-0",
    "CI-SIS_Modeles_ANS.sch": "ModelesANS_3-0",
    "CI-SIS_CANCER-CR-GM_2022.01.sch": "CANCER-CR-GM_2022.01",
}

SUBSET = {
    "IMG_CR_IMG_2024.01.xml",
    "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml",
    "IMG-DA-IMG_2024.01_TEP_Thorax.xml",
    "CANCER-D2LM-FIDD_2022.01.xml",
    "BIO-CR-BIO_2021.01_Auto-Presentable.xml",
    "eDISP-MED_2024.01.xml",
    "DOC_NON_STRUCTURE_CDA-R1.xml",
    "transmission_initiale_cr_imagerie.xml",
    "CR_Radio_CDAN1_v1.XML",
    "DOC00002.xml",
    "INVALID_sch_bad_modality.xml",
    "INVALID_sch_no_conclusion.xml",
    "INVALID_xsd_bogus_element.xml",
    "INVALID_xsd_no_confidentialityCode.xml",
    "TLM-CR_2022.01.xml",
}


def _baseline_rows() -> list[dict]:
    with BASELINE.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows if FULL or Path(r["doc"]).name in SUBSET]


def _expected(cell: str) -> tuple[int, str] | None:
    """'3 failed (22 ms) :: first message…' → (3, 'first message…'); 'n/a' → None."""
    match = re.match(r"(\d+) failed \(\d+ ms\)(?: :: (.*))?$", cell)
    return (int(match.group(1)), (match.group(2) or "").strip()) if match else None


@pytest.fixture(scope="module")
def conformance_kit(kit3, voc_overlay, schematron_cache) -> ValidationKit:
    return ValidationKit(
        kit3, cache_dir=schematron_cache, value_set_dirs=(voc_overlay,), profiles=load_profile_table() + EXTRA_PROFILES
    )


@pytest.mark.parametrize("row", _baseline_rows(), ids=lambda r: r["doc"])
def test_same_verdicts_as_the_baseline(conformance_kit, row):
    expected = {BASELINE_COLUMNS[c]: e for c in BASELINE_COLUMNS if (e := _expected(row[c])) is not None}
    report = validate_cda((CORPUS / row["doc"]).read_bytes(), conformance_kit, list(expected))
    assert (report.profile("xsd").errors == 0) == (row["xsd_lxml"] == "valid")
    for name, (count, first_message) in expected.items():
        messages = [i.message for i in report.issues if i.source == name]
        assert (name, report.profile(name).failed_asserts) == (name, count)
        if first_message:  # the baseline keeps the start of the first message (whitespace-normalised)
            assert " ".join(messages[0].split()).startswith(" ".join(first_message.split())[:60])


def _ans_reports() -> list[tuple[str, str, Path]]:
    cases = []
    for report in sorted(REPORTS.glob("*_verif*.xml")):
        document = report.name.split("_verif")[0] + ".xml"
        version = re.search(rb'schemaVersion="([^"]*)"', report.read_bytes()[:3000])
        profile = REPORT_PROFILES.get(version.group(1).decode() if version else "")
        if profile and (CORPUS / "TestContenuCDA-3-0" / "ExemplesCDA" / document).exists():
            cases.append((document, profile, report))
    return cases


@pytest.mark.parametrize("document,profile,report", _ans_reports(), ids=lambda v: getattr(v, "name", v))
def test_same_failed_asserts_as_the_ans_reports(conformance_kit, examples, document, profile, report):
    expected = report.read_text(encoding="utf-8").count("<svrl:failed-assert")
    result = validate_cda((examples / document).read_bytes(), conformance_kit, [profile])
    assert result.profile(profile).failed_asserts == expected
    assert result.profile("xsd").errors == 0  # the ANS XSD report's only error is Xerces' own schema complaint
