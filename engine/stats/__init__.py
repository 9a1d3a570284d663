"""Programme statistics (Ségur SC.STAT): what each journaled outcome counts for, with no SQL.

The counting rules live here, pure and testable; the counters themselves are journal tables kept
in the same transaction as the events that change them (engine/journal/stats.py, an observer of
engine/journal/events.py). docs/statistics.md describes the indicators and their rules.

    facts_for(ctx, registry)          -> MessageFacts | None   (routing: what a message is)
    message_measures(facts)           -> measures of a newly classified message
    event_measures(state, detail, channel_kind, facts) -> measures of one outcome event
    month_of(ts)                      -> 'YYYY-MM' in Europe/Paris
"""

from engine.stats.facts import MessageFacts, facts_for
from engine.stats.months import month_of, month_start, months_between, next_month, parse_month
from engine.stats.outcomes import OUTCOME_STATES, event_measures, identity_change, identity_measures, message_measures

__all__ = [
    "MessageFacts",
    "OUTCOME_STATES",
    "event_measures",
    "facts_for",
    "identity_change",
    "identity_measures",
    "message_measures",
    "month_of",
    "month_start",
    "months_between",
    "next_month",
    "parse_month",
]
