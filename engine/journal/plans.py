"""What routing hands the journal to write in one transaction: a message's new state, its events,
the deliveries it queues (engine/journal/deliveries.py applies them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NewDelivery:
    route: str
    step: str
    destination: str
    fifo_key: str
    not_before: float
    payload: bytes | None  # None: the message as received
    doc_id: str = ""
    action: str = ""
    replaced_id: str = ""


@dataclass
class Plan:
    message_uid: str
    state: str = "routed"  # routed | unrouted | filtered | held | invalid
    events: list[tuple[str, str]] = field(default_factory=list)  # (state, detail)
    deliveries: list[NewDelivery] = field(default_factory=list)
    patient_updates: list[bytes] = field(default_factory=list)
    zams: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, channel, route)
    #: a PAM.fr update qualified this patient: its INS and IPP values (its identity holds retry)
    qualified_identity: tuple[str, ...] = ()
    qualified_by: str = ""  # the update, as the release event names it (type and MSH-10, no patient data)
