"""Time is injected: the core asks a ``Clock`` (and sleeps on it), tests pass a fake one
(``jetagents.testing.ManualClock``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall_ms(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set or ``timeout_s`` has passed on this clock; whether it is set."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


class Timers(Protocol):
    """What an action's time limit needs (``_host/deadline.py``): a clock and timers on it. An
    asyncio event loop is one (production); ``jetagents.testing.ManualClock`` is another (the
    simulation), so the time limits of simulated actions run on the simulation's time."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], Any], /) -> Cancellable: ...

    def call_later(self, delay: float, callback: Callable[[], Any], /) -> Cancellable: ...


class SystemClock:
    __slots__ = ()

    # the C function itself: read several times per command, a Python frame around it costs more than it does
    monotonic = staticmethod(time.monotonic)

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()
        return event.is_set()
