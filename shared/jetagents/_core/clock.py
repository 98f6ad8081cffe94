"""Time is injected: the core asks a ``Clock`` (and sleeps on it), tests pass a fake one
(``jetagents.testing.ManualClock``)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall_ms(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    __slots__ = ()

    # the C function itself: read several times per command, a Python frame around it costs more than it does
    monotonic = staticmethod(time.monotonic)

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
