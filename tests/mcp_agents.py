"""For the MCP tests (ADR 0048): an agent whose action uses an external MCP server's tools as
steps, and that server (the SDK's ``MCPServer``, streamable HTTP on a free port) counting the
calls each tool gets and the idempotency key each call carries.

``Researcher.research`` lists the server's tools, then calls ``fetch``, ``summarize`` and
``store`` in order; before each call it notes in ``<gates>/trace`` that it got there and waits
while the test holds ``<gates>/pre-<tool>``, so a test can kill the host between two tool
calls and see where a re-run got to. The server's URL comes from ``JETAGENTS_TEST_MCP_URL``
(the host is another process).

``McpDesk.ask`` runs a pydantic-ai agent whose tools are that server's, through pydantic-ai's own
``MCPToolset``, on jetagents (``DurableAgent``): its scripted model asks for ``fetch``,
``summarize`` and ``store`` one per request, noting each request in ``<gates>/trace`` and waiting
while ``<gates>/pre-<tool>`` is held (the prompt names the gates).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter as Tally
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel
from pydantic_ai import Agent as AiAgent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from jetagents import Agent, Event, action, applies
from jetagents.ai import ChatAgent, ChatState, DurableAgent
from jetagents.mcp import McpTools

TOOLS = ("fetch", "summarize", "store")
_tools: dict[str, McpTools] = {}


def tools() -> McpTools:
    url = os.environ["JETAGENTS_TEST_MCP_URL"]
    if url not in _tools:  # one per server, as an application would declare it at module level
        _tools[url] = McpTools(url, name="fixture")
    return _tools[url]


class ResearchState(BaseModel):
    done: list[str] = []


class Researched(Event):
    run: str


class Researcher(Agent[ResearchState]):
    type_name = "researcher"
    state_type = ResearchState
    action_timeout_s = 120.0

    @action
    async def research(self, run: str, gates: str = "") -> dict[str, Any]:
        mcp = tools()
        listed = await mcp.list(self)
        results = []
        for name in TOOLS:
            if gates:
                with open(Path(gates) / "trace", "a") as trace:
                    trace.write(f"pre-{name}\n")
                while (Path(gates) / f"pre-{name}").exists():
                    await asyncio.sleep(0.02)
            results.append(await mcp.call(self, name, {"run": run}))
        self.emit(Researched(run=run))
        return {"listed": sorted(t["name"] for t in listed), "results": results}

    @action
    async def refused(self, run: str) -> Any:
        return await tools().call(self, "fail", {"run": run})

    @applies
    def _researched(self, state: ResearchState, event: Researched) -> None:
        state.done.append(event.run)


async def _one_tool_at_a_time(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    parts = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts]
    done = [p.tool_name for p in parts if isinstance(p, ToolReturnPart)]
    gates = Path(str(getattr(parts[0], "content", "")))
    todo = [t for t in TOOLS if t not in done]
    step = f"pre-{todo[0]}" if todo else "answer"
    with open(gates / "trace", "a") as trace:
        trace.write(f"{step}\n")
    while (gates / step).exists():
        await asyncio.sleep(0.02)
    if todo:
        return ModelResponse(parts=[ToolCallPart(todo[0], {"run": gates.name}, tool_call_id=f"c-{todo[0]}")])
    return ModelResponse(parts=[TextPart(" ".join(str(getattr(p, "content", "")) for p in parts[-3:]))])


_desks: dict[str, DurableAgent] = {}


def mcp_desk() -> DurableAgent:
    """A pydantic-ai agent with the test server's tools (``MCPToolset``), made durable."""
    url = os.environ["JETAGENTS_TEST_MCP_URL"]
    if url not in _desks:
        toolset: MCPToolset[None] = MCPToolset(url, id="fixture")  # the id names its steps' toolset
        ai: AiAgent[None, str] = AiAgent(FunctionModel(_one_tool_at_a_time), name="mcpdesk", toolsets=[toolset])
        _desks[url] = DurableAgent(ai)
    return _desks[url]


class McpDesk(ChatAgent[ChatState]):
    type_name = "mcpdesk"
    state_type = ChatState
    action_timeout_s = 120.0

    @action
    async def ask(self, gates: str) -> str:
        return str((await self.chat(mcp_desk(), gates)).output)


AGENTS = [Researcher, McpDesk]


class CountingServer:
    """An MCP server whose tools count their calls and remember the keys they were given."""

    def __init__(self) -> None:
        self.calls: Tally[str] = Tally()
        self.keys: dict[str, list[str | None]] = {}
        self.mcp = MCPServer("fixture")
        for name in TOOLS:
            self._tool(name)

        @self.mcp.tool()
        async def fail(run: str) -> str:
            """Always fails."""
            self.calls["fail"] += 1
            raise ToolError(f"no luck for {run}")

    def _tool(self, name: str) -> None:
        async def tool(run: str, ctx: Context) -> str:
            meta = ctx.request_context.meta or {}
            self.calls[name] += 1
            self.keys.setdefault(name, []).append(meta.get("jetagents/idempotency_key"))
            return f"{name}:{run}"

        tool.__name__ = name
        self.mcp.tool(name=name, description=f"the {name} tool")(tool)

    @asynccontextmanager
    async def serving(self, port: int = 0) -> AsyncIterator[str]:
        """Serve on 127.0.0.1:``port`` (0: a free one) until the block ends; yields the URL."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        app = self.mcp.streamable_http_app(host="127.0.0.1")
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        finally:
            server.should_exit = True
            await task
            sock.close()
