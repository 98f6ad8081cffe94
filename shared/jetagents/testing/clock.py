"""A manual clock for asyncio: time moves only when a test says so (trio's ``MockClock``).

Code under test sleeps on the clock (``await clock.sleep(s)``), never on ``asyncio.sleep``;
each sleeper waits on a heap keyed by its deadline. ``advance(s)`` moves time and wakes the
sleepers it passed, earliest first. ``autojump()`` moves time by itself: whenever every task
is blocked, it jumps straight to the next deadline, so a test of a 45 s timeout takes
milliseconds and is the same every run. A seed makes the order among sleepers due at the same
instant a seeded choice instead of first-come (the runnable events a driver may interleave).

>>> import asyncio
>>> from jetagents.testing import ManualClock
>>> async def main() -> float:
...     clock = ManualClock()
...     async with clock.autojump():
...         await clock.sleep(30.0)
...     return clock.monotonic() - 1000.0
>>> asyncio.run(main())
30.0
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["ManualClock", "wait_all_blocked"]

# A task that never blocks would keep wait_all_blocked from returning: bounded, not forever.
_MAX_YIELDS = 100_000


async def wait_all_blocked(max_yields: int = _MAX_YIELDS) -> None:
    """Return once every other task of the running loop is blocked (waits on a future, a
    sleeper or I/O): nothing else is ready to run.

    Only one task may wait like this at a time (two would each see the other as ready).
    """
    loop = asyncio.get_running_loop()
    # The ready queue is private to asyncio's BaseEventLoop; a loop without it (uvloop) gets
    # a fixed number of turns, which is enough for code that blocks after a few steps.
    ready = getattr(loop, "_ready", None)
    if ready is None:
        for _ in range(64):
            await asyncio.sleep(0)
        return
    for _ in range(max_yields):
        await asyncio.sleep(0)
        if not ready:
            return
    raise RuntimeError(f"tasks still runnable after {max_yields} turns of the loop (a task that never blocks?)")


class ManualClock:
    """A ``Clock`` that moves only when told to, with ``sleep`` on a heap of deadlines.

    Compatible with the earlier ``ManualClock`` (``monotonic``, ``wall_ms``, ``advance``); the
    wall clock moves with the monotonic one.
    """

    def __init__(self, start: float = 1000.0, wall_ms: int = 1_700_000_000_000, *, seed: int | None = None) -> None:
        self._now = start
        self._start = start
        self._wall0 = wall_ms
        self._rnd = random.Random(seed) if seed is not None else None
        self._order = itertools.count()
        # (deadline, tie-break, registration order, future): earliest deadline first
        self._heap: list[tuple[float, float, int, asyncio.Future[None]]] = []
        self._slept: asyncio.Event | None = None  # set when a sleeper arrives (autojump waits on it)

    def monotonic(self) -> float:
        return self._now

    def wall_ms(self) -> int:
        return self._wall0 + int((self._now - self._start) * 1000)

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has moved ``seconds`` on; ``sleep(0)`` (or less) only yields."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tie = self._rnd.random() if self._rnd is not None else 0.0
        heapq.heappush(self._heap, (self._now + seconds, tie, next(self._order), fut))
        if self._slept is not None:
            self._slept.set()
        # Cancelling the task cancels the future; its heap entry is dropped when reached.
        await fut

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set or the clock has moved ``timeout_s`` on; whether it is set."""
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(timeout_s))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        return event.is_set()

    # -- Timers (``_core.clock.Timers``): what an action's time limit runs on -----------------
    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], Any], /) -> asyncio.Future[None]:
        """Call ``callback`` once the clock reaches ``when``: a timer on the heap of sleepers
        (``advance`` and autojump reach it like one). ``cancel()`` on what it returns drops it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tie = self._rnd.random() if self._rnd is not None else 0.0
        heapq.heappush(self._heap, (when, tie, next(self._order), fut))
        fut.add_done_callback(lambda f: None if f.cancelled() else callback())
        if self._slept is not None:
            self._slept.set()
        return fut

    def call_later(self, delay: float, callback: Callable[[], Any], /) -> asyncio.Future[None]:
        return self.call_at(self._now + delay, callback)

    def advance(self, seconds: float) -> int:
        """Move time ``seconds`` on and wake every sleeper whose deadline it reached, earliest
        first (among equal deadlines: seeded, or first come). The woken run at the next turn of
        the loop and all see the new time. The number woken."""
        if seconds < 0:
            raise ValueError(f"time does not go back ({seconds} s)")
        self._now += seconds
        woken = 0
        while self._heap and self._heap[0][0] <= self._now:
            fut = heapq.heappop(self._heap)[3]
            if not fut.done():
                fut.set_result(None)
                woken += 1
        return woken

    def next_deadline(self) -> float | None:
        """When the earliest sleeper is due (``None``: nobody sleeps)."""
        while self._heap and self._heap[0][3].done():
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    @property
    def sleepers(self) -> int:
        return sum(1 for entry in self._heap if not entry[3].done())

    def wake_next(self) -> bool:
        """Jump to the earliest deadline and wake exactly one sleeper due then (the seeded
        choice among those due at that instant). ``False`` when nobody sleeps."""
        deadline = self.next_deadline()
        if deadline is None:
            return False
        self._now = max(self._now, deadline)
        heapq.heappop(self._heap)[3].set_result(None)
        return True

    async def run_until_idle(self, max_jumps: int = _MAX_YIELDS) -> None:
        """Drive the loop: let every task run until blocked, jump to the next deadline, and
        again, until nobody sleeps and nothing can run (one sleeper woken per jump)."""
        for _ in range(max_jumps):
            await wait_all_blocked()
            if not self.wake_next():
                return
        raise RuntimeError(f"still sleepers after {max_jumps} jumps (a task that sleeps in a loop?)")

    @asynccontextmanager
    async def autojump(self) -> AsyncIterator[ManualClock]:
        """While inside, time jumps to the next deadline whenever every task is blocked
        (trio's ``MockClock(autojump_threshold=0)``). Do not ``advance`` by hand meanwhile."""
        self._slept = asyncio.Event()
        jumper = asyncio.create_task(self._jump_forever(self._slept), name="manual-clock-autojump")
        try:
            yield self
        finally:
            self._slept = None
            jumper.cancel()
            await asyncio.wait([jumper])

    async def _jump_forever(self, slept: asyncio.Event) -> None:
        while True:
            await wait_all_blocked()
            deadline = self.next_deadline()
            if deadline is None:
                slept.clear()
                await slept.wait()
                continue
            self.advance(max(0.0, deadline - self._now))
