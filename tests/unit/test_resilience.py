"""Retry backoff and the circuit breaker (pure logic, fake clock)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetagents import CircuitBreaker, ManualClock, RetryPolicy
from jetagents._core.retry import BreakerState


# -- RetryPolicy --------------------------------------------------------------------------
def test_retry_policy_defaults() -> None:
    p = RetryPolicy()
    assert (p.attempts, p.base_s, p.max_s) == (4, 0.05, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.attempts = 5  # type: ignore[misc]


def test_cap_doubles_then_hits_the_ceiling() -> None:
    p = RetryPolicy(attempts=10, base_s=0.1, max_s=1.0)
    assert [p.cap(k) for k in range(3)] == [0.1, 0.2, 0.4]
    assert p.cap(3) == pytest.approx(0.8)
    assert [p.cap(k) for k in range(4, 10)] == [1.0] * 6


def test_cap_with_default_policy() -> None:
    p = RetryPolicy()
    assert [p.cap(k) for k in range(7)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0])


@settings(max_examples=150, deadline=None)
@given(
    base=st.floats(min_value=0.001, max_value=5.0),
    ceiling=st.floats(min_value=0.001, max_value=60.0),
    k=st.integers(min_value=0, max_value=200),
)
def test_cap_is_monotone_and_bounded(base: float, ceiling: float, k: int) -> None:
    p = RetryPolicy(attempts=k + 2, base_s=base, max_s=ceiling)
    assert 0 < p.cap(k) <= ceiling
    assert p.cap(k) <= p.cap(k + 1)
    assert p.cap(k) == min(ceiling, base * 2**k)


@pytest.mark.parametrize("k", [60, 1023, 1024, 5000])
def test_cap_ceiling_holds_for_any_retry_index(k: int) -> None:
    # the documented cap is min(max_s, base_s * 2**k): it never exceeds max_s and never fails
    assert RetryPolicy().cap(k) == 2.0


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    k=st.integers(min_value=0, max_value=100),
    base=st.floats(min_value=0.001, max_value=1.0),
    ceiling=st.floats(min_value=0.001, max_value=30.0),
)
def test_delay_is_within_zero_and_cap(seed: int, k: int, base: float, ceiling: float) -> None:
    p = RetryPolicy(base_s=base, max_s=ceiling)
    rng = random.Random(seed)
    for _ in range(5):
        d = p.delay(k, rng)
        assert 0.0 <= d <= p.cap(k)


def test_delay_is_reproducible_with_a_seeded_rng() -> None:
    p = RetryPolicy()
    a = [p.delay(k, random.Random(7)) for k in range(6)]
    b = [p.delay(k, random.Random(7)) for k in range(6)]
    assert a == b
    assert a[0] == random.Random(7).uniform(0.0, 0.05)


def test_delay_has_full_jitter() -> None:
    # full jitter: the delays spread over the whole [0, cap] range, not a narrow band
    p = RetryPolicy(base_s=1.0, max_s=1.0)
    rng = random.Random(1234)
    delays = [p.delay(0, rng) for _ in range(2000)]
    assert min(delays) < 0.05
    assert max(delays) > 0.95
    assert 0.45 < sum(delays) / len(delays) < 0.55


def test_delay_without_rng_uses_the_module_random() -> None:
    p = RetryPolicy(base_s=0.5, max_s=0.5)
    for _ in range(50):
        assert 0.0 <= p.delay(3) <= 0.5


# -- CircuitBreaker -----------------------------------------------------------------------
def breaker(failures: int = 3, reset_s: float = 5.0) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock()
    return CircuitBreaker(failures=failures, reset_s=reset_s, clock=clock), clock


def test_breaker_starts_closed() -> None:
    b, _ = breaker()
    assert b.state is BreakerState.CLOSED
    assert all(b.allow() for _ in range(10))


def test_breaker_opens_after_n_consecutive_failures() -> None:
    b, clock = breaker(failures=3)
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    clock.advance(4.999)
    assert b.state is BreakerState.OPEN
    assert not any(b.allow() for _ in range(5))


def test_breaker_half_open_after_reset_allows_exactly_one_probe() -> None:
    b, clock = breaker(failures=2, reset_s=5.0)
    b.record_failure()
    b.record_failure()
    clock.advance(5.0)
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() is True  # the probe
    assert b.allow() is False
    assert b.allow() is False
    clock.advance(100)
    assert b.allow() is False  # still waiting for the probe's outcome


def test_probe_success_closes() -> None:
    b, clock = breaker(failures=2)
    b.record_failure()
    b.record_failure()
    clock.advance(5)
    assert b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert all(b.allow() for _ in range(5))
    # and it takes a full run of failures to open again
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_failure()
    assert b.state is BreakerState.OPEN


def test_probe_failure_reopens_for_another_reset_period() -> None:
    b, clock = breaker(failures=2, reset_s=5)
    b.record_failure()
    b.record_failure()
    clock.advance(5)
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    clock.advance(4.9)
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    clock.advance(0.1)
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # a new probe after the new reset period
    assert not b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED


def test_success_resets_the_consecutive_count() -> None:
    b, _ = breaker(failures=3)
    for _ in range(5):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_failure()
    assert b.state is BreakerState.OPEN


def test_breaker_with_threshold_one() -> None:
    b, _ = breaker(failures=1)
    b.record_failure()
    assert not b.allow()


def test_breaker_docstring_example() -> None:
    b = CircuitBreaker(failures=2, reset_s=5, clock=ManualClock())
    b.record_failure()
    b.record_failure()
    assert b.allow() is False


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=60), st.integers(min_value=1, max_value=6))
def test_breaker_opens_exactly_at_a_run_of_failures(outcomes: list[bool], threshold: int) -> None:
    """With the clock standing still, the breaker is closed until the first run of
    ``threshold`` consecutive failures, and open (refusing everything) after it."""
    b, _ = breaker(failures=threshold)
    run = 0
    opened = False
    for ok in outcomes:
        assert b.allow() is (not opened)
        if opened:
            continue
        if ok:
            b.record_success()
            run = 0
        else:
            b.record_failure()
            run += 1
            opened = run >= threshold
        assert (b.state is BreakerState.OPEN) is opened
