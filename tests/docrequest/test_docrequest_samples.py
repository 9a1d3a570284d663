"""The other fictional samples: ORU patient-only MSSanté, and the LPS MDM (PFI → DPI)."""

from __future__ import annotations

from pathlib import Path

from engine.docrequest import Action, Volet, check_consistency, parse_document_request
from engine.hl7 import Message
from engine.docrequest.zam import wants_zam

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _request(name):
    return parse_document_request(Message.parse((SAMPLES / name).read_bytes()))


def test_oru_patient_only():
    request = _request("oru_r01_patient_only_fictional.hl7")
    flags = request.flags
    assert request.header.message_code == "ORU" and request.action is Action.INITIAL
    assert (flags.destdmp, flags.destmssanteps, flags.destmssantepat) == (False, False, True)
    assert (flags.masque_ps, flags.invisible_rep_legaux) == (True, True)
    assert flags.corpsmail_patient.startswith("Bonjour") and flags.corpsmail_ps is None
    assert [r.is_patient for r in request.recipients] == [True]
    assert request.sender.organisation.id_type == "FINEG"
    assert wants_zam(request, "Z02") and wants_zam(request, "Z03")
    assert check_consistency(request) == []


def test_lps_mdm_parses_into_the_same_model():
    request = _request("mdm_t02_lps_fictional.hl7")
    assert request.volet is Volet.LPS and request.patient_class == "N"
    assert request.sender.address == "alex.fictif-radio@test.mssante.fr"
    assert request.recipients[0].organisation.id_type == "UF"
    assert request.email.message_id == "<fict-0003@test.mssante.fr>"
    assert request.email.subject.startswith("XDM/1.0/DDM+")
    assert request.email.body == "Corps du courriel fictif"
    assert (request.flags.destdmp, request.flags.ack_reception) == (None, None)
    assert len(request.documents) == 1 and check_consistency(request) == []
