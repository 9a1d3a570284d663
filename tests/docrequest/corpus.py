"""The ANS example messages the document-request wiring is tested on (read in place in ../shared)."""

from __future__ import annotations

from pathlib import Path

ANS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "ans" / "hl7V2-exemples"
VAGUE2 = ANS / "Vague 2" / "Trans_Doc-CDA-HL7V2" / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"
VOLETS = ANS / "Volets" / "TRANS_DOC_CDA_HL7V2"

# v2.1 requests whose CDA agrees with the message (MANIFEST: no blocking defect).
GOOD = {
    "oru-init": VAGUE2 / "ORU" / "Transmission initiale ORU" / "message_ORU_CR_Bio_INIT_N3_SEGUR.hl7",
    "oru-rplc": VAGUE2 / "ORU" / "Remplacement ORU" / "message_ORU_CR_Bio_RPLC_N3_SEGUR.hl7",
    "mdm-init": VAGUE2 / "MDM" / "Transmission initiale MDM" / "message_MDM_CR_Radio_INIT_N1_Base64.er7",
    "mdm-rplc": VAGUE2 / "MDM" / "Remplacement MDM" / "message_MDM_CR_Radio_RPLC_N1.er7",
    "mdm-del": VAGUE2 / "MDM" / "Suppression MDM" / "message_MDM_CR_Radio_DEL_N1.er7",
}
# MANIFEST: "PID-3 ≠ CDA recordTarget" (the CDA is PAT-TROIS's 2.0-era document).
INS_MISMATCH = VAGUE2 / "ORU" / "Suppression ORU" / "message_ORU_CR_Bio_DEL_N3_SEGUR.hl7"
# Superseded profile 2.0^CISIS_CDA_HL7_V2 (ORU with U+02DC in MSH-2, and MDM).
V20_ORU = VOLETS / "V2.0" / "ORU" / "Transmission initiale ORU" / "message_ORU_CR_Bio_INIT_N1_N3.hl7"
V20_MDM = VOLETS / "V2.0" / "MDM" / "Transmission initiale MDM" / "message_MDM_CR_Radio_INIT_N1_Base64.er7"


def with_control_id(raw: bytes, control_id: str) -> bytes:
    """The same message with MSH-10 replaced (every ANS example uses 015: avoid duplicates)."""
    end = min(i for i in (raw.find(b"\r"), raw.find(b"\n"), len(raw)) if i >= 0)
    fields = raw[:end].split(b"|")
    fields[9] = control_id.encode()
    return b"|".join(fields) + raw[end:]
