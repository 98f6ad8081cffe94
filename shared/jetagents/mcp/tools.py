"""An external MCP server's tools, used by agents as journaled steps (ADR 0048).

>>> search = McpTools("http://127.0.0.1:8000/mcp", name="search")
>>> class Researcher(Agent[State]):  # doctest: +SKIP
...     @action
...     async def research(self, topic: str) -> Any:
...         return await search.call(self, "find", {"query": topic})

Each ``call`` is a step of the running action (``Agent.step``), named
``mcp:<name>/<tool>``: its result is journaled in the agent's log before the action goes on,
so a re-run after a crash returns it without calling the tool again. The step's key
(``jetagents.step_key()``) travels in the request's ``_meta`` (``jetagents/idempotency_key``)
and, if asked, as an argument: a server that deduplicates on it applies the one call a crash
could interrupt (sent, result not journaled) once.

Connections: one MCP session per event loop (a host) and server, opened on first use and
kept; a call that fails on the transport drops the session and is tried again on a new one
under a :class:`~jetagents._core.retry.RetryPolicy` (the same key each time), then raises
``Unavailable``. A tool's own error (``isError``) and a protocol refusal (an unknown tool,
bad arguments) raise a :class:`~jetagents.DomainError` (``mcp_tool_error``, ``mcp_error``),
which the step journals like any refusal: a re-run raises it again without calling.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import structlog
from mcp import Client as McpClient
from mcp import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, TextContent

from .._core.agent import Agent
from .._core.errors import DomainError, Unavailable
from .._core.journal import effect_key
from .._core.retry import RetryPolicy

log = structlog.get_logger("jetagents.mcp")

META_IDEMPOTENCY_KEY = "jetagents/idempotency_key"
"""``_meta`` key of a ``tools/call`` that carries the step's idempotency key."""
_TRANSPORT_CODES = frozenset({CONNECTION_CLOSED, REQUEST_TIMEOUT})


class _Session:
    """One open MCP client session, owned by a task of its own: the SDK's client is a
    context whose task group must be entered and left by one task, while the calls come
    from the actions' tasks."""

    def __init__(self, target: str | StdioServerParameters, timeout_s: float) -> None:
        self._target = target
        self._timeout_s = timeout_s
        self._ready: asyncio.Future[McpClient] = asyncio.get_running_loop().create_future()
        self._close = asyncio.Event()
        # a context of its own: the session outlives the action that opened it (its step key, log context)
        self._task = asyncio.create_task(self._own(), name="mcp-session", context=contextvars.Context())

    async def _own(self) -> None:
        try:
            async with McpClient(self._target, read_timeout_seconds=self._timeout_s) as client:
                self._ready.set_result(client)
                await self._close.wait()
        except Exception as exc:  # noqa: BLE001 - whatever ended the session, the next call makes a new one
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                log.info("mcp_session_ended", error=repr(exc))
        finally:
            if not self._ready.done():  # cancelled while connecting: nobody waits in vain
                self._ready.set_exception(Unavailable("the MCP session was closed while it connected"))

    async def client(self) -> McpClient:
        async with asyncio.timeout(self._timeout_s):
            return await asyncio.shield(self._ready)

    @property
    def alive(self) -> bool:
        return not self._close.is_set() and not self._task.done()

    async def close(self) -> None:
        self._close.set()
        # asyncio.wait, not await: the owner ending (even cancelled) must not look like our own cancellation
        _, pending = await asyncio.wait({self._task}, timeout=self._timeout_s)
        if pending:
            self._task.cancel()


