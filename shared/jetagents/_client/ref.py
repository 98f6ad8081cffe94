"""Handles to agents: ``AgentRef`` (by name) and the typed proxy (by agent class)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import orjson
from pydantic_core import to_jsonable_python

from .._core.agent import AgentSpec
from .._core.autostep import auto_step, running_agent, step_command_id
from .._core.errors import AgentTimeout
from .._core.ids import AgentId
from .._core.retry import RetryPolicy
from .._core.schedules import check_reminder_name, every_seconds, pattern_of
from .._core.wire import Delivery, Priority
from .command import SendOptions
from .reply import Reply
from .stream import AgentStream

if TYPE_CHECKING:
    from .client import Client

# by value (a member is equal to its value): a lookup, where calling the enum runs Python code
_RESULT_POLL = RetryPolicy(base_s=0.05, max_s=1.0, jitter=False)  # asking for a result not there yet
_DELIVERIES: dict[str, Delivery] = {d.value: d for d in Delivery}
_PRIORITIES: dict[str, Priority] = {p.value: p for p in Priority}
_NORMAL = Priority.NORMAL
# the options of a request that gives nothing but its delivery mode (most do), by mode and by
# its value: built once, not per call (a ``SendOptions`` is never changed once built)
_PLAIN_REQUEST: dict[str, SendOptions] = {d: SendOptions(delivery=d) for d in Delivery}


def _options(
    delivery: Delivery | str,
    timeout: float | None,
    command_id: str | None,
    correlation_id: str | None,
    priority: Priority | str,
    deadline: float | None,
    want_reply: bool,
    compress: bool | None,
    *,
    stream: bool = False,
) -> SendOptions:
    """The caller's arguments as ``SendOptions``, the enums looked up rather than called
    (every call's path, ADR 0031); an unknown delivery or priority raises ``ValueError``."""
    return SendOptions(
        delivery=_DELIVERIES.get(delivery) or Delivery(delivery),
        timeout_s=timeout,
        command_id=command_id,
        correlation_id=correlation_id,
        priority=_PRIORITIES.get(priority) or Priority(priority),
        deadline_s=deadline,
        want_reply=want_reply,
        stream=stream,
        compress=compress,
    )


class AgentRef:
    """A location-transparent handle to one agent."""

    __slots__ = ("client", "id")

    def __init__(self, client: Client, agent_id: AgentId) -> None:
        self.client = client
        self.id = agent_id

    async def send(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        command_id: str | None = None,
        correlation_id: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        timeout: float | None = None,
        deadline: float | None = None,
        compress: bool | None = None,
    ) -> str:
        """Fire and forget. Durable modes return once the stream has stored the command;
        at-most-once returns once it is written to the connection. Returns the command id.
        ``compress``: zstd above the client's ``compress_min_bytes`` (None: its setting).
        Inside an action, a journaled step ``send:<type>/<id>.<action>`` (ADR 0042 §12)."""

        async def run() -> str:
            cid = step_command_id(command_id)
            options = _options(delivery, timeout, cid, correlation_id, priority, deadline, False, compress)
            return cast(str, await self.client._send(self.id, action, params, options))

        return await auto_step(f"send:{self.id.type}/{self.id.id}.{action}", run)

    async def request(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        timeout: float | None = None,
        command_id: str | None = None,
        correlation_id: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
        compress: bool | None = None,
    ) -> Any:
        """Send and await the reply; returns the action's JSON result or raises the typed error.

        ``timeout`` bounds the wait; ``deadline`` (seconds) tells the host not to start the
        command after that long (durable commands have none unless given). An action that
        suspends (``wait_for``, ``sleep``) or is parked behind one is awaited to its end
        (:meth:`result`) within ``timeout``; :meth:`request_reply` returns at once instead.
        Inside an action, a journaled step ``call:<type>/<id>.<action>`` whose key is the
        command id (as ``Agent.call``, ADR 0042 §12): a re-run is answered from the step."""
        if running_agent() is not None:
            return await auto_step(
                f"call:{self.id.type}/{self.id.id}.{action}",
                self.request,
                action,
                params,
                delivery=delivery,
                timeout=timeout,
                command_id=command_id,
                correlation_id=correlation_id,
                priority=priority,
                deadline=deadline,
                compress=compress,
            )
        # request_reply's body written out (no closure): this is every call's path (ADR 0031)
        cid = step_command_id(command_id)
        plain = cid is None and timeout is None and correlation_id is None and deadline is None and compress is None
        options = _PLAIN_REQUEST.get(delivery) if plain and priority is _NORMAL else None
        if options is None:  # something given, or an unknown mode (``_options`` raises)
            options = _options(delivery, timeout, cid, correlation_id, priority, deadline, True, compress)
        started = asyncio.get_running_loop().time()
        reply: Reply = await self.client._send(self.id, action, params, options)  # type: ignore[assignment]
        if reply.status is not None and reply.command_id:
            limit = timeout if timeout is not None else self.client.settings.request_timeout_s
            left = limit - (asyncio.get_running_loop().time() - started)
            return await self.result(reply.command_id, timeout=max(0.1, left))
        return reply.result

    async def signal(
        self,
        name: str,
        payload: Any = None,
        *,
        to: str | None = None,
        command_id: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send signal ``name`` with ``payload`` (JSON) to this agent (ADR 0042 §3): it
        resumes the oldest action waiting for it (``to``: the one of that command id), or is
        buffered for a later ``wait_for``. Durable (exactly once); returns
        ``{"delivered": cmd}`` or ``{"buffered": true}``.

        >>> await client.agent("order", "o1").signal("approve", {"by": "ann"})  # doctest: +SKIP
        """
        body = orjson.dumps({"signal": name, "payload": payload, "to": to}, default=to_jsonable_python)

        async def run() -> Any:
            cid = step_command_id(command_id)
            return (await self._control("_signal", body, Delivery.EXACTLY_ONCE, timeout, cid)).result

        return await auto_step(f"signal:{self.id.type}/{self.id.id}.{name}", run)

    async def cancel(self, command_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Cancel command ``command_id`` of this agent (ADR 0042 §8): a suspended (or parked)
        one is closed with ``cancelled``, a running one stops at its next step boundary.
        Returns ``{"cancelled": true}``, or ``{"cancelled": false, "state": "finished" |
        "unknown"}``; the command's own caller gets ``ActionCancelled``."""
        body = orjson.dumps({"cancel": command_id})

        async def run() -> dict[str, Any]:
            reply = await self._control("_cancel", body, Delivery.EXACTLY_ONCE, timeout, step_command_id(None))
            return cast(dict[str, Any], reply.result)

        return await auto_step(f"cancel:{self.id.type}/{self.id.id}", run)

    async def resume(self, command_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Run command ``command_id``'s blocked journal again (``nondeterministic`` or
        ``journal_too_long``, once the code or the limit is fixed; ADR 0042 §2): its completed
        steps answer from the journal and its caller gets the result. Returns ``{"resumed":
        true, "state": "finished" | "blocked" | "suspended"}``, or ``{"resumed": false,
        "state": ...}`` when it is not blocked (``finished``, ``unknown``, ``running``,
        ``suspended``)."""
        body = orjson.dumps({"resume": command_id})
        return cast(dict[str, Any], (await self._control("_resume", body, Delivery.EXACTLY_ONCE, timeout)).result)

    async def result(self, command_id: str, *, timeout: float | None = None) -> Any:
        """The result of command ``command_id`` (one that suspended, or was queued), waiting
        for it until ``timeout``: the action's result, or its typed error. Asks the agent
        (``{"result": cmd}``, a call) with a growing pause (50 ms to 1 s) while the answer is
        a status (``suspended``, ``queued``, ``running``, or ``unknown``: not arrived yet)."""
        loop = asyncio.get_running_loop()
        limit = timeout if timeout is not None else self.client.settings.request_timeout_s
        until = loop.time() + limit
        body = orjson.dumps({"result": command_id})
        asked = 0
        while True:
            left = until - loop.time()
            if left <= 0:
                raise AgentTimeout(f"command {command_id} of {self.id} did not finish in time")
            reply = await self._control("_result", body, Delivery.AT_MOST_ONCE, left)
            if reply.status is None:
                return reply.result
            await asyncio.sleep(min(_RESULT_POLL.delay(asked), max(0.0, until - loop.time())))
            asked += 1

    async def _control(
        self, name: str, body: bytes, delivery: Delivery, timeout: float | None, command_id: str | None = None
    ) -> Reply:
        options = SendOptions(delivery=delivery, timeout_s=timeout, command_id=command_id, want_reply=True)
        return cast(Reply, await self.client._send(self.id, name, None, options, body=body))

    async def request_reply(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        timeout: float | None = None,
        command_id: str | None = None,
        correlation_id: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
        compress: bool | None = None,
    ) -> Reply:
        """Like :meth:`request` but returns the :class:`Reply` with its headers (inside an
        action, a journaled step like :meth:`request`'s)."""

        async def run() -> Reply:
            cid = step_command_id(command_id)
            options = _options(delivery, timeout, cid, correlation_id, priority, deadline, True, compress)
            return cast(Reply, await self.client._send(self.id, action, params, options))

        if running_agent() is None:
            return await run()

        async def journaled() -> dict[str, Any]:
            return (await run()).to_json()

        return Reply.from_json(await auto_step(f"call:{self.id.type}/{self.id.id}.{action}", journaled))

    def stream(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        command_id: str | None = None,
        correlation_id: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> AgentStream:
        """Send the command with its output streamed; iterate the result to read it:

        >>> stream = client.agent("chat", "c1").stream("reply", {"prompt": "hi"})  # doctest: +SKIP
        >>> async for chunk in stream:  # doctest: +SKIP
        ...     print(chunk, end="")
        >>> stream.result  # doctest: +SKIP

        The command is sent (durably: streaming is for work that takes a while, and only a
        stored command can be resumed) when the loop starts. ``timeout`` bounds the wait for
        each next message, not the whole stream (default: the client's request timeout, at
        least 60 s)."""
        d = Delivery(delivery)
        if d is Delivery.AT_MOST_ONCE:
            raise ValueError("a streamed command is durable: at-least-once or exactly-once")
        cmd_id = command_id or self.client._transport.new_id()
        options = _options(d, timeout, cmd_id, correlation_id, priority, deadline, False, None, stream=True)

        async def send() -> None:
            await self.client._send(self.id, action, params, options)

        return self.client._stream(self.id, cmd_id, after=0, idle_timeout_s=timeout, send=send)

    def read_stream(
        self, command_id: str, *, after: int = 0, next_chunk: int | None = None, timeout: float | None = None
    ) -> AgentStream:
        """The output of a command sent earlier with :meth:`stream`, from the message after
        stream sequence ``after`` on, skipping chunks before index ``next_chunk`` (a reader
        that stopped: its ``offset`` and ``next_chunk``; neither: from the start): every
        chunk it has not seen once, in order, then the result."""
        return self.client._stream(self.id, command_id, after=after, next_chunk=next_chunk, idle_timeout_s=timeout)

    def request_async(self, action: str, params: Mapping[str, Any] | None = None, **opts: Any) -> asyncio.Task[Any]:
        """Start a request and return a future (an ``asyncio.Task``) to await or gather later."""
        return asyncio.ensure_future(self.request(action, params, **opts))

    async def remind(
        self,
        name: str,
        *,
        action: str,
        params: Mapping[str, Any] | None = None,
        at: datetime | int | None = None,
        every: float | timedelta | None = None,
        cron: str | None = None,
        tz: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Have the agent's host schedule the reminder ``name`` (as ``Agent.remind``: one of
        ``at``, ``every``, ``cron``); the same name again replaces it. Returns what was
        scheduled. Bad input raises ``InvalidParams`` here or from the host; nothing is
        scheduled then.

        >>> await client.agent("order", "o1").remind("expire", every=60, action="expire")  # doctest: +SKIP
        """
        pattern_of(at=at, every=every, cron=cron, tz=tz)  # refused here before anything is sent
        wire: dict[str, Any] = {"name": check_reminder_name(name), "action": action, "params": dict(params or {})}
        if at is not None:
            wire["at"] = at if isinstance(at, int) else at.isoformat()
        if every is not None:
            wire["every"] = every_seconds(every)
        if cron is not None:
            wire["cron"] = cron
        if tz is not None:
            wire["tz"] = tz
        return cast(dict[str, Any], await self.request("_remind", wire, timeout=timeout))

    async def cancel_reminder(self, name: str, *, timeout: float | None = None) -> bool:
        """Stop the agent's reminder ``name`` (no error if there is none)."""
        await self.request("_unremind", {"name": check_reminder_name(name)}, timeout=timeout)
        return True

    async def reminders(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The agent's reminders: ``name``, ``schedule`` (as the server holds it), ``action``,
        ``params`` and ``tz`` when set."""
        listed = await self.request("_reminders", {}, delivery="at-most-once", timeout=timeout)
        return cast(list[dict[str, Any]], listed)

    def __repr__(self) -> str:
        return f"AgentRef({self.id})"


class Proxy:
    """What ``Client.proxy`` returns: the agent's actions as methods."""

    __slots__ = ("_delivery", "_priority", "_ref", "_spec", "_timeout")

    def __init__(
        self, ref: AgentRef, spec: AgentSpec, delivery: Delivery, timeout: float | None, priority: Priority
    ) -> None:
        self._ref = ref
        self._spec = spec
        self._delivery = delivery
        self._timeout = timeout
        self._priority = priority

    def __getattr__(self, name: str) -> Any:
        action = self._spec.actions.get(name)
        if action is None:
            raise AttributeError(f"agent type {self._spec.type_name!r} has no action {name!r}")
        ref, delivery, timeout, priority = self._ref, self._delivery, self._timeout, self._priority

        async def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) > len(action.param_names):
                raise TypeError(f"{name}() takes {len(action.param_names)} arguments")
            params = dict(zip(action.param_names, args, strict=False))
            params.update(kwargs)
            result = await ref.request(name, params, delivery=delivery, timeout=timeout, priority=priority)
            return action.result_adapter.validate_python(result) if action.result_adapter else result

        call.__name__ = name
        return call

    def __repr__(self) -> str:
        return f"<proxy {self._ref.id}>"
