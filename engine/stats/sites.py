"""The site of a message: the structure at the origin of the sharing, as a national identifier.

A site is written `TYPE:number`: `FINESS:300017985`, `SIRET:…`, `SIREN:…`, `RPPS-rang:…`; a
structure known only by a local name is `MSH-4:<name>` (or `MSH-6:` on the receiving side), so
that an integrator can map it to its national identifier (`sites:` in statistics.yaml). Sources, in
the order of trust docs/statistics.md gives (the first that yields a national identifier wins):

1. the sender organisation of the document request (PRT SB, PRT-8: FINEG/FINEJ, SIRET, IDNST…);
2. MSH-4, when it carries a national number (a 9-digit FINESS or a 14-digit SIRET in HD-2, or an
   IDNST);
3. the CDA custodian organisation (representedCustodianOrganization/id, IDNST under the ANS
   structures OID), then the CDA author organisation;
4. the local name of MSH-4 (`MSH-4:<HD-1>`), else '' (unknown).
"""

from __future__ import annotations

import re

#: ANS root OID of the national structure identifiers (IDNST) in CDA ids and XON
STRUCTURES_OID = "1.2.250.1.71.4.2.2"
_DIGITS = re.compile(r"^\d+$")
# PRT-8.7 / XON-7 identifier types (Interop'Santé table 0203) -> our site prefix
_TYPE_PREFIX = {
    "FINEG": "FINESS",
    "FINEJ": "FINESS",
    "FINESS": "FINESS",
    "SIRET": "SIRET",
    "SIREN": "SIREN",
    "RPPSRANG": "RPPS-rang",
    "RPPS-RANG": "RPPS-rang",
}
# first digit of an IDNST -> what follows it (ANS identifier types: 1 FINESS, 2 SIREN, 3 SIRET,
# 4 RPPS-rang of a private practice)
_IDNST_PREFIX = {"1": "FINESS", "2": "SIREN", "3": "SIRET", "4": "RPPS-rang"}


def from_idnst(idnst: str) -> str:
    """`1300017985` -> `FINESS:300017985`; an IDNST of unknown shape stays `IDNST:<value>`."""
    idnst = idnst.strip()
    kind = _IDNST_PREFIX.get(idnst[:1])
    if kind and len(idnst) > 1:
        return f"{kind}:{idnst[1:]}"
    return f"IDNST:{idnst}" if idnst else ""


def from_typed_id(id_type: str, value: str) -> str:
    """A site from an identifier and its type (XON-7 / PRT-8.7); '' when there is no number."""
    value, id_type = value.strip(), id_type.strip().upper()
    if not value:
        return ""
    if id_type == "IDNST":
        return from_idnst(value)
    prefix = _TYPE_PREFIX.get(id_type)
    return f"{prefix}:{value}" if prefix else ""


def from_hd(hd: str, component_sep: str = "^") -> str:
    """A national site read from an HD (MSH-4, MSH-6): HD-2 as a 9-digit FINESS, a 14-digit SIRET
    or a 10-digit IDNST; '' when it holds none."""
    parts = [p.strip() for p in hd.split(component_sep)]
    number = parts[1] if len(parts) > 1 else ""
    if not _DIGITS.match(number):
        return ""
    if len(number) == 9:
        return f"FINESS:{number}"
    if len(number) == 14:
        return f"SIRET:{number}"
    if len(number) in (10, 15):
        return from_idnst(number)
    return ""


def local_site(hd: str, field: str, component_sep: str = "^") -> str:
    """`MSH-4:<name>`: a structure named locally (HD-1, else the whole field)."""
    name = hd.split(component_sep)[0].strip() or hd.strip()
    return f"{field}:{name}" if name else ""


def from_cda_organisations(ids: list[tuple[str, str]]) -> str:
    """The first (root, extension) pair under the ANS structures OID, as a site."""
    for root, extension in ids:
        if root.strip() == STRUCTURES_OID and extension.strip():
            return from_idnst(extension)
    return ""


def sender_site(organisation, msh4: str, cda_organisations, component_sep: str = "^") -> str:
    """The site of a document request (rule in the module docstring). `organisation`: the PRT SB
    XON (engine.docrequest Organisation) or None; `cda_organisations()`: the custodian's then the
    authors' (root, extension) ids, called only when the first two sources give nothing."""
    if organisation is not None:
        site = from_typed_id(organisation.id_type, organisation.id)
        if site:
            return site
    site = from_hd(msh4, component_sep)
    if site:
        return site
    site = from_cda_organisations(cda_organisations())
    if site:
        return site
    return local_site(msh4, "MSH-4", component_sep)


def receiver_site(recipients, msh6: str, component_sep: str = "^") -> str:
    """The site of an LPS message handed to the RIS (a mail of the application mailbox): the
    organisation of a PRT RCT row (the mailbox's structure), else MSH-6."""
    for participant in recipients:
        organisation = participant.organisation
        if organisation is not None:
            site = from_typed_id(organisation.id_type, organisation.id)
            if site:
                return site
    return from_hd(msh6, component_sep) or local_site(msh6, "MSH-6", component_sep)
