"""The shipped MDM -> ORU mapping for DRIMboxes that take ORU^R01 only."""

from __future__ import annotations

from engine.hl7.message import Message
from engine.routing.transform import apply_xslt
from tests.conftest import ANS
from tests.support import ROOT

MDM = ANS / "hl7V2-exemples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1/MDM"


def test_mdm_becomes_oru_with_the_document_untouched():
    raw = (MDM / "Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7").read_bytes()
    out = apply_xslt(raw, ROOT / "mappings" / "mdm-to-oru-drimbox.xsl")
    before, after = Message.parse(raw), Message.parse(out)
    assert after.get("MSH-9") == "ORU^R01^ORU_R01" and after.get("MSH-12") == "2.5"
    assert not after.segments("TXA") and not after.segments("EVN")
    assert after.get("MSH-10") == before.get("MSH-10")
    assert after.get_all("PID-3") == before.get_all("PID-3")
    assert after.get("OBX[1]-5") == before.get("OBX[1]-5")  # the CDA, byte for byte
    assert len(after.segments("OBX")) == len(before.segments("OBX"))


def test_an_oru_passes_through_unchanged_in_structure():
    oru = (ROOT / "samples" / "oru_r01_patient_only_fictional.hl7").read_bytes()
    out = Message.parse(apply_xslt(oru, ROOT / "mappings" / "mdm-to-oru-drimbox.xsl"))
    assert out.get("MSH-9") == "ORU^R01^ORU_R01" and out.get("MSH-12") == Message.parse(oru).get("MSH-12")
