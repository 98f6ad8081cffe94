"""``jetagents mcp``: the actions of chosen agent types served as MCP tools (ADR 0048).

An MCP client (Claude Desktop, an IDE, another agent) lists the tools and calls them; each
call becomes a command sent by the jetagents :class:`~jetagents.Client`: a read-only action
as a call (at-most-once, nothing to repeat), any other as an exactly-once request whose command
id comes from the MCP request (``catalog.command_id_for``). Errors come back as MCP tool errors
(``isError``) carrying the jetagents error (``structuredContent.error``: ``code``, ``message``,
``retryable``, ...); a tool the server does not serve is a JSON-RPC error (invalid params).

Only the types the operator names are reachable: the server holds their specs and refuses any
other tool name before sending anything.

>>> async def main():  # doctest: +SKIP
...     async with await Client.connect("nats://127.0.0.1:4222") as client:
...         server = AgentToolServer(client, [spec_of(Counter)], scope=new_scope())
...         await serve_stdio(server)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
)

from .._client.client import Client
from .._core.agent import AgentSpec
from .._core.errors import InvalidParams, JetAgentsError
from .._core.ids import validate_token
from .._core.wire import Delivery
from .._version import __version__
from .catalog import AGENT_ID, ActionTool, action_tools, command_id_for

_SESSION_HEADER = "mcp-session-id"


def new_scope() -> str:
    """A nonce naming one server process (stdio: one client's stream of request ids)."""
    return secrets.token_hex(8)


class AgentToolServer:
    """The MCP server of ``specs``' actions, calling agents through ``client``.

    ``scope``: the nonce command ids are derived under (``new_scope()``); with ``per_session``
    (HTTP) each MCP session adds its own id to it, and a request outside a session (the
    2026-07-28 single-exchange HTTP form) gets a fresh command id instead.
    """

    def __init__(
        self,
        client: Client,
        specs: Sequence[AgentSpec],
        *,
        scope: str,
        per_session: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self.tools: dict[str, ActionTool] = action_tools(specs)
        self.scope = scope
        self.per_session = per_session
        self.timeout_s = timeout_s
        self.server: Server[Any] = Server(
            "jetagents",
            version=__version__,
            instructions="Actions of jetagents agents; each tool takes the agent's id as agent_id.",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=[t.tool for t in self.tools.values()])

    async def call_tool(self, ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
        entry = self.tools.get(params.name)
        if entry is None:  # a protocol error (the client asked for what was never listed)
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r}", {"tools": sorted(self.tools)})
        args = dict(params.arguments or {})
        action = entry.action
        try:
            agent_id = args.pop(AGENT_ID, None)
            if not isinstance(agent_id, str):
                raise InvalidParams(f"{AGENT_ID} is required", details=[{"loc": [AGENT_ID], "msg": "required"}])
            try:
                validate_token(agent_id, "agent id")
            except ValueError as exc:
                raise InvalidParams(str(exc), details=[{"loc": [AGENT_ID], "msg": str(exc)}]) from None
            # the host validates again; refusing here keeps bad input out of the stream and the dead letters
            action.validate_params(args)
            ref = self.client.agent(entry.agent_type, agent_id)
            if action.read_only:  # nothing to apply once: a call, answered by the host that has the agent
                result = await ref.request(action.name, args, delivery=Delivery.AT_MOST_ONCE, timeout=self.timeout_s)
            else:
                cmd = command_id_for(self._scope_of(ctx), ctx.request_id, params.meta)
                if cmd is None:  # still one id for all the client's re-sends of this command
                    cmd = f"mcp-{self.scope}-r{secrets.token_hex(8)}"
                result = await ref.request(action.name, args, command_id=cmd, timeout=self.timeout_s)
        except JetAgentsError as err:
            return tool_error(err)
        return CallToolResult(
            content=[TextContent(type="text", text=orjson.dumps(result).decode())],
            structured_content={"result": result},
        )

    def _scope_of(self, ctx: ServerRequestContext[Any]) -> str | None:
        if not self.per_session:
            return self.scope
        headers = getattr(ctx.request, "headers", None)
        session = headers.get(_SESSION_HEADER) if headers is not None else None
        if not session:
            return None  # no session to tie request ids to: each call its own command id
        # the session id is client-sent: a digest of it keeps the command id header-safe
        return f"{self.scope}.{hashlib.sha256(session.encode()).hexdigest()[:16]}"


def tool_error(err: JetAgentsError) -> CallToolResult:
    """A jetagents error as an MCP tool error: the model sees it and may correct its input."""
    wire = err.to_wire()
    return CallToolResult(
        content=[TextContent(type="text", text=orjson.dumps({"error": wire}).decode())],
        structured_content={"error": wire},
        is_error=True,
    )


async def serve_stdio(server: AgentToolServer) -> None:
    """Serve one client over this process's stdin and stdout until it closes them."""
    srv = server.server
    async with stdio_server() as (read_stream, write_stream):
        await srv.run(read_stream, write_stream, srv.create_initialization_options())


class StaticToken:
    """The SDK's ``TokenVerifier`` for one shared bearer token (``JETAGENTS_MCP_TOKEN``),
    compared in constant time."""

    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ValueError("the MCP bearer token must have at least 16 characters")
        self._token = token.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if not hmac.compare_digest(token.encode(), self._token):
            return None
        return AccessToken(token="", client_id="jetagents-mcp", scopes=[])  # nothing of the secret kept


async def serve_http(server: AgentToolServer, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
    """Serve streamable HTTP on ``host:port`` (0: a free port), at ``/mcp``; the address is
    printed to stderr as ``mcp listening on http://HOST:PORT/mcp``. With ``token`` every request
    needs ``Authorization: Bearer <token>`` (else 401, through the SDK's bearer middleware)."""
    import uvicorn

    if token is None:
        app = server.server.streamable_http_app(host=host)
    else:
        # the SDK wires a token verifier only with AuthSettings; its issuer is advertised only
        # with an authorization server or a resource URL, neither of which is set here
        auth = AuthSettings(issuer_url="http://127.0.0.1", resource_server_url=None)
        app = server.server.streamable_http_app(host=host, auth=auth, token_verifier=StaticToken(token))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    print(f"mcp listening on http://{host}:{bound}/mcp", file=sys.stderr, flush=True)
    try:
        await web.serve(sockets=[sock])
    finally:
        sock.close()
