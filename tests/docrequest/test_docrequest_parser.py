"""parse_document_request on the fictional sample and on targeted defects."""

from __future__ import annotations

import random

import pytest

from engine.docrequest import Action, RequestError, Volet, parse_document_request
from engine.docrequest.identity import nir_key, nir_key_valid
from engine.docrequest.model import InsKind
from engine.errors import ParseError, ValidationError
from engine.hl7 import Message


def test_sample_yields_the_full_request(sample):
    request = sample.request()
    assert request.volet is Volet.TRANSMISSION and request.action is Action.INITIAL
    assert request.header.control_id == "FICT-0001"
    assert (request.header.sending_application, request.header.receiving_application) == ("RIS-FICT", "PFI-FICT")
    assert request.patient.ins.value == "292089900100290"
    assert request.patient.ins.kind is InsKind.NIR_TEST
    assert request.patient.ins_qualified
    assert request.patient.ipp.value == "IPP-FICT-0001"
    assert request.document_type.code == "18748-4"
    assert request.document_id == "1.2.250.1.999.7.1.2026.1"
    assert request.document.content == sample.cda.encode("utf-8")
    flags = request.flags
    assert (flags.destdmp, flags.destmssanteps, flags.destmssantepat) == (True, True, True)
    assert (flags.ack_reception, flags.ack_lecture_mss) == (True, False)
    assert (flags.masque_ps, flags.invisible_patient, flags.invisible_rep_legaux) == (False, False, False)
    assert flags.patient_may_not_reply
    assert flags.corpsmail_ps.startswith("Cher confrère")
    assert request.sender.person.id == "899999000001" and request.sender.organisation.id_type == "IDNST"
    assert request.mssante_addresses == ["sam.fictif-medecin@test.mssante.fr", "292089900100290@patient.mssante.fr"]
    assert [r.is_patient for r in request.recipients] == [False, True]
    assert request.reply_to[0].address == "secretariat@cabinet-fictif.mssante.fr"
    assert request.warnings == []


def _error(sample):
    with pytest.raises(RequestError) as info:
        sample.request()
    assert isinstance(info.value, ValidationError)
    return info.value.error


def test_replacement_is_understood(sample):
    request = sample.as_replacement().request()
    assert request.action is Action.REPLACE
    assert request.replaced_document_id == "1.2.250.1.999.7.1.2026.0"


def test_profile_with_stray_space_is_accepted(sample):
    # The IG's own example writes "2.1^ CISIS_CDA_HL7_V2" (digest §a.3).
    assert sample.set("MSH", 21, "2.1^ CISIS_CDA_HL7_V2").request().header.profile == "2.1^CISIS_CDA_HL7_V2"


def test_deletion_is_understood(sample):
    sample.set("MSH", 9, "MDM^T04^MDM_T02").set("ORC", 1, "CA").set("OBX", 11, "D")
    assert sample.request().action is Action.DELETE


@pytest.mark.parametrize(
    "edits, location",
    [
        ([("ORC", 1, "RO")], "OBX^1^11"),  # ORC says replace, OBX-11 initial
        ([("OBX", 11, "C"), ("ORC", 1, "RO")], "ORC^1^1"),  # T02 trigger vs RO
        ([("OBX", 11, "D")], "OBX^1^11"),
    ],
)
def test_inconsistent_action_is_a_coded_application_error(sample, edits, location):
    for name, field, value in edits:
        sample.set(name, field, value)
    error = _error(sample)
    assert (error.code, error.app_code, error.location, error.ack_code) == (207, "ACTION_INCONSISTENT", location, "AE")


def test_replacement_without_txa13_is_rejected(sample):
    sample.as_replacement().set("TXA", 13, "")
    assert (_error(sample).code, _error(sample).location) == (101, "TXA^1^13")


