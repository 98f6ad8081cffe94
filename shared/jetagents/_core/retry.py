"""Retry with exponential backoff and full jitter, and a circuit breaker (pure logic)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import StrEnum

from .clock import Clock, SystemClock


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` tries in all; the delay before try k+1 is uniform in
    ``[0, min(max_s, base_s * 2**k)]`` (full jitter, so many clients do not retry in step).

    >>> p = RetryPolicy(attempts=3, base_s=0.1, max_s=1.0)
    >>> [p.cap(k) for k in range(3)]
    [0.1, 0.2, 0.4]

    ``linear`` grows the cap by ``base_s`` per retry instead of doubling it, and without
    ``jitter`` the delay is the cap itself (a probe that waits longer after each failure):

    >>> probe = RetryPolicy(base_s=0.5, max_s=2.0, linear=True, jitter=False)
    >>> [probe.delay(k) for k in range(5)]
    [0.5, 1.0, 1.5, 2.0, 2.0]
    """

    attempts: int = 4
    base_s: float = 0.05
    max_s: float = 2.0
    linear: bool = False
    jitter: bool = True

    def cap(self, retry_index: int) -> float:
        if self.linear:
            return min(self.max_s, self.base_s * (retry_index + 1))
        return min(self.max_s, math.ldexp(self.base_s, min(retry_index, 1024)))

    def delay(self, retry_index: int, rng: random.Random | None = None) -> float:
        if not self.jitter:
            return self.cap(retry_index)
        return (rng or random).uniform(0.0, self.cap(retry_index))

    def next_delay(
        self,
        retry_index: int,
        remaining_s: float,
        *,
        min_attempt_s: float = 0.0,
        limit_attempts: bool = True,
        rng: random.Random | None = None,
    ) -> float | None:
        """The delay before the next try after failed try ``retry_index`` (0: the first),
        or None when there is none: ``attempts`` are used up (unless ``limit_attempts`` is
        False: the failure proves re-sending is safe, so only time limits it), or the delay
        and ``min_attempt_s`` (the least time a try needs to be answered) do not fit in
        the ``remaining_s`` before the caller's deadline.

        >>> p = RetryPolicy(attempts=2, base_s=0.1, max_s=1.0)
        >>> p.next_delay(1, remaining_s=10.0) is None  # both tries made
        True
        >>> 0.0 <= p.next_delay(5, remaining_s=10.0, limit_attempts=False) <= 1.0
        True
        >>> p.next_delay(0, remaining_s=0.2, min_attempt_s=0.25) is None  # no time for one more
        True
        """
        if limit_attempts and retry_index + 1 >= self.attempts:
            return None
        delay = self.delay(retry_index, rng)
        if delay + min_attempt_s >= remaining_s:
            return None
        return delay


QUIET_POLL = RetryPolicy(base_s=0.02, max_s=1.0, jitter=False)
"""How a reader of a stream that has gone quiet asks again (a streamed output, an event
tail): soon after the last message, then less often, back to soon when one arrives.

>>> [QUIET_POLL.delay(k) for k in (0, 1, 5, 6, 50)]
[0.02, 0.04, 0.64, 1.0, 1.0]
"""


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after ``failures`` consecutive failures, lets one probe through after
    ``reset_s``, closes again on a success.

    >>> from jetagents.testing import ManualClock
    >>> b = CircuitBreaker(failures=2, reset_s=5, clock=ManualClock())
    >>> b.record_failure(); b.record_failure(); b.allow()
    False
    """

    failures: int = 20
    reset_s: float = 5.0
    clock: Clock = field(default_factory=SystemClock)
    _consecutive: int = 0
    _opened_at: float | None = None
    _probe_out: bool = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self.clock.monotonic() - self._opened_at >= self.reset_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def release(self) -> None:
        """The call ended with neither a success nor an infrastructure failure (a domain
        error, bad input, cancellation): free the half-open probe slot."""
        self._probe_out = False

    def record_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probe_out = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._opened_at is not None:
            self._opened_at = self.clock.monotonic()  # a failed probe re-opens
            self._probe_out = False
        elif self._consecutive >= self.failures:
            self._opened_at = self.clock.monotonic()
