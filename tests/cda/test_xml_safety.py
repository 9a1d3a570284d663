"""Hostile documents are refused with a clear error before any validation step runs."""

from __future__ import annotations

import http.server
import threading

import pytest

from engine.cda import validate_cda
from engine.errors import ValidationError

CDA_OPEN = '<ClinicalDocument xmlns="urn:hl7-org:v3">'

XXE = f"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY x SYSTEM "file:///etc/passwd">]>{CDA_OPEN}<title>&x;</title></ClinicalDocument>"""

LAUGHS = (
    "<?xml version='1.0'?><!DOCTYPE ClinicalDocument [<!ENTITY a 'lol'>"
    + "".join(f"<!ENTITY {chr(98 + i)} '{('&' + chr(97 + i) + ';') * 10}'>" for i in range(9))
    + f"]>{CDA_OPEN}<title>&j;</title></ClinicalDocument>"
)


@pytest.mark.parametrize("document", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_entities_are_refused(validation_kit, document):
    with pytest.raises(ValidationError, match="DTD or entities"):
        validate_cda(document.encode(), validation_kit)


def test_utf16_xxe_is_refused_too(validation_kit):
    # parse_untrusted's byte search does not see a UTF-16 DOCTYPE; validate_cda checks the parsed tree
    data = XXE.replace('version="1.0"?>', 'version="1.0" encoding="UTF-16"?>').encode("utf-16")
    with pytest.raises(ValidationError, match="DTD or entities"):
        validate_cda(data, validation_kit)


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server API)
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'<!ENTITY x "pwned">')

    def log_message(self, *args):
        pass


def test_external_dtd_is_never_fetched(validation_kit):
    server = http.server.HTTPServer(("127.0.0.1", 0), _RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/evil.dtd"
        data = f'<?xml version="1.0"?><!DOCTYPE ClinicalDocument SYSTEM "{url}">{CDA_OPEN}</ClinicalDocument>'
        with pytest.raises(ValidationError, match="DTD"):
            validate_cda(data.encode(), validation_kit)
    finally:
        server.shutdown()
        server.server_close()
    assert _RecordingHandler.hits == []


def test_too_deep_is_refused(validation_kit):
    data = CDA_OPEN + "<title>" * 200 + "</title>" * 200 + "</ClinicalDocument>"
    with pytest.raises(ValidationError, match="deeper"):
        validate_cda(data.encode(), validation_kit)


def test_too_big_is_refused(validation_kit):
    from engine.xmlsafe import MAX_XML_BYTES

    data = (CDA_OPEN + "<title>").encode() + b"x" * MAX_XML_BYTES + b"</title></ClinicalDocument>"
    with pytest.raises(ValidationError, match="too large"):
        validate_cda(data, validation_kit)


def test_not_well_formed_is_refused(validation_kit):
    with pytest.raises(ValidationError, match="not well-formed"):
        validate_cda(CDA_OPEN.encode(), validation_kit)


def test_xinclude_is_not_processed(validation_kit, img_n3):
    data = img_n3.replace(
        b"<title>",
        b'<title><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/>',
        1,
    )
    report = validate_cda(data, validation_kit, [])
    assert not report.valid and "root:" not in " ".join(i.message for i in report.issues)
    assert any("XInclude" in i.message for i in report.issues)