@pytest.mark.parametrize(
    "name, field, value, code, location",
    [
        ("ORC", 1, "SC", 103, "ORC^1^1"),
        ("OBX", 11, "X", 103, "OBX^1^11"),
        ("PID", 3, "", 101, "PID^1^3"),
        ("PID", 5, "", 101, "PID^1^5"),
        ("MSH", 21, "2.0^CISIS_CDA_HL7_V2", 203, "MSH^1^21"),
        ("MSH", 21, "1.2^CISIS_CDA_HL7_V1", 203, "MSH^1^21"),
        ("MSH", 21, "9.9^SOMETHING", 203, "MSH^1^21"),
        ("MSH", 21, "", 101, "MSH^1^21"),
        ("MSH", 9, "ADT^A01^ADT_A01", 200, "MSH^1^9"),
        ("MSH", 9, "MDM^T01^MDM_T01", 201, "MSH^1^9"),
        ("OBX", 5, "^text^XML^Base64^$$$notbase64", 102, "OBX^1^5"),
        ("OBX", 5, "^text^XML^Base64^QUJDRUZHS", 102, "OBX^1^5"),  # 1 mod 4: truncated
        ("OBX", 5, "^text^XML^Base64^", 101, "OBX^1^5"),
        ("OBX", 3, "11502-2^CR bio^LN", 207, "OBR^1^4"),
        ("TXA", 12, "", 101, "TXA^1^12"),
    ],
)
def test_field_defects_are_coded(sample, name, field, value, code, location):
    error = _error(sample.set(name, field, value))
    assert (error.code, error.location) == (code, location)


@pytest.mark.parametrize("segment, code", [("PID", 100), ("ORC", 100), ("TXA", 100)])
def test_missing_segments_are_coded(sample, segment, code):
    error = _error(sample.drop(segment))
    assert (error.code, error.location) == (code, segment)


def test_message_type_is_checked_before_the_profile(sample):
    error = _error(sample.set("MSH", 9, "ADT^A01^ADT_A01").set("MSH", 21, ""))
    assert (error.code, error.location) == (200, "MSH^1^9")
    error = _error(_lps_as_oru(sample))
    assert (error.code, error.location) == (200, "MSH^1^9")


def _lps_as_oru(sample):
    return sample.set("MSH", 9, "ORU^R01^ORU_R01").set("MSH", 21, "1.1^CISIS_CDA_HL7_LPS")


def test_mdm_with_two_documents_is_rejected(sample):
    sample.lines.insert(sample.index("OBX") + 1, sample.lines[sample.index("OBX")].replace("OBX|1|", "OBX|1b|"))
    assert _error(sample).code == 198


def test_flag_rows(sample):
    sample.set("OBX", 5, "X^^expandedYes-NoIndicator", occurrence=sample.meta("DESTDMP"))
    error = _error(sample)
    assert (error.code, error.location) == (103, "OBX^7^5")


def test_missing_required_flag_row(sample):
    sample.drop("OBX", sample.meta("DESTDMP"))
    error = _error(sample)
    assert error.code == 101 and "DESTDMP" in error.message


def test_duplicate_flag_row(sample):
    row = sample.lines[sample.index("OBX", sample.meta("MASQUE_PS"))]
    sample.lines.append(row)
    assert _error(sample).code == 198


def test_unknown_and_unordered_rows_are_warnings(sample):
    sample.lines.append("OBX|13|CWE|COMP_LOT^x^MetaDMPMSS||N^^expandedYes-NoIndicator||||||F|")
    sample.lines.append(sample.lines.pop(sample.index("OBX", sample.meta("MASQUE_PS"))))
    request = sample.request()
    assert {w.app_code for w in request.warnings} == {"FLAG_ROW_UNKNOWN", "FLAG_ORDER"}
    assert all(w.severity == "W" for w in request.warnings)


def test_absent_ack_rows_mean_no_ack(sample):
    sample.drop("OBX", sample.meta("ACK_RECEPTION"))
    sample.drop("OBX", sample.meta("ACK_LECTURE_MSS"))
    flags = sample.request().flags
    assert flags.ack_reception is None and flags.ack_lecture_mss is None


def test_mssante_without_recipient_is_rejected(sample):
    for _ in range(2):
        sample.drop("PRT", 2)
    error = _error(sample)
    assert (error.code, error.app_code) == (207, "MSS_NO_RECIPIENT")


def test_truncated_mail_body_is_kept_with_a_warning(sample):
    # The exact truncated CORPSMAIL_PS value of the ANS vague-2 ORU examples (MANIFEST).
    truncated = "Q2hlciBjb25mcsOocmUsIHZvdXMgdHJvdXZlcmV6IGNpLWpvaW50IGxlIENSIGTigJlpbWFnZXJpZSBkZSBNLkR1cG9ud"
    sample.set("OBX", 5, f"^text^^Base64^{truncated}", occurrence=sample.meta("CORPSMAIL_PS"))
    request = sample.request()
    assert request.flags.corpsmail_ps.startswith("Cher confrère, vous trouverez ci-joint le CR")
    assert [w.app_code for w in request.warnings] == ["MAILBODY_TRUNCATED"]


