"""Does a message match a route's `match:` block?"""

from __future__ import annotations

from engine.config.routes import Match, as_list
from engine.routing.context import MessageContext


def _first(value: str, sep: str) -> str:
    return value.split(sep, 1)[0]


def matches(match: Match, ctx: MessageContext) -> bool:
    h = ctx.header
    comp = h.encoding_chars[0]
    checks = (
        (match.channel, ctx.channel),
        (match.sender, _first(h.sending_app, comp)),
        (match.facility, _first(h.sending_facility, comp)),
        (match.receiver, _first(h.receiving_app, comp)),
        (match.receiver_facility, _first(h.receiving_facility, comp)),
        (match.version, h.version),
    )
    for wanted, actual in checks:
        if wanted is not None and actual not in as_list(wanted):
            return False
    if match.type is not None and not any(_type_ok(t, h) for t in as_list(match.type)):
        return False
    return all(field_matches(ctx, path, wanted) for path, wanted in match.fields.items())


def _type_ok(wanted: str, h) -> bool:
    return wanted == h.message_type or wanted == h.message_code


def field_matches(ctx: MessageContext, path: str, wanted) -> bool:
    """True when any value at `path` is one of `wanted` (`""` matches an empty/absent value)."""
    values = ctx.get_all(path) or [""]
    return any(v in as_list(wanted) for v in values)
