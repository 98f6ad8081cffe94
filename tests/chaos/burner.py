"""A CPU-hungry agent for the skewed workload (``skew.py``): each ``work`` burns ``ms`` of
the host's CPU (measured with the process clock, so a descheduled host burns no less), then
counts. A hot spot of counters costs a host little CPU on a loaded machine (the clients are
the bottleneck); one of burners costs what the test asks, so the leader sees a real hot host."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from jetagents import Agent, Event, action, applies


class BurnerState(BaseModel):
    n: int = 0


class Worked(Event):
    ms: int


class Burner(Agent[BurnerState]):
    type_name = "burner"
    state_type = BurnerState

    @action
    async def work(self, ms: int = Field(default=1, ge=0, le=50)) -> int:
        # on the event loop on purpose: an asyncio host runs its agents' code on one thread
        until = time.process_time() + ms / 1000
        while time.process_time() < until:
            pass
        self.emit(Worked(ms=ms))
        return self.state.n

    @action(read_only=True)
    async def get(self) -> int:
        return self.state.n

    @applies
    def _worked(self, state: BurnerState, event: Worked) -> None:
        state.n += 1


AGENTS: list[Any] = [Burner]
