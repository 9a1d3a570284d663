"""backoff_delay and attempts_exhausted with a seeded random generator."""

from __future__ import annotations

import random

import pytest

from engine.config.channels import RetrySettings
from engine.retry import attempts_exhausted, backoff_delay


def test_exponential_then_capped_without_jitter():
    settings = RetrySettings(initial=1, factor=2, maximum=10, jitter=0)
    assert [backoff_delay(n, settings) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]


def test_durations_as_text_are_accepted():
    settings = RetrySettings(initial="500ms", factor=3, maximum="1m", jitter=0)
    assert [backoff_delay(n, settings) for n in (1, 2, 3, 5, 6)] == [0.5, 1.5, 4.5, 40.5, 60]


def test_jitter_adds_a_random_share_up_to_jitter():
    settings = RetrySettings(initial=2, factor=2, maximum=100, jitter=0.5)
    first_draw = random.Random(42).random()  # 0.6394...
    delays = [backoff_delay(n, settings, random.Random(42)) for n in (1, 2, 3)]
    assert delays == [pytest.approx(base * (1 + 0.5 * first_draw)) for base in (2, 4, 8)]
    assert delays[0] == pytest.approx(2.6394267984578837)
    rng = random.Random(7)
    spread = [backoff_delay(4, settings, rng) for _ in range(200)]
    assert all(16 <= d <= 24 for d in spread) and len(set(spread)) == 200


def test_jitter_applies_on_top_of_the_cap():
    settings = RetrySettings(initial=1, factor=2, maximum=10, jitter=0.2)
    delays = [backoff_delay(30, settings, random.Random(seed)) for seed in range(50)]
    assert min(delays) >= 10 and max(delays) <= 12


def test_huge_attempt_numbers_do_not_overflow():
    settings = RetrySettings(initial=1, factor=10, maximum=300, jitter=0)
    assert backoff_delay(100_000, settings) == 300


def test_attempt_counts_from_one():
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_delay(0, RetrySettings())


def test_attempts_exhausted():
    assert not attempts_exhausted(10**6, RetrySettings(max_attempts=0))
    limited = RetrySettings(max_attempts=3)
    assert [attempts_exhausted(n, limited) for n in (1, 2, 3, 4)] == [False, False, True, True]
