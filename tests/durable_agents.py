"""An agent with durable steps for the tests of ADR 0042 (in-process and real processes).

``Job.run`` runs its steps in order; each step's function publishes an ``enter`` record,
waits while the test holds its gate, does its effect (a record on ``stepfx.<run>.<name>``
carrying the step's idempotency key, stored in the test's own stream, outside the host), waits
again, and returns the key. The records say how often each step ran and with which key.
While a ``pre-end`` gate is held, the action publishes ``end.enter`` after its last step and
waits there, before its closing commit.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from jetagents import Agent, DomainError, Event, action, applies, step_key

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
        end = Path(gates) / "pre-end" if gates else None
        if end is not None and end.exists():  # all steps journaled, the closing commit not made
            await self.ctx.client.nc.jetstream().publish(f"stepfx.{run}.end.enter", b"")
            await _gate(end)
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


class FlowState(BaseModel):
    approved: list[str] = []
    bumps: int = 0


class Approved(Event):
    run: str
    by: Any = None


class Bumped(Event):
    by: int


class Flow(Agent[FlowState]):
    """An action that waits for a person (ADR 0042 §3): a step, a wait, a step. Its steps
    record their effects on ``stepfx.<run>.<name>`` (outside the host). ``bump`` is a plain
    write, ``count`` a read: what other commands do while ``approve_flow`` is suspended
    (enqueue, this type's default; ``guarded``: reject; ``urgent``: interrupt)."""

    type_name = "flow"
    state_type = FlowState
    action_timeout_s = 60.0

    @action
    async def approve_flow(self, run: str, timeout_s: float | None = None, gates: str = "") -> dict[str, Any]:
        await self.step("prepare", self._effect, run, "prepare", gates)
        try:
            payload = await self.wait_for("approve", timeout_s=timeout_s)
        except DomainError as err:
            if err.reason != "wait_timeout":
                raise
            payload = "timed out"
        await self.step("finish", self._effect, run, "finish", gates)
        self.emit(Approved(run=run, by=payload))
        return {"run": run, "payload": payload}

    @action(while_suspended="reject")
    async def guarded(self, run: str) -> Any:
        return await self.wait_for("approve")

    @action(while_suspended="interrupt")
    async def urgent(self, run: str) -> Any:
        return await self.wait_for("approve")

    @action
    async def chatty(self, run: str) -> str:
        """Streams around a wait: its reader sees both chunks and then the result."""
        await self.stream(f"{run}: asked")
        answer = await self.wait_for("approve")
        await self.stream(f"{run}: got {answer}")
        return f"{run} done"

    @action
    async def nap(self, seconds: float) -> str:
        await self.sleep(seconds)
        return "rested"

    @action
    async def slow(self, run: str, gates: str = "") -> str:
        """A write with a step the test can hold (its gate ``pre-slow``)."""
        await self.step("slow", self._effect, run, "slow", gates)
        self.emit(Bumped(by=1))
        return f"{run} done"

    @action
    async def bump(self, by: int = 1) -> int:
        self.emit(Bumped(by=by))
        return self.state.bumps

    @action(timeout_s=0.5)
    async def hang(self) -> int:
        """Emits, then never returns: its time limit cancels it, nothing it emitted is kept."""
        self.emit(Bumped(by=1_000))
        await asyncio.Event().wait()
        return self.state.bumps

    @action(read_only=True)
    async def count(self) -> dict[str, Any]:
        return {"approved": self.state.approved, "bumps": self.state.bumps}

    async def _effect(self, run: str, name: str, gates: str) -> str:
        js = self.ctx.client.nc.jetstream()
        key = step_key()
        await js.publish(f"stepfx.{run}.{name}.enter", key.encode())
        if gates:
            await _gate(Path(gates) / f"pre-{name}")
        await js.publish(f"stepfx.{run}.{name}.done", key.encode())
        return key

    @applies
    def _approved(self, state: FlowState, event: Approved) -> None:
        state.approved.append(event.run)

    @applies
    def _bumped(self, state: FlowState, event: Bumped) -> None:
        state.bumps += event.by


class Relay(Agent[JobState]):
    """Implicit steps (ADR 0042 §12): ``plain`` makes a plain client request to a counter and
    a plain shared-state write, then records ``<run>.held`` and waits while the test holds
    its gate (outside any step). A run named in ``RELAY_SWAP`` (the code changed: a host
    started with it) makes the two in the other order."""

    type_name = "relay"
    state_type = JobState
    action_timeout_s = 120.0

    @action
    async def plain(self, run: str, counter: str, gates: str = "") -> list[Any]:
        client = self.ctx.client

        async def call() -> Any:
            return await client.agent("counter", counter).request("increment", {"by": 1}, timeout=10)

        async def write() -> Any:
            return (await client.shared().strong.increment(f"fx.{run}")).value

        order = [write, call] if run in os.environ.get("RELAY_SWAP", "").split(",") else [call, write]
        done = [await fn() for fn in order]
        await client.nc.jetstream().publish(f"stepfx.{run}.held", b"")
        if gates:
            await _gate(Path(gates) / run)
        self.emit(Finished(run=run))
        return done

    @action
    async def fan(self, counter: str) -> list[Any]:
        """A ``request_reply`` in the action's task (a step), then two requests in tasks it
        spawns (plain: their order is not the action's)."""
        ref = self.ctx.client.agent("counter", counter)
        first = await ref.request_reply("increment", {"by": 1}, timeout=10)
        spawned = await asyncio.gather(*(ref.request("increment", {"by": by}, timeout=10) for by in (10, 100)))
        return [first.result, first.command_id, sorted(spawned)]

    @applies
    def _finished(self, state: JobState, event: Finished) -> None:
        state.finished.append(event.run)


AGENTS: list[Any] = [Job, Flow, Relay]
