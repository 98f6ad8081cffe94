"""``counter``: increment by N, get."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .._core.agent import Agent, Event, action, applies
from .._core.errors import DomainError


class CounterState(BaseModel):
    value: int = 0


class Incremented(Event):
    by: int


class Counter(Agent[CounterState]):
    type_name = "counter"
    state_type = CounterState

    @action
    async def increment(self, by: int = Field(default=1, ge=-1_000_000_000, le=1_000_000_000)) -> int:
        """Add ``by`` (may be negative) and return the new value."""
        if by == 0:
            raise DomainError("zero_increment", "increment by 0 changes nothing")
        self.emit(Incremented(by=by))
        return self.state.value

    @action(read_only=True)
    async def get(self) -> int:
        return self.state.value

    @applies
    def _incremented(self, state: CounterState, event: Incremented) -> None:
        state.value += event.by
