"""The lean MSH/PID scan: cached MSH-2 checks and segment ends give what the full checks give."""

from __future__ import annotations

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
