"""The ``Schedules`` port (``jetagents._host.ports``) in memory, on a ``ManualClock``: the
server's message schedules as far as the host uses them (ADR 0042 sections 3 and 5), checked
against nats-server 2.15 by ``tests/integration/test_server_features.py``:

* ``@at <RFC 3339>`` fires once, at its time or at once if past, then the schedule is gone;
  ``@every <n>s`` fires every ``n`` s and stays; a firing missed while nothing fired (the
  clock jumped, as over a server outage) is merged into one (the server's skip-ahead);
* a firing goes to the schedule's target with the schedule's headers (``Nats-*`` stripped)
  plus ``Nats-Scheduler`` (the schedule's subject) and ``Nats-Schedule-Next`` (the next time,
  RFC 3339 whole seconds, or ``purge`` after an ``@at``);
* publishing on a subject replaces its schedule (rollup); ``Nats-Msg-Id`` deduplicates a
  publish within the duplicate window; ``cancel`` removes it.

Cron patterns are not modelled (``Unavailable``). Nothing fires by itself: the driver calls
``fire_due()``, which hands each due firing to ``deliver(target, body, headers)``.

>>> from jetagents.testing import ManualClock
>>> from jetagents._core.schedules import pattern_of
>>> import asyncio
>>> clock = ManualClock()
>>> fired = []
>>> sch = MemorySchedules(clock, lambda t, b, h: fired.append((t, b, h["Nats-Scheduler"])))
>>> _ = asyncio.run(sch.schedule("agt.rem.t.a.r", pattern_of(every=2), "agt.cmd.t.a", b"{}"))
>>> _ = clock.advance(4.5)
>>> sch.fire_due()  # due at 2 s and 4 s, fired once (no one fired in between: merged)
1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._core.clock import Clock
from .._core.errors import Unavailable
from .._core.schedules import H_SCHEDULE_NEXT, H_SCHEDULER, Pattern, at_ms_of, every_s_of, format_next, user_headers
from .._host.ports import Appended, Schedule, Schedules
from .streams import subject_matches

__all__ = ["MemorySchedules"]

Deliver = Callable[[str, bytes, dict[str, str]], Any]


@dataclass(slots=True)
class _Held:
    schedule: Schedule
    due_ms: int
    every_ms: int | None  # None: one-shot


class MemorySchedules(Schedules):
    """Schedules held in memory; ``fire_due()`` fires what the clock has reached."""

    def __init__(self, clock: Clock, deliver: Deliver, *, duplicate_window_s: float = 120.0) -> None:
        self.clock = clock
        self.deliver = deliver
        self.duplicate_window_s = duplicate_window_s
        self._held: dict[str, _Held] = {}
        self._ids: dict[str, tuple[int, float]] = {}  # msg id -> (seq, when)
        self._seq = 0
        self.fired = 0

    async def schedule(
        self,
        subject: str,
        pattern: Pattern,
        target: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> Appended:
        now = self.clock.monotonic()
        self._ids = {k: v for k, v in self._ids.items() if now - v[1] < self.duplicate_window_s}
        if msg_id and msg_id in self._ids:
            return Appended(self._ids[msg_id][0], True)
        hdrs = user_headers(dict(headers or {}))
        wall = self.clock.wall_ms()
        text = pattern.schedule
        due, every_s = at_ms_of(text), every_s_of(text)
        every = None if every_s is None else every_s * 1000
        if every is not None:
            due = (wall // 1000) * 1000 + every  # anchored on whole seconds, as the server
        elif due is None:
            raise Unavailable(f"the memory schedules model @at and @every only, not {text!r}")
        self._seq += 1
        self._held[subject] = _Held(Schedule(subject, text, target, body, hdrs, self._seq, pattern.tz), due, every)
        if msg_id:
            self._ids[msg_id] = (self._seq, now)
        return Appended(self._seq, False)

    async def cancel(self, subject: str) -> None:
        self._held.pop(subject, None)

    async def get(self, subject: str) -> Schedule | None:
        held = self._held.get(subject)
        return held.schedule if held else None

    async def list(self, subject_filter: str) -> list[Schedule]:
        return [h.schedule for s, h in sorted(self._held.items()) if subject_matches(subject_filter, s)]

    def fire_due(self) -> int:
        """Fire every schedule the clock has reached, in due order; how many fired."""
        now = self.clock.wall_ms()
        due = sorted((h.due_ms, s) for s, h in self._held.items() if h.due_ms <= now)
        for _, subject in due:
            held = self._held[subject]
            sch = held.schedule
            if held.every_ms is None:
                del self._held[subject]
                nxt = "purge"
            else:
                # the missed ones are merged into this firing (the server's skip-ahead)
                while held.due_ms <= now:
                    held.due_ms += held.every_ms
                nxt = format_next(held.due_ms)
            headers = {**sch.headers, H_SCHEDULER: subject, H_SCHEDULE_NEXT: nxt}
            self.fired += 1
            self.deliver(sch.target, sch.body, headers)
        return len(due)
