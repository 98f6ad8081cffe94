"""The agent of ``bench_patterns.py``: counts what it handles, one commit per message or
command, so a fan-out delivery and a plain send cost the host the same work."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jetagents import Agent, Event, Message, action, applies


class TallyState(BaseModel):
    count: int = 0


class Counted(Event):
    n: int


class Tally(Agent[TallyState]):
    type_name = "tally"
    state_type = TallyState

    @action
    async def on_message(self, msg: Message) -> int:
        self.emit(Counted(n=int(msg.data["n"])))
        return self.state.count

    @action
    async def bump(self, n: int) -> int:
        self.emit(Counted(n=n))
        return self.state.count

    @action
    async def ingest(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A document in, the same document back (the compression cell: both ways large)."""
        self.emit(Counted(n=len(doc.get("rows", ()))))
        return doc

    @action(read_only=True)
    async def count(self) -> int:
        return self.state.count

    @applies
    def _counted(self, state: TallyState, event: Counted) -> None:
        state.count += 1


AGENTS = [Tally]
