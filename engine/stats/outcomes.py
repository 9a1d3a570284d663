"""Which journaled outcome counts for which measure: pure rules, shared by the counting done in
each transaction and by `pfi stats rebuild`.

Measures are the rows of the counters table (per month, site and document type); the indicators
of docs/statistics.md are sums and ratios of them (engine/stats/report.py).
"""

from __future__ import annotations

import re

from engine.stats.facts import DEST_DMP, DEST_PATIENT, DEST_PS, INVISIBLE_PATIENT, LPS, REPORT, MessageFacts

#: event states that end a delivery: the only ones that count (a retry or a hold is not an outcome)
OUTCOME_STATES = frozenset({"sent", "dead-letter", "cancelled"})

#: the DMP error codes meaning "this patient has no DMP". The DMP's own codes (annex A7-1 of the
#: SESAM-Vitale "Service DMP intégré aux LPS") are not in our sources: the IHE XDS code of an
#: unknown patient is what the DMP and the simulator answer; the others are refusals (`failed`).
NO_DMP_CODES = frozenset({"XDSUnknownPatientId"})

_DELIVERY_PREFIX = re.compile(r"^delivery \d+: ")
_GAVE_UP = re.compile(r"^gave up after \d+ attempts: ")
_AUDIENCE = re.compile(r"(professionals|patient): (\d+) accepted, (\d+) refused, (\d+) not sent")
_ACK = re.compile(r"\b(AA|AE|AR|CA|CE|CR) from destination\b")
_AUDIENCE_MEASURE = {"professionals": "mss_ps", "patient": "mss_patient"}


def message_measures(facts: MessageFacts) -> list[str]:
    """Measures of a message the statistics see for the first time (counted in its month of
    receipt): the reports received, and what their creator asked for."""
    if facts.kind != REPORT:
        return []
    asked = [("dmp_requested", DEST_DMP), ("mss_ps_requested", DEST_PS), ("mss_patient_requested", DEST_PATIENT)]
    return ["received"] + [measure for measure, flag in asked if facts.has(flag)]


def identity_measures(identity: str, consultation: str, feeding: str) -> set[str]:
    """What one distinct identity counts for in its cell (month, site, document type)."""
    measures = {"identities", f"identity_{identity}"}
    if consultation == "IC":
        measures.add("consent_consultation")
    if feeding == "INO":
        measures.add("non_opposition_feeding")
    return measures


def identity_change(old: tuple[str, str, str] | None, new: tuple[str, str, str]) -> dict[str, int]:
    """Counter changes when an identity seen in a cell is seen again with (identity, consultation,
    feeding) `new` (`old`: what the cell knew of it, None the first time): each identity counts
    once, with what was last known of it in the month."""
    before = identity_measures(*old) if old else set()
    after = identity_measures(*new)
    return {**{m: 1 for m in after - before}, **{m: -1 for m in before - after}}


def event_measures(state: str, detail: str, channel_kind: str, facts: MessageFacts) -> list[str]:
    """Measures of one outcome event (`state` in OUTCOME_STATES) of a delivery to a channel of
    type `channel_kind` (dmp, mssante, mllp-out…), for a message with these facts."""
    if facts.kind == LPS:
        return _integration(state, detail)
    if facts.kind != REPORT:
        return []
    if channel_kind == "dmp":
        return _dmp(state, detail, facts)
    if channel_kind == "mssante":
        return _mssante(state, detail, facts)
    return []


def _dmp(state: str, detail: str, facts: MessageFacts) -> list[str]:
    if state == "sent":
        return ["dmp_ok_invisible" if facts.has(INVISIBLE_PATIENT) else "dmp_ok"]
    if state == "dead-letter":
        return ["dmp_no_dmp" if outcome_code(detail) in NO_DMP_CODES else "dmp_failed"]
    return ["dmp_not_sent"]  # cancelled: withdrawn, superseded or cancelled by an operator


def _mssante(state: str, detail: str, facts: MessageFacts) -> list[str]:
    audiences = audience_summary(detail)
    if audiences:  # the connector said what became of each mail
        return [f"{_AUDIENCE_MEASURE[name]}_{verdict}" for name, verdict in audiences.items()]
    if state == "sent":  # a send that mailed nothing (deferred until the DMP, or already mailed)
        return []
    verdict = "failed" if state == "dead-letter" else "not_sent"
    asked = (("mss_ps", DEST_PS), ("mss_patient", DEST_PATIENT))
    return [f"{measure}_{verdict}" for measure, flag in asked if facts.has(flag)]


def _integration(state: str, detail: str) -> list[str]:
    """An LPS document handed to the RIS: integrated when the RIS answered AA (or CA)."""
    if state == "sent":
        match = _ACK.search(detail)
        return ["mss_in_integrated" if match and match.group(1) in ("AA", "CA") else "mss_in_failed"]
    if state == "dead-letter":
        return ["mss_in_failed"]
    return []


def outcome_code(detail: str) -> str:
    """The code of a dead-letter detail: `delivery 12: [gave up after 3 attempts: ][PFI:]CODE: label`
    (engine/connectors/base.py Outcome.reason) -> CODE."""
    text = _GAVE_UP.sub("", _DELIVERY_PREFIX.sub("", detail or ""))
    if text.startswith("PFI:"):
        text = text[4:]
    return text.split(":", 1)[0].strip()


def audience_summary(detail: str) -> dict[str, str]:
    """{'professionals' | 'patient': 'sent' | 'failed' | 'not_sent'} from the MSSanté connector's
    outcome (engine/connectors/mssante.py audience_summary): a mail accepted by the server for one
    recipient at least is sent; refused by the server, failed; never submitted (a PFI rule), not sent."""
    verdicts = {}
    for name, accepted, refused, not_sent in _AUDIENCE.findall(detail or ""):
        if int(accepted):
            verdicts[name] = "sent"
        elif int(refused):
            verdicts[name] = "failed"
        elif int(not_sent):
            verdicts[name] = "not_sent"
    return verdicts
