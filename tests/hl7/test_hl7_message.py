"""Message.parse: separators, framing, encoding characters, charsets, escapes, robustness."""

from __future__ import annotations

import random

import pytest

from engine.errors import ParseError
from engine.hl7 import Message, escape, unescape
from engine.hl7.message import STANDARD_ENCODING, Encoding

SIMPLE = (
    "MSH|^~\\&|APP|FAC|PFI|FAC|20261120||ADT^A01^ADT_A01|42|P|2.5|||||FRA|UNICODE UTF-8",
    "PID|||A1^^^X&1.2.3&ISO^PI~B2^^^Y&4.5.6&ISO^INS||DOE^JOHN",
)


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_separators_are_normalised(sep):
    msg = Message.parse(sep.join(SIMPLE).encode())
    assert [s.name for s in msg.segments()] == ["MSH", "PID"]
    assert msg.to_er7() == "\r".join(SIMPLE) + "\r"


def test_mllp_framing_and_leading_blank_lines_are_ignored():
    raw = b"\x0b\r\n\n" + "\r".join(SIMPLE).encode() + b"\r\x1c\r"
    msg = Message.parse(raw)
    assert msg.control_id == "42"
    assert msg.get("PID-5.2") == "JOHN"


def test_msh_numbering_follows_hl7():
    msg = Message.parse("\r".join(SIMPLE))
    assert msg.get("MSH-1") == "|"
    assert msg.get("MSH-2") == "^~\\&"
    assert msg.get("MSH-3") == "APP"
    assert msg.get("MSH-9.1") == "ADT"
    assert msg.message_type == ("ADT", "A01", "ADT_A01")
    assert msg.version == "2.5"


def test_custom_delimiters_are_read_from_msh1_msh2():
    raw = "MSH#$*!@#APP#FAC\rPID###A1$$$X@1.2.3*B2#"
    msg = Message.parse(raw)
    assert msg.encoding == Encoding("#", "$", "*", "!", "@")
    assert msg.get("PID-3(2)") == "B2"
    assert msg.get("PID-3.4.2") == "1.2.3"


def test_non_ascii_repetition_separator_declared_in_msh2_is_honoured(ans_corpus):
    # ANS v2.0 ORU examples declare U+02DC in MSH-2 and use it in PID-11 (see MANIFEST).
    path = next(
        (ans_corpus / "hl7V2-exemples/Volets/TRANS_DOC_CDA_HL7V2/V2.0/ORU").rglob("message_ORU_CR_Bio_INIT_N1_N3.hl7")
    )
    msg = Message.parse(path.read_bytes())
    assert msg.get("MSH-2") == "^\u02dc\\&"
    assert msg.get("PID-11(2).7") == "BDL"
    assert len(msg.get_all("PID-11.7")) == 2


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("PID|||x", "does not start with an MSH"),
        ("", "does not start with an MSH"),
        ("MSH", "truncated"),
        ("MSH|^~A&|x", "MSH-2"),
        ("MSH|^^\\&|x", "MSH-2"),
        ("MSH|^~\\&|x\rnot a segment", None),
        ("MSHA^~\\&", "MSH-1"),
    ],
)
def test_bad_headers_raise_parse_error(raw, reason):
    if reason is None:
        assert Message.parse(raw).segments("MSH")[0].raw.endswith("not a segment")
        return
    with pytest.raises(ParseError, match=reason):
        Message.parse(raw)


def test_line_that_is_not_a_segment_is_glued_with_a_warning(ans_corpus):
    # The DRIMbox fixture has a raw line break inside OBX-3 (MANIFEST).
    msg = Message.parse((ans_corpus / "DRIM-M_DRIMbox/Backend/src/test/resources/patient1.hl7").read_bytes())
    assert msg.get("OBX[3.1=INVISIBLE_REPRENSANTS_LEGAUX]-5") == "N"
    assert any("joined to OBX" in w for w in msg.warnings)


