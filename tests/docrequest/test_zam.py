"""ZAM business acks compared field by field with the official ANS examples."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.docrequest import parse_document_request
from engine.hl7 import Message
from engine.docrequest.zam import ZamKind, build_zam, wants_zam

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
    built = build_zam(
        ZamKind.Z01,
        oru_header,
        False,
        control_id="017",
        now=datetime(2021, 6, 6, 9, 33),
        event_time=EVENT,
        error_code="DMPClosed",
        error_label="DMP fermé",
    )
    _assert_same_fields(Message.parse(built), _official(ans_corpus, "Message metier reception DMP"))


def test_z02_mss_receipt_matches_official_example(ans_corpus, oru_header):
    built = build_zam(
        "Z02",
        oru_header,
        True,
        control_id="018",
        now=datetime(2021, 6, 6, 9, 34),
        event_time=EVENT,
        address="adam.hoda@test-ci-sis.mssante.fr",
        address_owner_id="801234567897",
    )
    _assert_same_fields(Message.parse(built), _official(ans_corpus, "Message metier reception MSS"))


def test_z03_read_receipt_matches_official_example(ans_corpus, oru_header):
    built = build_zam(
        "Z03",
        oru_header,
        True,
        control_id="019",
        now=datetime(2021, 6, 7, 9, 33),
        event_time=EVENT,
        address="adam.hoda@test-ci-sis.mssante.fr",
        address_owner_id="801234567897",
    )
    _assert_same_fields(Message.parse(built), _official(ans_corpus, "Message metier lecture MSS"))


def test_failed_z02_and_z03_carry_the_external_code(oru_header):
    z02 = Message.parse(
        build_zam(
            "Z02",
            oru_header,
            False,
            control_id="1",
            now=EVENT,
            address="x@y.mssante.fr",
            error_code="550",
            error_label="Mailbox unavailable",
        )
    )
    assert z02.get("OBX[1]-5.1") == "N" and z02.get("OBX[2]-5.4") == "x@y.mssante.fr"
    assert z02.get("ERR-3.1") == "207" and z02.get("ERR-5") == "550^Mailbox unavailable^SMTPERRORCODE"
    z03 = Message.parse(
        build_zam(
            "Z03",
            oru_header,
            False,
            control_id="2",
            now=EVENT,
            address="x@y.mssante.fr",
            error_code="902",
            error_label="Identifiant de patient inconnu",
        )
    )
    assert z03.get("ERR-5.3") == "applicationErrorCondition" and z03.get("ERR-5.1") == "902"


def test_zam_swaps_sender_and_receiver_and_escapes(oru_header):
    header = oru_header.model_copy(update={"sending_application": "SIL|Y", "control_id": "A^1"})
    msg = Message.parse(build_zam("Z01", header, True, control_id="9", now=EVENT))
    assert (msg.get("MSH-3"), msg.get("MSH-5")) == (header.receiving_application, "SIL|Y")
    assert msg.get("OBX-4") == "A^1" and msg.get("MSH-21.1") == "2.1"
    assert msg.segments("ERR") == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "Z02", "success": True},  # no address
        {"kind": "Z01", "success": False},  # no error code
    ],
)
def test_zam_arguments_are_checked(oru_header, kwargs):
    with pytest.raises(ValueError):
        build_zam(kwargs["kind"], oru_header, kwargs["success"], control_id="1", now=EVENT)


def test_wants_zam_follows_ack_rows(sample):
    request = sample.request()  # ACK_RECEPTION Y, ACK_LECTURE_MSS N
    assert wants_zam(request, "Z01") and wants_zam(request, ZamKind.Z02)
    assert not wants_zam(request, "Z03")
    sample.drop("OBX", sample.meta("ACK_RECEPTION"))
    assert not wants_zam(sample.request(), "Z01")


def test_remote_error_texts_with_delimiters_and_cr_stay_one_value(oru_header):
    from engine.hl7.encode import unescape

    label = "DMP fermé|forged\rOBX|9|ST|X||FORGED^~\\&"
    z01 = build_zam("Z01", oru_header, False, control_id="1", now=EVENT, error_code="DMP|Closed\r", error_label=label)
    z02 = build_zam(
        "Z02",
        oru_header,
        False,
        control_id="2",
        now=EVENT,
        error_code="550",
        error_label=label,
        address="a|b\r@x.mssante.fr",
    )
    for raw in (z01, z02):
        assert [s[:3] for s in raw.decode().split("\r") if s].count("OBX") == (1 if raw is z01 else 2)
        assert raw.count(b"\r") == (4 if raw is z01 else 5)
    msg = Message.parse(z01)
    assert unescape(msg.get("ERR-5.2")) == label and unescape(msg.get("ERR-5.1")) == "DMP|Closed\r"
    info = Message.parse(z02).segments("OBX")[1]
    assert unescape(info.field(5).split("^")[3]) == "a|b\r@x.mssante.fr"
