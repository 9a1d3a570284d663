"""Organisation certificate expiry: a gauge per channel and structure, and warnings 60 and 15
days ahead (an expired certificate stops every DMP publication of its structure)."""

from __future__ import annotations

import datetime as dt

import structlog

log = structlog.get_logger("pfi.dmp")

#: days before expiry when the engine starts warning, then shouts
WARN_DAYS, URGENT_DAYS = 60, 15


def days_left(not_after: dt.datetime, now: dt.datetime) -> float:
    """Days until `not_after` (negative once expired), to the hundredth."""
    return round((not_after - now).total_seconds() / 86400, 2)


def watch(channel: str, expiry: dict[str, dt.datetime], now: dt.datetime, gauge) -> None:
    """Set `gauge{channel, structure}` and log the certificates that need renewing soon."""
    for structure, not_after in expiry.items():
        left = days_left(not_after, now)
        gauge.labels(channel, structure).set(left)
        if left > WARN_DAYS:
            continue
        fields = dict(channel=channel, structure=structure, days_left=left, not_after=not_after.strftime("%Y-%m-%d"))
        if left < 0:
            log.error("dmp.certificate_expired", **fields)
        elif left <= URGENT_DAYS:
            log.error("dmp.certificate_expiring", **fields)
        else:
            log.warning("dmp.certificate_expiring", **fields)
