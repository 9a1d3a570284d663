import pytest

from engine.errors import ValidationError
from engine.xmlsafe import parse_untrusted

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""

LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">
<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><l>&b;</l>"""


@pytest.mark.parametrize("doc", [XXE, LAUGHS])
def test_hostile_xml_is_refused(doc):
    with pytest.raises(ValidationError, match="DTD or entities"):
        parse_untrusted(doc)


def test_too_deep_is_refused():
    doc = b"<a>" * 150 + b"</a>" * 150
    with pytest.raises(ValidationError, match="deeper"):
        parse_untrusted(doc)


def test_too_large_is_refused():
    with pytest.raises(ValidationError, match="too large"):
        parse_untrusted(b"<a>" + b"x" * 100 + b"</a>", max_bytes=50)


def test_plain_document_parses():
    tree = parse_untrusted('<a xmlns="urn:hl7-org:v3"><b>é</b></a>'.encode())
    assert tree.getroot().tag == "{urn:hl7-org:v3}a"


@pytest.mark.parametrize(
    "doc",
    [
        b"<r>" + b"x" * 5000 + b"<!eNtItY y 'z'></r>",  # past the first 4 KB, any case
        b"<!ENTITY y 'z'><r/>",
        b"<r><!-- ! -->" + b"<!" * 3 + b"<!ENTITY y 'z'></r>",
    ],
)
def test_an_entity_declaration_anywhere_is_refused(doc):
    with pytest.raises(ValidationError, match="DTD or entities"):
        parse_untrusted(doc)


def test_the_depth_limit_is_128_elements():
    assert parse_untrusted(b"<a>" * 128 + b"</a>" * 128).getroot().tag == "a"
    with pytest.raises(ValidationError, match="deeper"):
        parse_untrusted(b"<a>" * 129 + b"</a>" * 129)
    ok = b"<a>" + b"<b/>" * 500 + b"<c>" * 100 + b"</c>" * 100 + b"</a>"  # wide and 101 deep
    assert parse_untrusted(ok).getroot().tag == "a"


def test_exclamation_marks_in_text_and_comments_are_no_declaration():
    doc = b"<r><!-- hello! --><![CDATA[ ! <!ENT ]]>Bang! !</r>"
    assert parse_untrusted(doc).getroot().tag == "r"
