"""check_consistency: message ↔ embedded CDA header."""

from __future__ import annotations

import random

import pytest

from engine.docrequest import check_consistency, read_cda_header
from engine.docrequest.errors import APP_ERRORS
from engine.docrequest.consistency import InstanceId, parse_ei
from engine.errors import ValidationError

INS = '<id root="1.2.250.1.213.1.4.10" extension="292089900100290"/>'


def _codes(sample):
    return [(p.app_code, p.severity, p.location) for p in check_consistency(sample.request())]


def test_sample_is_consistent(sample):
    assert check_consistency(sample.request()) == []


def test_ins_mismatch(sample):
    sample.replace_cda(INS, '<id root="1.2.250.1.213.1.4.10" extension="185057512345673"/>')
    assert _codes(sample) == [("INS_MISMATCH", "E", "PID^1^3")]


def test_ins_register_mismatch(sample):
    sample.replace_cda(INS, '<id root="1.2.250.1.213.1.4.8" extension="292089900100290"/>')
    assert _codes(sample) == [("INS_MISMATCH", "E", "PID^1^3")]


def test_cda_without_ins(sample):
    sample.replace_cda(INS, "")
    assert _codes(sample) == [("INS_ABSENT_IN_CDA", "E", "PID^1^3")]


def test_missing_ids(sample):
    sample.replace_cda('<setId root="1.2.250.1.999.7.2.2026.1"/>', "")
    assert _codes(sample) == [("CDA_SETID_MISSING", "W", "OBX^1^5")]
    sample.replace_cda('<versionNumber value="1"/>', "")
    sample.replace_cda('<id root="1.2.250.1.999.7.1.2026.1"/>', "")
    assert _codes(sample) == [
        ("CDA_ID_MISSING", "E", "OBX^1^5"),
        ("CDA_VERSION_MISSING", "E", "OBX^1^5"),
        ("CDA_SETID_MISSING", "W", "OBX^1^5"),
    ]


def test_txa12_must_match_the_cda_id(sample):
    sample.set("TXA", 12, "1.2.250.1.999.7.1.2026.99")
    assert _codes(sample) == [("DOC_ID_MISMATCH", "E", "TXA^1^12")]


def test_txa12_root_extension_form(sample):
    sample.replace_cda('<id root="1.2.250.1.999.7.1.2026.1"/>', '<id root="1.2.250.1.999.7.1" extension="DOC42"/>')
    sample.set("TXA", 12, "DOC42^^1.2.250.1.999.7.1^ISO")
    assert check_consistency(sample.request()) == []


RPLC = (
    '<relatedDocument typeCode="RPLC"><parentDocument><id root="1.2.250.1.999.7.1.2026.0"/>'
    "</parentDocument></relatedDocument>"
)


def test_replacement_needs_rplc(sample):
    sample.as_replacement()
    assert _codes(sample) == [("RPLC_MISSING", "E", "OBX^1^5")]


def test_replacement_rplc_must_match_txa13(sample):
    sample.replace_cda("<component>", RPLC.replace("2026.0", "2026.7") + "<component>")
    sample.as_replacement()
    assert _codes(sample) == [("RPLC_MISMATCH", "E", "TXA^1^13")]


def test_consistent_replacement(sample):
    sample.replace_cda("<component>", RPLC + "<component>")
    sample.as_replacement()
    assert check_consistency(sample.request()) == []


def test_document_type_must_match_cda_code(sample):
    sample.replace_cda('code="18748-4"', 'code="11502-2"')
    assert _codes(sample) == [("DOCTYPE_MISMATCH", "E", "OBX^1^3")]


@pytest.mark.parametrize(
    "payload",
    [
        "not xml at all",
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        '<other xmlns="urn:hl7-org:v3"/>',
    ],
)
def test_unreadable_or_hostile_cda(sample, payload):
    sample.with_cda(payload)
    assert _codes(sample) == [("CDA_NOT_WELL_FORMED", "E", "OBX^1^5")]


def test_read_cda_header(sample):
    header = read_cda_header(sample.cda.encode())
    assert header.id == InstanceId(root="1.2.250.1.999.7.1.2026.1")
    assert header.version == "1" and header.code == "18748-4"
    assert [str(i) for i in header.ins_ids] == ["1.2.250.1.213.1.4.10^292089900100290"]
    with pytest.raises(ValidationError):
        read_cda_header(b"<a>")


def test_parse_ei():
    assert parse_ei("1.2.3.4^Organisation-Y") == InstanceId(root="1.2.3.4")
    assert parse_ei("EXT1^^1.2.3^ISO") == InstanceId(root="1.2.3", extension="EXT1")


def test_fuzzed_cda_gives_coded_problems_only(sample):
    """Random byte mutations of the CDA: check_consistency returns coded problems, never raises."""
    request = sample.request()
    rng = random.Random(3)
    codes = set()
    for _ in range(300):
        data = bytearray(sample.cda.encode())
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.choice(b'<>/"= \x00\xff\xc3abcRPLC&;!')
        mutated = request.model_copy(deep=True)
        mutated.documents[0].content = bytes(data)
        codes |= {p.app_code for p in check_consistency(mutated)}
    assert "CDA_NOT_WELL_FORMED" in codes and codes <= set(APP_ERRORS)
