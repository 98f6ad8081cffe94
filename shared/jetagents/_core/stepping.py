"""The durable methods of ``Agent`` (ADR 0042): steps, waits, streamed output, and calls,
publishes and subscriptions made as steps. The host's side is ``_host/steps.py``, reached
through ``ctx.steps``; ``_core/autostep.py`` makes a plain client call or shared-state write
inside an action a step too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .ids import validate_token
from .journal import SLEEP, callee_command_id, effect_key

if TYPE_CHECKING:
    from .agent import AgentContext


def _check_timeout(value: float | None, name: str) -> None:
    if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
        raise TypeError(f"{name} must be a positive number of seconds or None, not {value!r}")


class Stepping:
    """Steps, waits, streaming and step-wrapped calls (mixed into ``Agent``)."""

    __slots__ = ()

    if TYPE_CHECKING:
        ctx: AgentContext
        _pending: list[Any] | None
        __jetagents_spec__: ClassVar[Any]

        def _advance(self) -> int: ...

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (awaited if it returns an awaitable) once: its result
        (JSON, or a pydantic model) is journaled in the agent's log before the action goes
        on. When the action runs again (a redelivery after a crash, a retry), a step already
        journaled returns its recorded result without running ``fn`` (validated into ``fn``'s
        return annotation when that is a pydantic model); a ``DomainError`` it raised is
        raised again. Inside ``fn``, ``jetagents.step_key()`` is the step's idempotency key.
        Steps must come in the same order on every run: a different name at a journaled
        position raises ``NonDeterministic`` (ADR 0042)."""
        if self._pending is None:
            raise RuntimeError("step() may only be called while an action runs")
        i = self._advance()
        steps = self.ctx.steps
        if steps is None or not self.ctx.command_id:
            # no host, or a command without an id: nothing could re-run it from a journal
            result = fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result
        return await steps.step(self, i, name, fn, args, kwargs)

    async def stream(self, chunk: Any) -> None:
        """Send ``chunk`` (JSON, or a pydantic model) to the caller as the action runs, when
        the caller streams the command (``async for c in ref.stream(action, params)``); a
        no-op otherwise. Chunks are gathered for a few milliseconds into one message of the
        command's ``agt.out`` subject and kept for a while (ADR 0042 section 6), so a caller
        that reconnects resumes where it left off. Chunks streamed outside steps must be
        the same on every run of the action (a re-run publishes only those not stored yet);
        what a step's function streams is replaced when the step runs again (``reset``)."""
        if self._pending is None:
            raise RuntimeError("stream() may only be called while an action runs")
        out = self.ctx.out
        if out is not None:
            await out.put(chunk)

    async def wait_for(self, name: str, *, timeout_s: float | None = None) -> Any:
        """Suspend the action until signal ``name`` comes (ADR 0042 section 3) and return its
        payload; after ``timeout_s`` raise ``DomainError`` with reason ``wait_timeout`` (journaled:
        a re-run raises it again; uncaught, it refuses the command). The wait is journaled and the host
        drops the run: nothing is held in memory while it waits, across host restarts and
        moves. A signal (``client.agent(t, i).signal(name, payload)``) re-runs the action
        from its journal: completed steps return their results, this wait its payload. A
        signal sent before the wait is buffered and taken here at once.

        >>> approval = await self.wait_for("approve", timeout_s=86400)  # doctest: +SKIP
        """
        validate_token(name, "signal name")
        _check_timeout(timeout_s, "timeout_s")
        return await self._wait(name, timeout_s)

    async def sleep(self, seconds: float) -> None:
        """Suspend the action for ``seconds``, durably (a journaled wait the server's timer
        ends); outside a host, or for a command without an id, a plain sleep."""
        _check_timeout(seconds, "seconds")
        steps = self.ctx.steps
        if steps is None or not self.ctx.command_id:
            await self.ctx.clock.sleep(seconds)
            return
        await self._wait(SLEEP, seconds)

    async def _wait(self, name: str, timeout_s: float | None) -> Any:
        if self._pending is None:
            raise RuntimeError("wait_for()/sleep() may only be called while an action runs")
        steps = self.ctx.steps
        if steps is None or not self.ctx.command_id:
            raise RuntimeError("wait_for() needs a host and a command with an id (it suspends durably)")
        i = self._advance()
        return await steps.wait(self, i, name, timeout_s)

    async def call(
        self, agent_type: str, agent_id: str, action: str, params: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Call another agent's action as a step (ADR 0042): named
        ``call:<type>/<id>.<action>``, its result journaled like any step's. The callee gets
        the step's key as command id, so a call re-sent by a re-run (its reply lost in a
        crash) is answered from the callee's record: applied once. ``options`` are those of
        ``AgentRef.request`` (``timeout``, ``delivery``, ...)."""
        client = self.ctx.client

        async def _call() -> Any:
            key = effect_key()
            if key is not None:
                options.setdefault("command_id", callee_command_id(key))
            return await client.agent(agent_type, agent_id).request(action, params, **options)

        return await self.step(f"call:{agent_type}/{agent_id}.{action}", _call)

    async def publish(self, topic: str, data: Any) -> int:
        """Publish on a topic as a step (ADR 0049): journaled, and published under the step's
        key, so a re-run neither publishes again nor loses the message. Its stream sequence."""
        client = self.ctx.client

        async def _publish() -> int:
            return int(await client.publish(topic, data, msg_id=effect_key()))

        return int(await self.step(f"publish:{topic}", _publish))

    async def subscribe(self, pattern: str, *, action: str = "on_message", delivery: str = "exactly-once") -> None:
        """Subscribe this agent to ``pattern`` as a step: each later message on a matching
        topic becomes a command ``action(msg)`` to it (ADR 0049)."""
        if action not in type(self).__jetagents_spec__.actions:
            raise ValueError(f"{type(self).__name__} has no action {action!r} to handle messages of {pattern!r}")
        client, aid = self.ctx.client, self.ctx.agent_id

        async def _subscribe() -> None:
            await client.subscribe_agent(aid.type, aid.id, pattern, action=action, delivery=delivery)

        await self.step(f"subscribe:{pattern}", _subscribe)

    async def unsubscribe(self, pattern: str) -> None:
        """Stop this agent's subscription to ``pattern`` (as a step)."""
        client, aid = self.ctx.client, self.ctx.agent_id
        await self.step(f"unsubscribe:{pattern}", lambda: client.unsubscribe_agent(aid.type, aid.id, pattern))
