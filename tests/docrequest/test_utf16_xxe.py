"""A DOCTYPE in UTF-16 hides from a byte search: the parsed tree is checked too (engine.xmlsafe)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import pytest_twisted

from engine.docrequest.check import check_document_message
from engine.errors import ValidationError
from engine.journal.reader import JournalReader
from engine.xmlsafe import parse_untrusted
from tests.support import client_for, exchange, inbound, start_engine, write_config

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "mdm_t02_fictional.hl7"
PROLOG = '<?xml version="1.0" encoding="UTF-16"?>\n'
XXE = PROLOG + '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
EXTERNAL = PROLOG + '<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><r/>'
LAUGHS = PROLOG + '<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><l>&b;</l>'


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("text", [XXE, EXTERNAL, LAUGHS], ids=["xxe", "external-dtd", "laughs"])
def test_dtd_in_a_wide_encoding_is_refused(text, codec):
    data = text.replace("UTF-16", codec.upper()).encode(codec)
    assert b"<!DOCTYPE" not in data.upper()  # invisible to the byte filter
    with pytest.raises(ValidationError, match="declares a DTD or entities"):
        parse_untrusted(data)


def test_plain_utf16_document_still_parses():
    tree = parse_untrusted((PROLOG + '<a xmlns="urn:hl7-org:v3"><b>é</b></a>').encode("utf-16"))
    assert tree.getroot()[0].text == "é"


def sample_with_document(document: bytes, control_id: str) -> bytes:
    """The fictional MDM sample with OBX-1's CDA replaced (base64) and MSH-10 changed."""
    segments = SAMPLE.read_bytes().decode("utf-8").split("\r")
    for i, segment in enumerate(segments):
        fields = segment.split("|")
        if fields[0] == "MSH":
            fields[9] = control_id
        elif fields[:3] == ["OBX", "1", "ED"]:
            fields[5] = "^text^XML^Base64^" + base64.b64encode(document).decode()
        segments[i] = "|".join(fields)
    return "\r".join(segments).encode("utf-8")


def test_embedded_utf16_xxe_is_a_coded_error():
    [error] = check_document_message(sample_with_document(XXE.encode("utf-16"), "X-1"))
    assert (error.code, error.location, error.severity) == (207, "OBX^1^5", "E")
    assert error.app_code.startswith("CDA_NOT_WELL_FORMED^") and "DTD or entities" in error.message


@pytest_twisted.ensureDeferred
async def test_utf16_xxe_over_mllp_gets_ae_and_is_kept(tmp_path):
    config = write_config(tmp_path / "cfg", {"docs": inbound(ack_mode="document-request")})
    engine = await start_engine(config, tmp_path / "data")
    try:
        raw = sample_with_document(XXE.encode("utf-16"), "XXE-1")
        client = await client_for(engine, "docs")
        ack = await exchange(client, raw)
        client.close()
        assert ack.code == "AE" and "|OBX^1^5|207^" in ack.errors[0] and "CDA_NOT_WELL_FORMED" in ack.errors[0]
        [event] = JournalReader(engine.journal.data_dir).events_after(0)
        assert event.state == "rejected" and "DTD or entities" in event.detail
    finally:
        await engine.stopService()