def test_xml_payload_without_base64(sample):
    xml = sample.cda.replace("\n", "").replace("|", "")
    sample.set("OBX", 5, f"^text^XML^^{xml}")
    assert sample.request().document.content.startswith(b"<?xml")


@pytest.mark.parametrize("status, qualified, warned", [("VALI", True, False), ("PROV", False, True), ("", False, True)])
def test_identity_status_governs_ins_use(sample, status, qualified, warned):
    _no_dmp(sample)
    request = sample.set("PID", 32, status).request()
    assert request.patient.ins_qualified is qualified
    assert any(w.location == "PID^1^32" for w in request.warnings) is warned


def test_wrong_ins_key_is_rejected_only_when_qualified(sample):
    pid3 = "292089900100291^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
    error = _error(sample.set("PID", 3, pid3))
    assert (error.app_code, error.location) == ("INS_KEY_INVALID", "PID^1^3")
    request = _no_dmp(sample).set("PID", 32, "PROV").request()
    assert request.patient.ins.key_valid is False and not request.patient.ins_qualified


def _no_dmp(sample):
    return sample.set("OBX", 5, "N^^expandedYes-NoIndicator", occurrence=sample.meta("DESTDMP"))


def test_dmp_with_an_unqualified_ins_is_a_warning_not_a_refusal(sample):
    # The report is still accepted (the RIS needs it); the DMP gate blocks the publication later.
    request = sample.set("PID", 32, "PROV").request()
    assert request.flags.destdmp and not request.patient.ins_qualified
    [warning] = [w for w in request.warnings if w.app_code == "DMP_INS_NOT_QUALIFIED"]
    assert (warning.severity, warning.location) == ("W", "PID^1^3")


def test_dmp_needs_a_sender(sample):
    error = _error(sample.drop("PRT", 1))
    assert (error.app_code, error.location) == ("DMP_NO_SENDER", "PRT")
    assert not _no_dmp(sample).request().sender


def test_nir_preferred_over_nia(sample):
    nia = "292089900100290^^^ASIP-SANTE-INS-NIA&1.2.250.1.213.1.4.9&ISO^INS"
    nir = "185057512345673^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"
    request = sample.set("PID", 3, f"{nia}~{nir}").request()
    assert request.patient.ins.kind is InsKind.NIR and request.patient.ins.value == "185057512345673"


def test_nir_key_and_corsica_rule():
    assert nir_key("2790351215189") == 89  # ANS test patient 279035121518989
    assert nir_key("185052A123456") == 97 - int("1850519123456") % 97
    assert nir_key("185052B123456") == 97 - int("1850518123456") % 97
    assert nir_key_valid("185052A123456" + f"{nir_key('185052A123456'):02d}")
    assert not nir_key_valid("27707279035121518989")  # malformed 20-digit value in an ANS example
    assert not nir_key_valid("2790351215189")


def test_err_segment_of_an_error(sample):
    error = _error(sample.set("ORC", 1, "RO"))
    assert error.err_segment() == (
        "ERR||OBX^1^11|207^Application internal error^messageErrorCondition|E|"
        "ACTION_INCONSISTENT^Trigger, ORC-1 and OBX-11 disagree on the action^99PFI|||"
        "ORC-1 RO means replace but document OBX-11 F means initial"
    )


def test_fuzz_request_parsing_never_crashes(sample):
    """Truncations and random mutations: a request, a RequestError or a ParseError only."""
    raw = sample.text().encode("utf-8")
    rng = random.Random(4)
    cuts = list(range(0, len(raw), max(1, len(raw) // 300)))
    mutants = []
    for _ in range(300):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.choice(b"|^~\\&\r\nAZ09=+/ \xc3")
        mutants.append(bytes(data))
    for data in [raw[:cut] for cut in cuts] + mutants:
        try:
            parse_document_request(Message.parse(data))
        except (RequestError, ParseError):
            pass
