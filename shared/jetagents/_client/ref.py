"""Handles to agents: ``AgentRef`` (by name) and the typed proxy (by agent class)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from .._core.agent import AgentSpec
from .._core.ids import AgentId
from .._core.wire import Delivery, Priority
from .command import SendOptions
from .reply import Reply
from .stream import AgentStream

if TYPE_CHECKING:
    from .client import Client


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
    ) -> str:
        """Fire and forget. Durable modes return once the stream has stored the command;
        at-most-once returns once it is written to the connection. Returns the command id."""
        options = SendOptions(
            delivery=Delivery(delivery),
            timeout_s=timeout,
            command_id=command_id,
            correlation_id=correlation_id,
            priority=Priority(priority),
            deadline_s=deadline,
            want_reply=False,
        )
        return cast(str, await self.client._send(self.id, action, params, options))

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
    ) -> Any:
        """Send and await the reply; returns the action's JSON result or raises the typed error.

        ``timeout`` bounds the wait; ``deadline`` (seconds) tells the host not to start the
        command after that long (durable commands have none unless given)."""
        reply = await self.request_reply(
            action,
            params,
            delivery=delivery,
            timeout=timeout,
            command_id=command_id,
            correlation_id=correlation_id,
            priority=priority,
            deadline=deadline,
        )
        return reply.result

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
    ) -> Reply:
        """Like :meth:`request` but returns the :class:`Reply` with its headers."""
        options = SendOptions(
            delivery=Delivery(delivery),
            timeout_s=timeout,
            command_id=command_id,
            correlation_id=correlation_id,
            priority=Priority(priority),
            deadline_s=deadline,
            want_reply=True,
        )
        return cast(Reply, await self.client._send(self.id, action, params, options))

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
        each next message, not the whole stream."""
        d = Delivery(delivery)
        if d is Delivery.AT_MOST_ONCE:
            raise ValueError("a streamed command is durable: at-least-once or exactly-once")
        cmd_id = command_id or self.client._transport.new_id()
        options = SendOptions(
            delivery=d,
            timeout_s=timeout,
            command_id=cmd_id,
            correlation_id=correlation_id,
            priority=Priority(priority),
            deadline_s=deadline,
            want_reply=False,
            stream=True,
        )

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
