"""INS (Identifiant National de Santé) helpers: OIDs and the NIR control key."""

from __future__ import annotations

import re

from engine.docrequest.model import InsKind

INS_OIDS: dict[str, InsKind] = {
    "1.2.250.1.213.1.4.8": InsKind.NIR,
    "1.2.250.1.213.1.4.9": InsKind.NIA,
    "1.2.250.1.213.1.4.10": InsKind.NIR_TEST,
    "1.2.250.1.213.1.4.11": InsKind.NIR_DEMO,
}
# Legacy INS-C OIDs (real / test / demo cards): recognised, never used as an INS.
LEGACY_INSC_OIDS = frozenset({"1.2.250.1.213.1.4.2", "1.2.250.1.213.1.4.6", "1.2.250.1.213.1.4.7"})

_NIR = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{6}[0-9]{2}", re.IGNORECASE)


def nir_key(first13: str) -> int:
    """Control key of a 13-character NIR/NIA: 97 - (n mod 97); Corsica 2A → 19, 2B → 18."""
    digits = first13.upper()
    if digits[5:7] == "2A":
        digits = digits[:5] + "19" + digits[7:]
    elif digits[5:7] == "2B":
        digits = digits[:5] + "18" + digits[7:]
    return 97 - int(digits) % 97


def nir_key_valid(matricule: str) -> bool:
    """True when `matricule` is 15 characters (13 + key) and its key is right."""
    value = matricule.strip()
    if not _NIR.fullmatch(value):
        return False
    return nir_key(value[:13]) == int(value[13:])
