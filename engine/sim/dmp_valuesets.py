"""Value sets the DMP simulator checks codes against.

Built-in rules cover the codes the connector emits; when a directory of CI-SIS JDV files (IHE SVS
format, e.g. ../shared/corpus/cda/TestContenuCDA-3-0/jeuxDeValeurs) is given, the full JDV lists
replace the built-in rules for the slots they cover.
"""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from engine.xmlsafe import parse_untrusted

SVS = "urn:ihe:iti:svs:2008"
CONF_HL7 = "2.16.840.1.113883.5.25"
CONF_DMP = "1.2.250.1.213.1.1.4.13"
FORMAT_SCHEME = "1.3.6.1.4.1.19376.1.2.3"

BUILTIN: dict[str, set[tuple[str, str]]] = {
    "confidentialityCode": {
        ("N", CONF_HL7),
        ("R", CONF_HL7),
        ("V", CONF_HL7),
        ("MASQUE_PS", CONF_DMP),
        ("INVISIBLE_PATIENT", CONF_DMP),
        ("INVISIBLE_REPRESENTANTS_LEGAUX", CONF_DMP),
    },
    "formatCode": {
        (code, FORMAT_SCHEME)
        for code in (
            "urn:ihe:iti:xds-sd:pdf:2008",
            "urn:ihe:iti:xds-sd:text:2008",
            "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013",
            "urn:ihe:rad:PDF",
            "urn:ihe:iti:xds:2017:mimeTypeSufficient",
        )
    },
    "practiceSettingCode": {
        (code, "1.2.250.1.213.1.1.4.9")
        for code in (
            "AMBULATOIRE",
            "AMO",
            "DEPISTAGE",
            "ESSMS",
            "ETABLISSEMENT",
            "HAD",
            "MAD",
            "PALLIATIF",
            "SAD",
            "SAMU_SMUR",
        )
    }
    | {("EXP_PATIENT", "1.2.250.1.213.1.1.4.6"), ("SNR", "1.2.250.1.213.1.1.4.6")},
}
#: slot → (scheme, code pattern) used when no JDV list is loaded for the slot
PATTERNS = {
    "classCode": ("1.2.250.1.213.1.1.4.1", re.compile(r"^\d{2}$")),
    "healthcareFacilityTypeCode": ("1.2.250.1.71.4.2.4", re.compile(r"^SA\d{2}$")),
    "typeCode": ("2.16.840.1.113883.6.1", re.compile(r"^\d{1,7}-\d$")),
    "contentTypeCode": ("1.2.250.1.213.2.2", re.compile(r"^\d{2}$")),
}
JDV_FILES = {
    "healthcareFacilityTypeCode": "JDV_J02_XdsHealthcareFacilityTypeCode_CISIS.xml",
    "practiceSettingCode": "JDV_J04_XdsPracticeSettingCode_CISIS.xml",
    "typeCode": "JDV_J07_XdsTypeCode_CISIS.xml",
    "confidentialityCode": "JDV_J08_XdsConfidentialityCode_CISIS.xml",
}
#: eventCodeList schemes (the JDV OIDs) → JDV file listing their codes
EVENT_JDV_FILES = {
    "1.2.250.1.213.1.1.5.618": "JDV_ModaliteAcquisition_CISIS.xml",
    "1.2.250.1.213.1.1.5.695": "JDV_RegionAnatomique_CISIS.xml",
}
REFERENCE_ID_TYPES = {
    "urn:ihe:iti:xds:2013:accession",
    "urn:ihe:iti:xds:2013:order",
    "urn:ihe:iti:xds:2016:studyInstanceUID",
}


def load_svs(path: Path) -> set[tuple[str, str]]:
    """(code, codeSystem) pairs of an IHE SVS value-set file."""
    tree = parse_untrusted(path.read_bytes())
    return {(c.get("code"), c.get("codeSystem")) for c in tree.iter(etree.QName(SVS, "Concept").text)}


class ValueSets:
    """Answers `allowed(slot, code, scheme)`."""

    def __init__(self, jdv_dir: Path | None = None):
        self._lists = {name: set(values) for name, values in BUILTIN.items()}
        self._event_codes: dict[str, set[str]] = {}
        if jdv_dir:
            for slot, filename in JDV_FILES.items():
                path = jdv_dir / filename
                if path.is_file() and path.stat().st_size:
                    self._lists[slot] = load_svs(path)
            for scheme, filename in EVENT_JDV_FILES.items():
                path = jdv_dir / filename
                if path.is_file() and path.stat().st_size:
                    self._event_codes[scheme] = {code for code, _ in load_svs(path)}

    def allowed(self, slot: str, code: str, scheme: str) -> bool:
        """True when (code, scheme) belongs to the slot's value set (unknown slot: True)."""
        if slot == "eventCodeList":
            # the scheme names the JDV; its concepts keep their own code systems (DCM, SNOMED)
            return scheme not in self._event_codes or code in self._event_codes[scheme]
        if slot in self._lists:
            return (code, scheme) in self._lists[slot]
        if slot in PATTERNS:
            expected, pattern = PATTERNS[slot]
            return scheme == expected and bool(pattern.match(code))
        return True
