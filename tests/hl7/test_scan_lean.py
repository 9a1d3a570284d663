"""The lean MSH/PID scan: cached MSH-2 checks and segment ends give what the full checks give."""

from __future__ import annotations

import random

import pytest

from engine.hl7.charset import codec_for
from engine.hl7.scan import HeaderError, scan

PID = b"|".join([b"PID", b"1", b"", b"123^^^CHU^PI", b"", b"DOE^JOHN"] + [b""] * 26 + [b"VALI"])
ADT = b"MSH|^~\\&|GAM|CHU|PFI|CHU|20261122101010||ADT^A01^ADT_A01|C-1|P|2.5^FRA^2.11|||||FRA|8859/1\r" + PID + b"\r"


def test_the_same_msh2_read_twice_gives_the_same_header():
    first, second = scan(ADT), scan(ADT)
    assert (
        (first.encoding_chars, first.control_id, first.patient_ids, first.identity_status)
        == (second.encoding_chars, second.control_id, second.patient_ids, second.identity_status)
        == ("^~\\&", "C-1", "123^^^CHU^PI", "VALI")
    )
    assert first.codec == codec_for("8859/1") != codec_for("")


def test_a_small_tilde_is_reported_every_time_not_only_the_first():
    raw = ADT.replace(b"^~", "^\u02dc".encode())
    for _ in range(2):
        header = scan(raw)
        assert header.encoding_chars == "^~\\&"
        assert header.warnings == ["MSH-2 uses U+02DC instead of '~'; read as '~'"]


def test_invalid_msh2_is_refused_even_after_valid_ones():
    scan(ADT)
    with pytest.raises(HeaderError) as refused:
        scan(ADT.replace(b"^~\\&", b"^^\\&"))
    assert refused.value.code == 102


@pytest.mark.parametrize("end", [b"\r", b"\n", b"\r\n"])
def test_a_segment_ends_at_cr_or_lf(end):
    header = scan(ADT.replace(b"\r", end))
    assert header.charset == "8859/1"
    assert header.patient_ids == "123^^^CHU^PI"


def _eager_pid_fields(raw: bytes, codec: str) -> tuple[str, str, str]:
    """The rule scan used to apply at once: the first PID split whole, PID-3, -5 and -32 decoded."""
    pid = next((line for line in raw.replace(b"\n", b"\r").split(b"\r") if line.startswith(b"PID|")), None)
    if pid is None:
        return "", "", ""
    fields = pid.split(b"|")
    return tuple(fields[n].decode(codec, "replace") if len(fields) > n else "" for n in (3, 5, 32))  # type: ignore[return-value]


def test_pid_fields_read_on_demand_are_those_read_at_once():
    """PID-5 and PID-32 are decoded when asked (intake needs PID-3 only): PIDs of every length,
    empty fields, non-ASCII names and bytes that do not decode give what the eager scan gave."""
    rng = random.Random(32)
    values = [b"", b"X", b"DOE^JOHN", "MARTIN^Léa".encode(), b"\xff\xfe", b"VALI", b"123^^^CHU^PI~456^^^X^NH"]
    for _ in range(500):
        pid = b"|".join([b"PID"] + [rng.choice(values) for _ in range(rng.randrange(0, 40))])
        raw = ADT.split(b"\r")[0] + b"\r" + pid + rng.choice([b"\r", b"\n", b""])
        header = scan(raw)
        expected = _eager_pid_fields(raw, header.codec)
        assert (header.patient_ids, header.patient_name, header.identity_status) == expected
