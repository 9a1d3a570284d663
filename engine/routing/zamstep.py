"""The `zam` step: a business ack back to the creator, built from a delivery's outcome."""

from __future__ import annotations

import re
from datetime import datetime

from engine.ids import new_id
from engine.routing.context import MessageContext
from engine.routing.plan import NewDelivery


GAVE_UP = re.compile(r"^(gave up after \d+ attempts): (.*)$", re.S)


def split_error(detail: str) -> tuple[str, str]:
    """Connectors report `CODE: label` when the remote side gave a code (DMP, SMTP). The queue
    prefixes exhausted retries with `gave up after N attempts: `; the code is still the last one."""
    gave_up = GAVE_UP.match(detail)
    if gave_up:
        code, label = split_error(gave_up.group(2))
        return code, f"{label} ({gave_up.group(1)})"
    code, sep, label = detail.partition(": ")
    if sep and code and " " not in code:
        return code, label
    return "DELIVERY_FAILED", detail[:200]


LOCAL_PREFIX = "PFI:"  # engine.connectors: a refusal by the PFI's own checks, not the remote side


def build_zam_delivery(zam, success: bool, detail: str, ctx: MessageContext, now: float) -> NewDelivery | None:
    """A queued ZAM for the creator, or None when it did not ask for one (ACK_RECEPTION=N)."""
    from engine.zam import build_zam, wants_zam

    kind, channel, route = zam
    request = ctx.document_request
    if request is None or not wants_zam(request, kind):
        return None
    code, label = (None, None) if success else split_error(detail)
    local = code is not None and (code.startswith(LOCAL_PREFIX) or code == "DELIVERY_FAILED")
    if local:
        code = code.removeprefix(LOCAL_PREFIX)
    payload = build_zam(kind, request.header, success, control_id=new_id(now)[-20:],
                        now=datetime.fromtimestamp(now), error_code=code, error_label=label,
                        local_error=local)
    return NewDelivery(route=route, step=f"zam-{kind}", destination=channel,
                       fifo_key=request.header.sending_application, not_before=now, payload=payload)
