"""The `mllp-out` connector: HL7 over MLLP to a RIS, a DRIMbox or a hospital system, the
destination's ACK judged by the channel's reply policy (engine/mllp/sender.py)."""

from __future__ import annotations

import structlog

from engine.config.channels import MllpOutSettings
from engine.connectors.base import Action, Outcome, lane_of, refused

log = structlog.get_logger("engine.connectors.mllp")
_ACTIONS = {action.value: action for action in Action}  # Action(value) is an Enum call per send


class MllpDestination:
    """`parallel_keys` connections; a FIFO key always uses the same one (see lane_of)."""

    def __init__(self, reactor, settings: MllpOutSettings):
        from engine.mllp.sender import MLLPSender

        self.senders = [MLLPSender(reactor, settings) for _ in range(settings.parallel_keys)]
        self.lanes = len(self.senders)
        self.name = settings.name
        self.ipp_repetition = settings.ipp_repetition
        self.content_check = settings.content_check

    async def deliver(self, payload: bytes, delivery) -> Outcome:
        if self.content_check == "drimbox":
            from twisted.internet import threads

            refusal = await threads.deferToThread(drimbox_refusal, payload, bool(self.ipp_repetition))
            if refusal:
                # pfi check cannot know what a report will lack: say it here, without patient data
                log.warning(
                    "delivery.content_refused",
                    message_id=delivery.message_uid,
                    destination=self.name,
                    reason=refusal.reason,
                )
                return refusal
        if self.ipp_repetition:
            from engine.hl7.pid3 import place_ipp

            payload = place_ipp(payload, self.ipp_repetition)
        sent = await self.senders[lane_of(delivery.fifo_key, self.lanes)].send(payload)
        # The sender's reason already says what happened ("AE from destination: ...", "timeout:
        # ..."): no code a creator could look up, so a failure ZAM says DELIVERY_FAILED with it.
        return Outcome(_ACTIONS[sent.action], sent.reason)

    async def close(self) -> None:
        for sender in self.senders:
            await sender.close()


def drimbox_refusal(payload: bytes, need_ipp: bool) -> Outcome | None:
    """Why `payload` must not go to a DRIMbox (None when it may): a coded dead letter."""
    from engine.docrequest.drimbox import missing_for_drimbox
    from engine.docrequest.errors import RequestError
    from engine.hl7.message import Message

    try:
        missing = missing_for_drimbox(Message.parse(payload), need_ipp)
    except RequestError as exc:
        return refused(
            "DOCUMENT_REQUEST_INVALID",
            f"not a document request a DRIMbox can read ({exc.error.app_code or exc.error.code})",
            local=False,
        )
    except Exception as exc:  # an unreadable message or CDA: refused with its kind, never a crash
        return refused("DRIMBOX_DATA_MISSING", f"report unreadable ({type(exc).__name__})", local=False)
    if missing:
        return refused("DRIMBOX_DATA_MISSING", "not sendable to a DRIMbox, missing: " + "; ".join(missing), local=False)
    return None
