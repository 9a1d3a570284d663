"""Calendar months in Europe/Paris time: the programme's months start at midnight in Paris, in
summer (UTC+2) as in winter (UTC+1)."""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def month_of(ts: float) -> str:
    """'YYYY-MM' of the Paris calendar month holding the instant `ts` (epoch seconds)."""
    # Paris is a whole number of hours from UTC (+1 or +2), so a Paris month always begins on a
    # whole UTC hour: the month of an instant is the month of its UTC hour, cached (a rebuild
    # reads millions of events; a year is 8,760 hours).
    return _month_of_hour(int(ts // 3600))


@lru_cache(maxsize=65536)
def _month_of_hour(hour: int) -> str:
    return dt.datetime.fromtimestamp(hour * 3600, PARIS).strftime("%Y-%m")


def parse_month(text: str) -> str:
    """`text` checked as YYYY-MM (month 01-12); ValueError saying what is expected otherwise."""
    match = _MONTH.match((text or "").strip())
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise ValueError(f"{text!r} is not a month: expected YYYY-MM, e.g. 2026-01")
    return match.group(0)


def month_start(month: str) -> float:
    """The instant (epoch seconds) the Paris month `month` begins: its 1st at 00:00 in Paris."""
    year, number = (int(part) for part in parse_month(month).split("-"))
    return dt.datetime(year, number, 1, tzinfo=PARIS).timestamp()


def next_month(month: str) -> str:
    year, number = (int(part) for part in parse_month(month).split("-"))
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


def previous_month(month: str) -> str:
    year, number = (int(part) for part in parse_month(month).split("-"))
    return f"{year - 1:04d}-12" if number == 1 else f"{year:04d}-{number - 1:02d}"


def months_between(first: str, last: str) -> list[str]:
    """Every month from `first` to `last`, both included (empty when first > last)."""
    months, month = [], parse_month(first)
    last = parse_month(last)
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months
