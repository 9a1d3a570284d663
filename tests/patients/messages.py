"""Build PAM.fr ADT test messages in the layout of the ANS examples (fictional patients only)."""

from __future__ import annotations

TEST_INS = "279035121518989"  # the ANS test patient PAT-TROIS (test INS-NIR OID)
OTHER_INS = "180017512345660"  # fictional, valid key
INS_OID = "1.2.250.1.213.1.4.10"


def adt(
    event: str = "A01",
    control: str = "1",
    ipp: str = "900001",
    ins: str | None = TEST_INS,
    status: str = "VALI",
    feeding: str = "INO",
    feeding_date: str = "20240306111154",
    consult: str = "IC",
    consult_date: str = "20240306111154",
    zfa: bool = True,
    mrg_ipp: str | None = None,
    msh7: str = "20240306111154",
) -> bytes:
    """An ADT message (LF separators, like the corpus) for a fictional patient of CHU-X."""
    ids = f"{ipp}^^^CHU-X&000897406&N^PI"
    if ins:
        ids += f"~{ins}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS"
    structure = {"A40": "ADT_A39", "A47": "ADT_A30"}.get(event, "ADT_A01")
    lines = [
        f"MSH|^~\\&|GAM|CHU-X|PFI|CHU-X|{msh7}||ADT^{event}^{structure}|{control}|P|2.5^FRA^2.11|||||"
        "FRA|UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM",
        f"EVN||{msh7}",
        f"PID|1||{ids}||FICTIF^CAMILLE^CAMILLE^^^^L||19800101|F" + "|" * 24 + status,
    ]
    if mrg_ipp:
        lines.append(f"MRG|{mrg_ipp}^^^CHU-X&000897406&N^PI")
    else:
        lines.append("PV1|1|I")
    if zfa:
        lines.append(f"ZFA|ACTIF|{msh7}|||||||{feeding}|{feeding_date}|{consult}|{consult_date}")
    return ("\n".join(lines) + "\n").encode("utf-8")
