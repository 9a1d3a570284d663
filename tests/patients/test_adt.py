"""read_adt on the ANS PAM.fr examples and on broken messages (coded errors, never a crash)."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.docrequest.identity import nir_key_valid
from engine.hl7 import Message
from engine.patients import AdtError, read_adt
from tests.patients.messages import OTHER_INS, TEST_INS, adt

CONSENT_DIR = ("hl7V2-exemples", "Vague 2", "Consentement_DMP_PAMFR")
# Expectations from ../shared/corpus/ans/MANIFEST.md: (file, ZFA-9, ZFA-10, ZFA-11, ZFA-12).
CONSENT_EXAMPLES = [
    (
        "ConsentementConsultation_NonOppositionAlimentation.er7",
        "INO",
        datetime(2024, 3, 6, 11, 11, 54),
        "IC",
        datetime(2024, 3, 6, 11, 11, 54),
    ),
    (
        "NonConsentementConsultation_NonOppositionAlimentation.er7",
        "INO",
        datetime(2024, 3, 7, 11, 11, 54),
        "INC",
        datetime(2024, 3, 7, 11, 11, 54),
    ),
    (
        "NonConsentementConsultation_OppositionAlimentation.er7",
        "IO",
        datetime(2024, 3, 9, 11, 11, 54),
        "INC",
        datetime(2024, 3, 9, 11, 11, 54),
    ),
    (
        "NonRecueillieConsentementConsultation_NonOppositionAlimentation.er7",
        "INO",
        datetime(2024, 3, 10, 11, 11, 54),
        "NA",
        None,
    ),
    ("NonRecueillieConsentementConsultation_NonRecueillieOppositionAlimentation.er7", "NA", None, "NA", None),
]


def read(raw: bytes):
    return read_adt(Message.parse(raw))


def error_of(raw: bytes) -> AdtError:
    with pytest.raises(AdtError) as caught:
        read(raw)
    return caught.value


@pytest.mark.parametrize("name, feeding, feeding_date, consult, consult_date", CONSENT_EXAMPLES)
def test_consent_examples_give_the_manifest_state(ans_corpus, name, feeding, feeding_date, consult, consult_date):
    update = read(ans_corpus.joinpath(*CONSENT_DIR, name).read_bytes())
    assert (update.feeding.code, update.feeding.date) == (feeding, feeding_date)
    assert (update.consultation.code, update.consultation.date) == (consult, consult_date)
    assert update.dmp_status.value == "ACTIF"
    assert update.event == "A01"
    assert (update.ipp.value, update.ipp.authority, update.ipp.oid) == ("000003", "CHU-X", "000897406")
    assert (update.ins.value, update.ins.oid, update.ins.kind) == (TEST_INS, "1.2.250.1.213.1.4.10", "INS-NIR-TEST")
    assert update.identity_status == "VALI" and update.ins_qualified
    assert update.warnings == []


def test_sgl_admission_template(ans_corpus):
    update = read((ans_corpus / "hl7V2-exemples" / "SGL" / "admission.er7").read_bytes())
    assert update.control_id == "3975"
    assert (update.feeding.code, update.consultation.code) == ("INO", "IC")
    assert update.feeding.date == datetime(2024, 3, 6, 11, 11, 54)
    assert update.ins_qualified and update.ipp.value == "000003"


def test_sgl_discharge_updates_the_identity_and_not_the_consent(ans_corpus):
    # A movement carries the patient's current identity (PID-3, PID-32) but no ZFA (PAM.fr §f).
    update = read((ans_corpus / "hl7V2-exemples" / "SGL" / "sortie.er7").read_bytes())
    assert (update.event, update.ipp.value, update.ins.value) == ("A03", "000003", TEST_INS)
    assert update.feeding is None and update.consultation is None and update.dmp_status is None


def test_a_movement_never_carries_consent(ans_corpus):
    raw = adt(event="A02", control="A02-1", feeding="IO")
    update = read(raw)
    assert update.feeding is None and update.identity_status == "VALI"
    assert any(w.location == "ZFA^1" and "ignored" in w.message for w in update.warnings)


def test_link_events_are_not_registry_events():
    error = error_of(adt(event="A24", control="A24-1"))
    assert error.error.code == 201 and error.error.location == "MSH^1^9" and "ADT^A24" in str(error)


@pytest.mark.parametrize(
    "field, kwargs",
    [
        (9, {"feeding": "OUI"}),
        (11, {"consult": "IO"}),
    ],
)
def test_unknown_consent_codes_are_table_errors(field, kwargs):
    error = error_of(adt(**kwargs)).error
    assert (error.code, error.location) == (103, f"ZFA^1^{field}")
    assert error.err_segment().startswith(f"ERR||ZFA^1^{field}|103^Table value not found^")


def test_bad_consent_date_is_a_data_type_error():
    error = error_of(adt(feeding_date="2024-03-06")).error
    assert (error.code, error.location) == (102, "ZFA^1^10")


def test_missing_consent_date_falls_back_to_the_message_date():
    update = read(adt(feeding="IO", feeding_date="", msh7="20250101093000"))
    assert update.feeding.code == "IO"
    assert update.feeding.date == datetime(2025, 1, 1, 9, 30) and update.feeding.date_from_message
    assert [w.location for w in update.warnings] == ["ZFA^1^10"]


def test_lower_case_codes_and_components_are_read():
    update = read(adt(feeding="io^Informé et opposé^FR", consult="ic"))
    assert (update.feeding.code, update.consultation.code) == ("IO", "IC")


def test_no_zfa_and_empty_zfa_fields_say_nothing():
    assert read(adt(zfa=False)).feeding is None
    update = read(adt(feeding="", feeding_date="", consult="", consult_date=""))
    assert update.feeding is None and update.consultation is None
    explicit_null = read(adt(feeding='""', feeding_date='""'))
    assert explicit_null.feeding is None and explicit_null.consultation.code == "IC"


def test_unknown_identity_status_is_refused():
    error = error_of(adt(status="SUPER")).error
    assert (error.code, error.location) == (103, "PID^1^32")


def test_unqualified_identity_keeps_the_ins_marked_not_qualified():
    update = read(adt(status="PROV"))
    assert update.ins.value == TEST_INS and not update.ins_qualified
    assert any(w.location == "PID^1^32" for w in update.warnings)


def test_wrong_ins_key_with_vali_is_an_application_error():
    assert nir_key_valid(OTHER_INS)
    bad = OTHER_INS[:-2] + "00"
    error = error_of(adt(ins=bad)).error
    assert (error.code, error.app_code, error.location) == (207, "INS_KEY_INVALID", "PID^1^3")
    update = read(adt(ins=bad, status="PROV"))
    assert update.ins is None


def test_missing_ipp_and_wrong_message_type():
    raw = adt().replace(b"^PI~", b"^AN~")
    assert error_of(raw).error.app_code == "IPP_MISSING"
    assert error_of(adt().replace(b"ADT^A01", b"ORU^R01")).error.code == 200


def test_merge_reads_mrg_and_requires_it():
    update = read(adt(event="A40", ipp="900002", mrg_ipp="900001"))
    assert (update.ipp.value, update.merged_ipp.value) == ("900002", "900001")
    assert update.merged_ipp.oid == "000897406"
    no_mrg = adt(event="A40", ipp="900002")
    assert error_of(no_mrg).error.code == 100
    same = error_of(adt(event="A40", ipp="900002", mrg_ipp="900002")).error
    assert same.app_code == "MERGE_SAME_IPP"