def test_charsets_follow_msh18():
    latin = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5|||||FRA|8859/15\rPID|||1||\u20acURO^H\u00c9L\u00c8NE"
    msg = Message.parse(latin.encode("iso8859-15"))
    assert msg.charset == "iso8859-15"
    assert msg.get("PID-5.1") == "\u20acURO"
    utf8 = latin.replace("8859/15", "UNICODE UTF-8")
    assert Message.parse(utf8.encode("utf-8")).get("PID-5.2") == "H\u00c9L\u00c8NE"


def test_bytes_invalid_for_declared_charset_name_msh18():
    raw = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5|||||FRA|UNICODE UTF-8\rPID|||1||H\u00c9L".encode("latin-1")
    with pytest.raises(ParseError, match="MSH-18 'UNICODE UTF-8'"):
        Message.parse(raw)


def test_fallback_charset_when_msh18_is_empty_or_unknown():
    raw = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|||1||H\u00c9L".encode("latin-1")
    assert Message.parse(raw, charset="latin-1").get("PID-5") == "H\u00c9L"
    unknown = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5|||||FRA|KLINGON\rPID|||1||X".encode()
    msg = Message.parse(unknown)
    assert msg.charset == "utf-8" and "KLINGON" in msg.warnings[0]


def test_escape_sequences_are_decoded_on_read():
    raw = "MSH|^~\\&|A\rOBX|1|TX|C||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41C3A9\\g\\.br\\h\\H\\i\\N\\"
    assert Message.parse(raw).get("OBX-5") == "a|b^c&d~e\\fA\u00e9g\\.br\\hi"


def test_escape_round_trip():
    text = "x|y^z&w~v\\u"
    assert unescape(escape(text), STANDARD_ENCODING) == text


def test_non_leaf_values_are_returned_as_er7():
    msg = Message.parse("MSH|^~\\&|A\rPID|||A\\S\\1^^^X&1.2&ISO^PI")
    assert msg.get("PID-3") == "A\\S\\1^^^X&1.2&ISO^PI"
    assert msg.get("PID-3.1") == "A^1"
    assert msg.get("PID-3.4") == "X&1.2&ISO"
    assert msg.get("PID-3.4.2") == "1.2"


def test_absent_or_empty_values_are_none():
    msg = Message.parse("\r".join(SIMPLE))
    assert msg.get("PID-99") is None
    assert msg.get("PID-4") is None
    assert msg.get("ZZZ-1") is None
    assert msg.get_all("ZZZ-1") == []


def test_large_field_is_kept_intact():
    payload = "A" * 700_000
    msg = Message.parse(f"MSH|^~\\&|A\rOBX|1|ED|X||^TEXT^XML^Base64^{payload}||||||F")
    assert msg.get("OBX-5.5") == payload
    assert msg.get("OBX-11") == "F"


def test_non_text_input_is_a_parse_error():
    with pytest.raises(ParseError):
        Message.parse(12)  # type: ignore[arg-type]


FUZZ_SEEDS = (
    "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/MDM/"
    "Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1.er7",
    "hl7V2-exemples/Volets/TRANS_DOC_CDA_HL7V2/V2.1/ORU/Transmission initiale ORU/message_ORU_CR_Bio_INIT_N1_N3.hl7",
    "interop-ig-hl7v2-teleradiologie/_extracted_from_pages/exemples/flux1_ORM_O01_NW_transmission_demande.hl7",
)


def _corpus_samples(ans_corpus):
    return [(ans_corpus / name).read_bytes() for name in FUZZ_SEEDS]


def test_fuzz_truncations_and_mutations_never_crash(ans_corpus):
    """Every prefix and random byte mutations: a Message or a ParseError, nothing else."""
    rng = random.Random(20261122)
    for raw in _corpus_samples(ans_corpus):
        for cut in range(0, len(raw), 7):
            _parse_or_parse_error(raw[:cut])
        for _ in range(200):
            data = bytearray(raw)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            _parse_or_parse_error(bytes(data))


def _parse_or_parse_error(raw: bytes) -> None:
    try:
        msg = Message.parse(raw)
    except ParseError:
        return
    for path in ("MSH-9.1", "PID-3(2).4.2", "OBX[code=DESTDMP]-5", "PRT[4.1=RCT]-15.4"):
        msg.get(path)
        msg.get_all(path)
    msg.to_er7()
