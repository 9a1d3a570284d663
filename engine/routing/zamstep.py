"""The `zam` step: a business ack back to the creator, built from a delivery's outcome."""

from __future__ import annotations

from datetime import datetime

from engine.ids import new_id
from engine.routing.context import MessageContext
from engine.routing.plan import NewDelivery


def build_zam_delivery(zam, error: tuple[str, str, bool] | None, ctx: MessageContext, now: float) -> NewDelivery | None:
    """A queued ZAM for the creator, or None when it did not ask for one (ACK_RECEPTION=N).
    `error` is None for a success, else (code, label, local): `local` codes are the PFI's own
    (ZAM ERR-5 coding system 99PFI), the others the remote side's (DMP, SMTP)."""
    from engine.docrequest.zam import build_zam, wants_zam

    kind, channel, route = zam
    request = ctx.document_request
    if request is None or not wants_zam(request, kind):
        return None
    code, label, local = error or (None, None, False)
    payload = build_zam(
        kind,
        request.header,
        error is None,
        control_id=new_id(now)[-20:],
        now=datetime.fromtimestamp(now),
        error_code=code,
        error_label=label,
        local_error=local,
    )
    return NewDelivery(
        route=route,
        step=f"zam-{kind}",
        destination=channel,
        fifo_key=request.header.sending_application,
        not_before=now,
        payload=payload,
    )
