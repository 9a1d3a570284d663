"""ZAM business acks compared field by field with the official ANS examples."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.docrequest import parse_document_request
from engine.hl7 import Message
from engine.zam import ZamKind, build_zam, wants_zam

V21 = "hl7V2-exemples/Volets/TRANS_DOC_CDA_HL7V2/V2.1/ORU/Transmission initiale ORU"


@pytest.fixture
def oru_header(ans_corpus):
    """Header of the ORU whose ZAMs the official examples acknowledge (MSH-10 = 015)."""
    raw = (ans_corpus / V21 / "message_ORU_CR_Bio_INIT_N1_N3.hl7").read_bytes()
    return parse_document_request(Message.parse(raw)).header


def _official(ans_corpus, name):
    return Message.parse((ans_corpus / V21 / name).read_bytes())


def _assert_same_fields(built: Message, official: Message):
    """Every field of every segment equal, except MSH-7 (ours carries seconds)."""
    assert [s.name for s in built.segments()] == [s.name for s in official.segments()]
    for ours, theirs in zip(built.segments(), official.segments()):
        ours_fields, theirs_fields = ours.fields, theirs.fields
        if ours.name == "MSH":
            assert ours_fields[7].startswith(theirs_fields[7])
            ours_fields, theirs_fields = ours_fields[8:], theirs_fields[8:]
        assert ours_fields == theirs_fields, ours.name


EVENT = datetime(2021, 10, 5, 15, 29, 8)


def test_z01_dmp_failure_matches_official_example(ans_corpus, oru_header):
    built = build_zam(ZamKind.Z01, oru_header, False, control_id="017", now=datetime(2021, 6, 6, 9, 33),
                      event_time=EVENT, error_code="DMPClosed", error_label="DMP fermé")
    _assert_same_fields(Message.parse(built), _official(ans_corpus, "Message metier reception DMP"))


def test_z02_mss_receipt_matches_official_example(ans_corpus, oru_header):
    built = build_zam("Z02", oru_header, True, control_id="018", now=datetime(2021, 6, 6, 9, 34),
                      event_time=EVENT, address="adam.hoda@test-ci-sis.mssante.fr",
                      address_owner_id="801234567897")
    _assert_same_fields(Message.parse(built), _official(ans_corpus, "Message metier reception MSS"))


def test_z03_read_receipt_matches_official_example(ans_corpus, oru_header):
    built = build_zam("Z03", oru_header, True, control_id="019", now=datetime(2021, 6, 7, 9, 33),
                      event_time=EVENT, address="adam.hoda@test-ci-sis.mssante.fr",
                      address_owner_id="801234567897")
    _assert_same_fields(Message.parse(built), _official(ans_corpus, "Message metier lecture MSS"))


def test_failed_z02_and_z03_carry_the_external_code(oru_header):
    z02 = Message.parse(build_zam("Z02", oru_header, False, control_id="1", now=EVENT,
                                  address="x@y.mssante.fr", error_code="550", error_label="Mailbox unavailable"))
    assert z02.get("OBX[1]-5.1") == "N" and z02.get("OBX[2]-5.4") == "x@y.mssante.fr"
    assert z02.get("ERR-3.1") == "207" and z02.get("ERR-5") == "550^Mailbox unavailable^SMTPERRORCODE"
    z03 = Message.parse(build_zam("Z03", oru_header, False, control_id="2", now=EVENT,
                                  address="x@y.mssante.fr", error_code="902",
                                  error_label="Identifiant de patient inconnu"))
    assert z03.get("ERR-5.3") == "applicationErrorCondition" and z03.get("ERR-5.1") == "902"


def test_zam_swaps_sender_and_receiver_and_escapes(oru_header):
    header = oru_header.model_copy(update={"sending_application": "SIL|Y", "control_id": "A^1"})
    msg = Message.parse(build_zam("Z01", header, True, control_id="9", now=EVENT))
    assert (msg.get("MSH-3"), msg.get("MSH-5")) == (header.receiving_application, "SIL|Y")
    assert msg.get("OBX-4") == "A^1" and msg.get("MSH-21.1") == "2.1"
    assert msg.segments("ERR") == []


@pytest.mark.parametrize("kwargs", [
    {"kind": "Z02", "success": True},                      # no address
    {"kind": "Z01", "success": False},                     # no error code
])
def test_zam_arguments_are_checked(oru_header, kwargs):
    with pytest.raises(ValueError):
        build_zam(kwargs["kind"], oru_header, kwargs["success"], control_id="1", now=EVENT)


def test_wants_zam_follows_ack_rows(sample):
    request = sample.request()                              # ACK_RECEPTION Y, ACK_LECTURE_MSS N
    assert wants_zam(request, "Z01") and wants_zam(request, ZamKind.Z02)
    assert not wants_zam(request, "Z03")
    sample.drop("OBX", sample.meta("ACK_RECEPTION"))
    assert not wants_zam(sample.request(), "Z01")


# -- ERR-5 coding system: a refusal by the PFI's own checks is not dressed as a DMP error ----------

def test_a_pfi_refusal_carries_the_local_coding_system(oru_header):
    msg = Message.parse(build_zam("Z01", oru_header, False, control_id="3", now=EVENT,
                                  error_code="DOC_ID_MISMATCH", error_label="TXA-12 differs",
                                  error_system="99PFI"))
    assert msg.get("ERR-5") == "DOC_ID_MISMATCH^TXA-12 differs^99PFI"


@pytest.mark.parametrize("code", ["PATIENT_OPPOSED", "INS_NOT_QUALIFIED", "CDA_HEADER_INCOMPLETE",
                                  "CONNECTION_REFUSED", "HTTP_503", "TLS_ERROR", "DELIVERY_FAILED",
                                  "DOCUMENT_REFUSED", "INS_MISMATCH"])
def test_codes_the_pfi_gives_itself_are_99pfi_by_default(oru_header, code):
    msg = Message.parse(build_zam("Z01", oru_header, False, control_id="4", now=EVENT, error_code=code))
    assert msg.get("ERR-5.3") == "99PFI"


@pytest.mark.parametrize("code", ["DMPClosed", "XDSRegistryError", "XDSDuplicateUniqueIdInRegistry"])
def test_codes_the_dmp_returned_keep_dmperrorcode(oru_header, code):
    msg = Message.parse(build_zam("Z01", oru_header, False, control_id="5", now=EVENT, error_code=code))
    assert msg.get("ERR-5.3") == "DMPERRORCODE"


def test_every_code_the_dmp_connector_makes_up_is_a_pfi_code():
    """A code written in engine/dmp (gate, connector, transport) is the PFI's own: it must be in
    engine.zam's registry, or a ZAM would present it as a DMP error."""
    import re
    from pathlib import Path

    from engine.zam import is_pfi_code

    root = Path(__file__).resolve().parents[2] / "engine"
    literal = re.compile(r'(?:permanent|transient|DmpTransientError|DmpPermanentError)\(\s*f?"([A-Z][A-Z0-9_]+)'
                         r'|GateDecision\([^)]*code="([A-Z][A-Z0-9_]+)"|Outcome\("\w+", f"([A-Z][A-Z0-9_]+):')
    found = set()
    for path in [*(root / "dmp").glob("*.py"), root / "connectors.py"]:
        if path.name == "simulator.py" or path.name == "simulator_checks.py":
            continue  # the simulator plays the DMP: its codes are the DMP's
        for match in literal.finditer(path.read_text(encoding="utf-8")):
            found.add(next(g for g in match.groups() if g))
    assert {"PATIENT_OPPOSED", "INTERNAL_ERROR", "NOT_PUBLISHABLE", "CONNECTION_REFUSED"} <= found
    assert sorted(c for c in found if not is_pfi_code(c)) == []
