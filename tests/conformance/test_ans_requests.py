"""Conformance: every ANS example message, checked against what ../shared/corpus/ans/MANIFEST.md says.

Expectations are read from the MANIFEST table itself (Kind, Scenario, Doc, Acks, Route, Details)
and from the volet's rules, never from this engine's output. Decisions on known defects
(docs/document-requests.md): superseded profiles → ERR 203; PID-3/CDA INS mismatch → INS_MISMATCH;
a replacement CDA without RPLC → RPLC_MISSING; placeholder payloads → CDA_NOT_WELL_FORMED;
truncated CORPSMAIL_PS → kept with a MAILBODY_TRUNCATED warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.docrequest import Action, RequestError, check_consistency, parse_document_request, read_cda_header
from engine.hl7 import Message

ANS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "ans"
TEST_INS = ("279035121518989", "1.2.250.1.213.1.4.10")  # MANIFEST: common test patient
CURRENT = ("2.1^CISIS_CDA_HL7_V2", "1.1^CISIS_CDA_HL7_LPS")
SUPERSEDED = ("2.0^CISIS_CDA_HL7_V2", "1.2^CISIS_CDA_HL7_V1", "1.0^CISIS_CDA_HL7_LPS")
DOC = re.compile(r"OBX-(\d+): (\S+) (?:placeholder \(no CDA\)|N\d v\d id (\S+?)(?: RPLC→(\S+))?)$")


@dataclass
class Row:
    """One MANIFEST row about a message file."""

    path: Path
    kind: str
    scenario: str
    doc: str
    acks: str
    route: str
    details: str

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ANS))


def _manifest_rows() -> list[Row]:
    rows, section = [], None
    for line in (ANS / "MANIFEST.md").read_text("utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 8 or not cells[0].startswith("`"):
            continue
        path = ANS / section / cells[0].strip("`")
        rows.append(Row(path, *cells[2:]))
    return rows


ROWS = _manifest_rows()
MESSAGE_FILES = sorted(p for p in ANS.rglob("*") if p.is_file() and p.suffix.lower() not in (".xml", ".md", ".eml"))
REQUEST_ROWS = [r for r in ROWS if any(p in r.kind for p in CURRENT) and r.kind[:3] in ("ORU", "MDM")]
OLD_ROWS = [r for r in ROWS if any(p in r.kind for p in SUPERSEDED) and r.kind[:3] in ("ORU", "MDM")]


def test_manifest_is_read():
    assert len(MESSAGE_FILES) >= 75
    assert len(REQUEST_ROWS) == 16 and len(OLD_ROWS) == 17


@pytest.mark.parametrize("path", MESSAGE_FILES, ids=lambda p: str(p.relative_to(ANS)))
def test_every_example_message_parses(path):
    msg = Message.parse(path.read_bytes())
    assert msg.segments("MSH") and msg.message_type[0]
    again = Message.parse(msg.to_er7())  # CR-separated output parses to the same segments
    assert [s.raw for s in again.segments()] == [s.raw for s in msg.segments()]


@pytest.mark.parametrize("row", OLD_ROWS, ids=lambda r: r.name)
def test_superseded_profiles_are_refused_with_203(row):
    with pytest.raises(RequestError) as info:
        parse_document_request(Message.parse(row.path.read_bytes()))
    assert (info.value.error.code, info.value.error.location, info.value.error.ack_code) == (203, "MSH^1^21", "AE")


def _yes_no(text: str) -> list[bool | None]:
    return [None if v in ("", "–") else v == "Y" for v in text.split("/")] if text else []


@pytest.mark.parametrize("row", REQUEST_ROWS, ids=lambda r: r.name)
def test_v21_request_matches_manifest(row):
    request = parse_document_request(Message.parse(row.path.read_bytes()))
    assert (
        request.action is {"initial": Action.INITIAL, "replace": Action.REPLACE, "delete": Action.DELETE}[row.scenario]
    )
    assert request.order_control == re.search(r"ORC-1 (\w+)", row.details).group(1)
    assert (request.patient.ins.value, request.patient.ins.oid) == TEST_INS
    assert request.patient.ins_qualified
    flags = request.flags
    if row.acks:
        assert [flags.ack_reception, flags.ack_lecture_mss] == _yes_no(row.acks)
    if row.route:
        assert [flags.destdmp, flags.destmssanteps, flags.destmssantepat] == _yes_no(row.route)
    _check_recipients(row, request)
    _check_documents(row, request)
    _check_defects(row, request)


def _check_recipients(row, request):
    flags = request.flags
    if flags.destmssanteps:
        assert any(r.address and not r.is_patient for r in request.recipients)
    if flags.destmssantepat:
        assert any(r.address.endswith("@patient.mssante.fr") for r in request.recipients)
    if "malformed INS" in row.details:
        bad = re.search(r'malformed INS "(\d+)"', row.details).group(1)
        assert f"{bad}@patient.mssante.fr" in request.mssante_addresses
    if "1.1^CISIS_CDA_HL7_LPS" in row.kind:  # LPS: PRT SB required, with the sender e-mail
        assert request.sender is not None and request.sender.address
        assert request.email is not None and request.email.body
    if "MODIF_CONF_CODE=Y" in row.details:
        assert flags.modif_conf_code is True


def _check_documents(row, request):
    described = [DOC.match(part.strip()) for part in row.doc.split(";")]
    assert all(described), row.doc
    assert len(request.documents) == len(described)
    for document, match in zip(request.documents, described):
        _, type_code, cda_id, replaced = match.groups()
        assert document.type.code == type_code
        if cda_id is None:  # placeholder sentence instead of a CDA
            assert not document.looks_like_xml
            continue
        header = read_cda_header(document.content)
        assert str(header.id) == cda_id
        assert [str(i) for i in header.replaced_ids] == ([replaced] if replaced else [])


def _check_defects(row, request):
    """The E-level consistency codes are exactly the defects the MANIFEST describes."""
    expected = set()
    described = [DOC.match(part.strip()) for part in row.doc.split(";")]
    if any(m.group(3) is None for m in described):
        expected.add("CDA_NOT_WELL_FORMED")
    if "does not match PID-3" in row.details or "PID/CDA mismatch" in row.details:
        expected.add("INS_MISMATCH")
    if request.action is Action.REPLACE and any(m.group(3) and not m.group(4) for m in described):
        expected.add("RPLC_MISSING")
    errors = {p.app_code for p in check_consistency(request) if p.severity == "E"}
    assert errors == expected
    if "CORPSMAIL_PS base64 truncated" in row.details:
        assert "MAILBODY_TRUNCATED" in {w.app_code for w in request.warnings}
