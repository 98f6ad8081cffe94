"""An agent with durable steps for the tests of ADR 0042 (in-process and real processes).

``Job.run`` runs its steps in order; each step's function publishes an ``enter`` record,
waits while the test holds its gate, does its effect (a record on ``stepfx.<run>.<name>``
carrying the step's idempotency key, stored in the test's own stream, outside the host), waits
again, and returns the key. The records say how often each step ran and with which key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from jetagents import Agent, Event, action, applies, step_key

FX_STREAM = "STEPFX"
FX_SUBJECTS = "stepfx.>"


class JobState(BaseModel):
    finished: list[str] = []


class Finished(Event):
    run: str


async def _gate(path: Path) -> None:
    while path.exists():  # the test holds the step here while the file exists
        await asyncio.sleep(0.02)


class Job(Agent[JobState]):
    type_name = "job"
    state_type = JobState
    action_timeout_s = 120.0
    # in-process tests only: another step order (a code change), a step that fails once
    ORDER: ClassVar[list[str] | None] = None
    FAIL_ONCE: ClassVar[set[str]] = set()

    @action
    async def run(self, run: str, gates: str = "", steps: int = 5) -> list[str]:
        names = type(self).ORDER or [f"s{k}" for k in range(steps)]
        keys = [await self.step(name, self._effect, run, name, gates) for name in names]
        self.emit(Finished(run=run))
        return keys

    async def _effect(self, run: str, name: str, gates: str) -> str:
        js = self.ctx.client.nc.jetstream()
        key = step_key()
        await js.publish(f"stepfx.{run}.{name}.enter", key.encode())
        if gates:
            await _gate(Path(gates) / f"pre-{name}")
        if name in type(self).FAIL_ONCE:
            type(self).FAIL_ONCE.discard(name)
            raise RuntimeError(f"step {name} fails (the test says so)")
        await js.publish(f"stepfx.{run}.{name}.done", key.encode())
        if gates:
            await _gate(Path(gates) / f"post-{name}")
        return key

    @action
    async def relay(self, run: str, counter: str) -> list[Any]:
        """Two calls to a counter around a step that fails once: the retry replays both."""
        first = await self.call("counter", counter, "increment", {"by": 1}, timeout=10)
        await self.step("between", self._effect, run, "between", "")
        second = await self.call("counter", counter, "increment", {"by": 10}, timeout=10)
        return [first, second]

    @action(read_only=True)
    async def finished(self) -> list[str]:
        return self.state.finished

    @applies
    def _finished(self, state: JobState, event: Finished) -> None:
        state.finished.append(event.run)


AGENTS: list[Any] = [Job]
