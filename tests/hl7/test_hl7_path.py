"""HL7 path syntax: compilation errors and evaluation on a message."""

from __future__ import annotations

import re

import pytest

from engine.hl7 import Message, compile_path

MSG = Message.parse(
    "\r".join(
        [
            "MSH|^~\\&|RIS|ORG|PFI|ORG|20261120||ORU^R01^ORU_R01|7|P|2.5",
            "PID|||111^^^HOSP&1.2.3&ISO^PI~292089900100290^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||DOE^JANE",
            "OBX|1|ED|18748-4^CR^LN||^TEXT^XML^Base64^AAAA||||||F",
            "PRT||UC||SB^^participation|1^SENDER",
            "PRT||UC||RCT^^participation|2^ONE||||||||||^^X.400^one@x.mssante.fr",
            "PRT||UC||RCT^^participation|3^TWO||||||||||^^X.400^two@x.mssante.fr",
            "OBX|2|CWE|DESTDMP^Destinataire DMP^MetaDMPMSS||Y^^expandedYes-NoIndicator||||||F",
            "OBX|3|CWE|DESTMSSANTEPS^x^MetaDMPMSS||N^^expandedYes-NoIndicator||||||F",
        ]
    )
)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("MSH-9.2", "R01"),
        ("PID-3", "111^^^HOSP&1.2.3&ISO^PI"),
        ("PID-3(2).1", "292089900100290"),
        ("PID-3(3).1", None),
        ("PID-3[5=INS].1", "292089900100290"),
        ("PID-3[4.2=1.2.3].1", "111"),
        ("PID-3[5=NH].1", None),
        ("OBX[2]-3.1", "DESTDMP"),
        ("OBX[9]-3.1", None),
        ("OBX[code=DESTMSSANTEPS]-5.1", "N"),
        ("OBX[code=NOPE]-5.1", None),
        ("PRT[4.1=RCT]-15.4", "one@x.mssante.fr"),
        ("PRT[4.1=RCT][2]-5.2", "TWO"),
        ("OBX[2=ED]-5.4", "Base64"),
        ("OBX[3=DESTDMP]-5.1", None),  # 3 (no component) compares the whole CE text
        ("OBX[3.3=MetaDMPMSS][2]-3.1", "DESTMSSANTEPS"),
    ],
)
def test_get(path, expected):
    assert MSG.get(path) == expected


def test_get_all_returns_every_segment_and_repetition():
    assert MSG.get_all("PRT[4.1=RCT]-15.4") == ["one@x.mssante.fr", "two@x.mssante.fr"]
    assert MSG.get_all("PID-3.1") == ["111", "292089900100290"]
    assert MSG.get_all("PID-3(2).1") == ["292089900100290"]
    assert MSG.get_all("OBX[3.3=MetaDMPMSS]-3.1") == ["DESTDMP", "DESTMSSANTEPS"]


def test_compiled_path_is_reusable_and_cached():
    path = compile_path("PID-3[5=INS].1")
    assert compile_path("PID-3[5=INS].1") is path
    assert path.get(MSG) == MSG.get(path) == "292089900100290"
    assert str(path) == "PID-3[5=INS].1"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("pid-3", "3-character segment id"),
        ("PI-3", "3-character segment id"),
        ("PID", "expected '-' between the segment and the field number, found end of path (at column 4)"),
        ("PID3", "expected '-'"),
        ("PID-", "expected a field number (at column 5)"),
        ("PID-0", "field number must be >= 1"),
        ("PID-3(", "expected a repetition number"),
        ("PID-3(2", "expected ')' to close the repetition"),
        ("PID-3(0)", "repetition number must be >= 1"),
        ("PID-3.", "expected a component number"),
        ("PID-3.1.", "expected a subcomponent number"),
        ("PID-3.1.2.3", "unexpected '.3'"),
        ("PID-3 ", "unexpected ' '"),
        ("OBX[0]-5", "segment occurrence must be >= 1"),
        ("OBX[2-5", "no closing ']'"),
        ("OBX[]-5", "needs 'position=value'"),
        ("OBX[abc]-5", "needs 'position=value'"),
        ("OBX[x.1=Y]-5", "must be FIELD[.COMP[.SUB]]"),
        ("PRT[code=RCT]-5", "only defined for OBX"),
        ("PID-3[4.2.1=X]", "must be COMP[.SUB]"),
        ("PID-3(2)[5=INS]", "cannot be combined"),
    ],
)
def test_bad_paths_raise_precise_value_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_path(text)


def test_non_string_path_is_a_value_error():
    with pytest.raises(ValueError):
        compile_path(None)  # type: ignore[arg-type]
