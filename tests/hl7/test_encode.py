"""engine.hl7.encode: one encoder for every value the engine writes from outside data."""

from __future__ import annotations

import pytest

from engine.hl7.encode import (
    Delimiters,
    InvalidValue,
    Raw,
    checked_gender,
    checked_identifier,
    checked_root,
    checked_ts,
    escape,
    field,
    segment,
    unescape,
)
from engine.hl7.message import Message

NASTY = [
    "|",
    "^",
    "~",
    "\\",
    "&",
    "\r",
    "\n",
    "\x0b",
    "\x1c",
    "\x1c\r",
    "\x00",
    "a|b^c~d\\e&f",
    "\rOBX|9|ST|FORGED||x\r",
    "\\F\\ already",
    "é€",
    "",
]


@pytest.mark.parametrize("value", NASTY)
def test_escape_round_trips_and_leaves_no_delimiter_or_control(value):
    encoded = escape(value)
    assert not set(encoded) & set("|^~&\r\n\x0b\x1c\x00")
    assert unescape(encoded) == value


def test_escape_uses_the_senders_own_delimiters():
    d = Delimiters("#", "!", "*", "$", "%")
    assert escape("a#b!c*d$e%f|^", d) == "a$F$b$S$c$R$d$E$e$T$f|^"
    assert unescape(escape("x#!*$%\ry", d), d) == "x#!*$%\ry"


def test_structured_fields_never_add_structure():
    pid3 = [("ID|1\r", "", "", ("AUTH^X", "1.2.3", "ISO"), "PI"), ("2&3", "", "", "", "INS")]
    built = segment("PID", "1", "", pid3, "", ("FAMILY\rOBX|1", "Given~x"))
    assert built.count("\r") == 0 and built.count("|") == 5
    msg = Message.parse(("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\r" + built + "\r").encode())
    assert [s.name for s in msg.all_segments] == ["MSH", "PID"]
    assert unescape(msg.get("PID-3.1")) == "ID|1\r" and unescape(msg.get("PID-5.1")) == "FAMILY\rOBX|1"
    assert unescape(msg.get("PID-5.2")) == "Given~x" and unescape(msg.get("PID-3.4.1")) == "AUTH^X"


def test_raw_text_of_our_own_is_kept():
    assert field(Raw("A^B")) == "A^B" and field("A^B") == "A\\S\\B"


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (checked_ts, ["2026", "20261203", "202612031015", "20261203101530.12+0100"], ["2026-12-03", "1980\r0101", "x"]),
        (checked_gender, ["M", "F", "U", ""], ["m", "X", "M\rOBX|1"]),
        (checked_root, ["1.2.250.1.213.1.4.10", "5f1a2b3c-0000-4000-8000-0123456789ab"], ["1.2.3\r", "ROOT", "1..2"]),
        (checked_identifier, ["8000123456", "A^B|C"], ["123\r456", "x" * 300]),
    ],
)
def test_values_that_cannot_be_valid_for_their_field_are_refused(check, good, bad):
    for value in good:
        assert check(value, "FIELD") == value
    for value in bad:
        with pytest.raises(InvalidValue):
            check(value, "FIELD")
