"""Retry timing shared by every outbound connector: exponential backoff with jitter.

`attempt` counts delivery attempts already made: after the first failed try, attempt is 1 and
the delay before the second try is `initial`. Jitter spreads the retries of many queues that
failed at the same moment (a destination coming back must not be hit by all of them at once).
"""

from __future__ import annotations

import random

from engine.config.channels import RetrySettings


def backoff_delay(attempt: int, settings: RetrySettings, rng: random.Random | None = None) -> float:
    """Seconds to wait before the next try after `attempt` failed tries (attempt >= 1).

    The base delay is `initial * factor**(attempt-1)` capped at `maximum`; the jitter then adds a
    random share of at most `jitter` of that base (so the longest wait is maximum * (1 + jitter)).
    """
    if attempt < 1:
        raise ValueError(f"attempt counts tries already made, starts at 1 (got {attempt})")
    base = _capped_exponential(attempt, settings)
    share = (rng or random).random() * settings.jitter
    return base + base * share


def _capped_exponential(attempt: int, settings: RetrySettings) -> float:
    if settings.initial <= 0:
        return 0.0
    try:
        grown = settings.initial * settings.factor ** (attempt - 1)
    except OverflowError:  # a queue retrying for weeks: the cap applies long before this
        return settings.maximum
    return min(grown, settings.maximum)


def attempts_exhausted(attempt: int, settings: RetrySettings) -> bool:
    """True when `attempt` tries were made and no more are allowed (max_attempts 0: never)."""
    return settings.max_attempts > 0 and attempt >= settings.max_attempts
