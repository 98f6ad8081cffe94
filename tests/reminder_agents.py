"""An agent with reminders for the tests of ADR 0042 section 5 (in-process and real processes).

``Alarm.ring`` is what reminders fire: it records the firing (the reminder's name, the
server's next time, the tag it was given) as an event, so the event log, read outside the
host, says how often each reminder fired. ``arm``/``disarm`` set and cancel reminders from
inside an action (journaled steps).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jetagents import Agent, Event, action, applies


class AlarmState(BaseModel):
    rang: int = 0


class Rang(Event):
    reminder: str
    next: str
    tag: str
    missed: int = 0


class Alarm(Agent[AlarmState]):
    type_name = "alarm"
    state_type = AlarmState

    @action
    async def ring(self, tag: str = "", times: int = 1) -> int:
        fired = self.reminder
        name, nxt, missed = (fired.name, fired.next, fired.missed) if fired else ("", "", 0)
        self.emit(Rang(reminder=name, next=nxt, tag=tag, missed=missed))
        return self.state.rang

    @action
    async def arm(
        self, name: str, every: int | None = None, cron: str | None = None, tag: str = "", tz: str | None = None
    ) -> None:
        await self.remind(name, every=every, cron=cron, tz=tz, action="ring", params={"tag": tag or name})

    @action
    async def disarm(self, name: str) -> None:
        await self.cancel_reminder(name)

    @action(read_only=True)
    async def count(self) -> int:
        return self.state.rang

    @applies
    def _rang(self, state: AlarmState, event: Rang) -> None:
        state.rang += 1


AGENTS: list[Any] = [Alarm]
