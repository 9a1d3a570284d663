import pytest

from engine.errors import ParseError
from engine.hl7.ack import AckError, build_ack
from engine.hl7.scan import scan
from tests.support import sample_adt


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_scan_reads_msh_and_pid_with_any_separator(sep):
    h = scan(sample_adt(control_id="C42", sep=sep).encode())
    assert (h.sending_app, h.sending_facility, h.receiving_app) == ("GAM", "CHU-X", "PFI")
    assert (h.message_type, h.structure, h.control_id, h.version) == ("ADT^A01", "ADT_A01", "C42", "2.5")
    assert h.patient_ids.startswith("IPP001^^^CHU-X")
    assert h.patient_name == "MARTIN^Léa"
    assert h.identity_status == "VALI"


def test_scan_decodes_by_msh18_latin9():
    raw = sample_adt(charset="8859/15", name="CŒUR^Hélène€").encode("iso8859-15")
    h = scan(raw)
    assert h.codec == "iso8859-15" and h.patient_name == "CŒUR^Hélène€"


def test_scan_falls_back_to_channel_charset_when_msh18_empty():
    raw = sample_adt(charset="", name="GARÇON^Zoé").encode("iso8859-1")
    assert scan(raw, fallback_codec="iso8859-1").patient_name == "GARÇON^Zoé"


def test_scan_repairs_small_tilde_in_msh2():
    raw = sample_adt().replace("^~\\&", "^˜\\&").encode()
    h = scan(raw)
    assert h.encoding_chars == "^~\\&" and h.warnings


@pytest.mark.parametrize("raw", [b"", b"PID|1", b"MSH", b"MSHA^~\\&|x", b"\x00\xff\xfe" * 10])
def test_scan_rejects_input_without_msh(raw):
    with pytest.raises(ParseError):
        scan(raw)


def test_pam_fr_version_is_first_component():
    raw = sample_adt(version="2.5^FRA^2.11").encode()
    assert scan(raw).version == "2.5"


def test_ack_mirrors_header_as_the_volets_ask():
    h = scan(sample_adt(control_id="XYZ", version="2.6").encode())
    ack = build_ack(h, "AA", "A1", "20261122120000").decode().split("\r")
    msh = ack[0].split("|")
    assert msh[2:6] == ["PFI", "CHU-X", "GAM", "CHU-X"]
    assert msh[8] == "ACK^A01^ACK" and msh[9] == "A1" and msh[10] == "P" and msh[11] == "2.6"
    assert msh[17] == "UNICODE UTF-8" and len(msh) == 18  # no MSH-21
    assert ack[1] == "MSA|AA|XYZ"


def test_nack_carries_err_with_table_0357_code_and_escaped_text():
    h = scan(sample_adt().encode())
    ack = build_ack(h, "AR", "A2", "20261122", (AckError(203, "MSH^1^12", "version 9|9 refused"),))
    err = ack.decode().split("\r")[2]
    assert err == "ERR||MSH^1^12|203^Unsupported version id^HL70357|E||||version 9\\F\\9 refused"


def test_ack_without_header_still_has_msa():
    ack = build_ack(None, "AR", "A3", "20261122", (AckError(100, "MSH^1", "no MSH"),)).decode()
    assert ack.startswith("MSH|^~\\&|PFI|") and "\rMSA|AR|\r" in ack


@pytest.mark.parametrize(
    "value, echoed",
    [
        ("CHU Saint-Étienne", "CHU Saint-Étienne"),  # printable: sent back as it is
        ("GAM\x1c\x0b", "GAM"),  # frame bytes cannot leave in an ACK
        ("A\x00B\x7fC\rD", "ABCD"),
        ("X" * 300, "X" * 227),  # bounded
        ("soft\u00adhyphen", "soft\u00adhyphen"),  # not printable for Python, yet no control char
    ],
)
def test_echoed_values_lose_control_characters_only(value, echoed):
    from engine.hl7.ack import _echo

    assert _echo(value) == echoed