class McpTools:
    """The tools of one MCP server: a URL (streamable HTTP), a command line (stdio, e.g.
    ``["uvx", "mcp-server-fetch"]``) or the SDK's ``StdioServerParameters``.

    ``name`` names the server in step names (default: the URL's host and port, or the
    command); keep it stable while actions that use it are in flight, as a journal matches
    steps by name. ``key_argument``: also pass the step key as this tool argument, for
    servers that take an idempotency key there.
    """

    def __init__(
        self,
        server: str | Sequence[str] | StdioServerParameters,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        key_meta: str | None = META_IDEMPOTENCY_KEY,
        key_argument: str | None = None,
    ) -> None:
        if isinstance(server, str | StdioServerParameters):
            self.target: str | StdioServerParameters = server
        else:
            argv = list(server)
            if not argv:
                raise ValueError("an MCP server command needs at least the program")
            self.target = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
        self.name = name or _default_name(self.target)
        self.retry = retry or RetryPolicy(attempts=5, base_s=0.2, max_s=5.0)
        self.timeout_s = timeout_s
        self.key_meta = key_meta
        self.key_argument = key_argument
        self.retries = 0  # tries made again after a transport failure, since this object was made
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Session] = weakref.WeakKeyDictionary()
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    # -- inside an action: journaled steps ---------------------------------------------------
    async def call(self, agent: Agent[Any], tool: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Call ``tool`` as a step of ``agent``'s running action: once, its result journaled.

        Returns the tool's ``structuredContent`` when it has one, else its text (the text
        blocks joined), else its content blocks as JSON."""
        args = dict(arguments or {})

        async def _call() -> Any:
            return await self.call_tool(tool, args, key=effect_key())

        return await agent.step(f"mcp:{self.name}/{tool}", _call)

    async def list(self, agent: Agent[Any]) -> builtins.list[dict[str, Any]]:
        """The server's tools (``name``, ``description``, ``inputSchema``, ...) as a step:
        a re-run sees the list the first run saw."""
        listed: builtins.list[dict[str, Any]] = await agent.step(f"mcp:{self.name}/tools/list", self.list_tools)
        return listed

    # -- anywhere: plain calls ---------------------------------------------------------------
    async def call_tool(self, tool: str, arguments: Mapping[str, Any] | None = None, *, key: str | None = None) -> Any:
        """Call ``tool`` now (not journaled), passing ``key`` as the idempotency key."""
        args = dict(arguments or {})
        meta: dict[str, Any] | None = None
        if key is not None:
            if self.key_meta is not None:
                meta = {self.key_meta: key}
            if self.key_argument is not None:
                args[self.key_argument] = key
        result: CallToolResult = await self._with_session(
            lambda c: c.call_tool(tool, args, read_timeout_seconds=self.timeout_s, meta=meta), f"tool {tool!r}"
        )
        text = _text(result)
        if result.is_error:
            raise DomainError("mcp_tool_error", text or "the tool failed", details={"server": self.name, "tool": tool})
        if result.structured_content is not None:
            return result.structured_content
        if text is not None:
            return text
        return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]

    async def list_tools(self) -> builtins.list[dict[str, Any]]:
        """The server's tools now (every page), not journaled."""
        tools: builtins.list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await self._with_session(lambda c, at=cursor: c.list_tools(cursor=at), "tools/list")
            tools += [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in page.tools]
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def aclose(self) -> None:
        """Close this event loop's session (a new call opens another)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    # -- the connection -------------------------------------------------------------------------
    async def _session(self) -> _Session:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        async with lock:
            session = self._sessions.get(loop)
            if session is None or not session.alive:
                session = self._sessions[loop] = _Session(self.target, self.timeout_s)
            return session

    async def _with_session(self, op: Any, what: str) -> Any:
        attempt = 0
        while True:
            session = await self._session()
            try:
                client = await session.client()
                return await op(client)
            except MCPError as exc:
                if exc.code not in _TRANSPORT_CODES:  # the server answered: no point asking again
                    raise DomainError(
                        "mcp_error", exc.message, details={"server": self.name, "code": exc.code, "data": exc.data}
                    ) from None
                err: BaseException = exc
            except Exception as exc:  # noqa: BLE001 - the SDK's transports raise many kinds (httpx, anyio, OS)
                err = exc
            # the session is suspect: the next try opens a new one (the same step key goes with it)
            if self._sessions.get(asyncio.get_running_loop()) is session:
                del self._sessions[asyncio.get_running_loop()]
            await session.close()
            delay = self.retry.next_delay(attempt, float("inf"))
            if delay is None:
                raise Unavailable(
                    f"MCP server {self.name!r} failed on {what} after {attempt + 1} tries: {err!r}",
                    details={"server": self.name},
                ) from err
            log.info("mcp_retry", server=self.name, what=what, attempt=attempt + 1, error=repr(err))
            self.retries += 1
            await asyncio.sleep(delay)
            attempt += 1


def _text(result: CallToolResult) -> str | None:
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if not texts or len(texts) != len(result.content):
        return None
    return "\n".join(texts)


def _default_name(target: str | StdioServerParameters) -> str:
    if isinstance(target, str):
        parts = urlsplit(target)
        return parts.netloc.rsplit("@", 1)[-1] or target  # never the credentials of a URL
    return os.path.basename(target.command)
