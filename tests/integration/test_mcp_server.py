"""``jetagents mcp`` as MCP clients see it (ADR 0048): the mcp SDK's own client, the command as
a real subprocess, a real nats-server and host; over stdio and over streamable HTTP (port 0)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from mcp import Client as McpClient
from mcp import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult
from typer.testing import CliRunner

from jetagents import Client, Host, NatsServer
from jetagents.cli import app
from tests.integration.helpers import commits

TYPES = "counter,account"


def _argv(url: str, *extra: str) -> list[str]:
    return ["-m", "jetagents.cli", "mcp", "--types", TYPES, "--nats", url, "--timeout", "10", *extra]


def _env() -> dict[str, str]:
    return {"JETAGENTS_AGENTS": '["jetagents.examples:EXAMPLE_AGENTS"]', "PYTHONPATH": os.pathsep.join(sys.path)}


def _error(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error
    assert isinstance(result.structured_content, dict)
    err: dict[str, Any] = result.structured_content["error"]
    return err


async def _exercise(mcp: McpClient, client: Client, agent: str, cmd_id: str) -> None:
    """What both transports must do: list typed tools, call them, map errors."""
    tools = {t.name: t for t in (await mcp.list_tools()).tools}
    assert sorted(tools) == [
        "account_balance",
        "account_deposit",
        "account_withdraw",
        "counter_get",
        "counter_increment",
    ]
    inc = tools["counter_increment"]
    assert inc.input_schema["required"] == ["agent_id"]
    assert inc.input_schema["properties"]["by"]["type"] == "integer"
    assert inc.input_schema["additionalProperties"] is False
    assert inc.output_schema == {
        "type": "object",
        "properties": {"result": {"type": "integer"}},
        "required": ["result"],
    }
    assert inc.annotations is not None and inc.annotations.read_only_hint is False
    get = tools["counter_get"]
    assert get.annotations is not None and get.annotations.read_only_hint is True
    assert tools["account_deposit"].input_schema["required"] == ["agent_id", "amount"]

    first = await mcp.call_tool("counter_increment", {"agent_id": agent, "by": 2})
    assert not first.is_error and first.structured_content == {"result": 2}
    second = await mcp.call_tool("counter_increment", {"agent_id": agent, "by": 3})
    assert second.structured_content == {"result": 5}
    assert (await mcp.call_tool("counter_get", {"agent_id": agent})).structured_content == {"result": 5}
    assert await client.agent("counter", agent).request("get", timeout=10) == 5
    # each write was one command, with an id made from the MCP request
    cmds = [c["cmd"] for c in await commits(client.nc, "counter", agent)]
    assert len(set(cmds)) == 2 and all(re.fullmatch(cmd_id, c) for c in cmds), cmds

    # a client's own command id: the repeated call is answered from the record, applied once
    meta = {"jetagents/command_id": f"retry-{agent}"}
    again = [await mcp.call_tool("counter_increment", {"agent_id": agent, "by": 10}, meta=meta) for _ in range(2)]
    assert [r.structured_content for r in again] == [{"result": 15}, {"result": 15}]
    assert await client.agent("counter", agent).request("get", timeout=10) == 15

    # errors: the agent's refusal, bad parameters, a bad id: tool errors with the jetagents code
    refused = _error(await mcp.call_tool("account_withdraw", {"agent_id": agent, "amount": 7}))
    assert (refused["code"], refused["reason"], refused["retryable"]) == ("domain", "insufficient_funds", False)
    bad = _error(await mcp.call_tool("counter_increment", {"agent_id": agent, "by": "two"}))
    assert bad["code"] == "invalid_params" and bad["details"][0]["loc"] == ["by"]
    extra = _error(await mcp.call_tool("counter_increment", {"agent_id": agent, "by": 1, "evil": True}))
    assert extra["code"] == "invalid_params"
    assert _error(await mcp.call_tool("counter_get", {}))["code"] == "invalid_params"
    assert _error(await mcp.call_tool("counter_get", {"agent_id": "a.b>"}))["code"] == "invalid_params"
    # a tool never listed (another type, an unknown action): a protocol error, and the server lives on
    for name in ("job_run", "counter_reset"):
        with pytest.raises(MCPError) as info:
            await mcp.call_tool(name, {"agent_id": agent})
        assert "unknown tool" in info.value.message
    assert (await mcp.call_tool("counter_get", {"agent_id": agent})).structured_content == {"result": 15}
    assert await client.agent("counter", agent).request("get", timeout=10) == 15  # nothing bad was applied


async def test_stdio_lists_and_calls_agent_actions(nats_server: NatsServer, host: Host, client: Client) -> None:
    params = StdioServerParameters(command=sys.executable, args=_argv(nats_server.url), env=_env())
    async with McpClient(params, read_timeout_seconds=20) as mcp:
        # one process, one client: the process's nonce and the JSON-RPC request id
        await _exercise(mcp, client, "stdio1", r"mcp-[0-9a-f]{16}-[0-9]+")


@asynccontextmanager
async def _http_server(nats_url: str, env: dict[str, str] | None = None) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *_argv(nats_url, "--transport", "http", "--port", "0"),
        env={**os.environ, **_env(), **(env or {})},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "jetagents mcp exited before listening"
                found = re.search(r"mcp listening on (http://\S+)", line)
                if found:
                    break
        yield found.group(1)
    finally:
        proc.terminate()
        await proc.wait()


@pytest.fixture
async def http_mcp(nats_server: NatsServer) -> AsyncIterator[str]:
    async with _http_server(nats_server.url) as url:
        yield url


async def test_streamable_http_lists_and_calls_agent_actions(http_mcp: str, host: Host, client: Client) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*/mcp", http_mcp)
    # 2026-07-28 requests stand alone (no session): each call gets an id of its own
    async with McpClient(http_mcp, read_timeout_seconds=20) as mcp:
        await _exercise(mcp, client, "http1", r"mcp-[0-9a-f]{16}-r[0-9a-f]{16}")
    # a handshake-era client has a session: its id (digested) and the request id
    async with McpClient(http_mcp, read_timeout_seconds=20, mode="legacy") as mcp:
        await _exercise(mcp, client, "http2", r"mcp-[0-9a-f]{16}\.[0-9a-f]{16}-[0-9]+")


TOKEN = "s3cret-mcp-token-for-tests"


async def test_streamable_http_with_a_bearer_token_serves_only_requests_that_carry_it(
    nats_server: NatsServer, host: Host, client: Client
) -> None:
    async with _http_server(nats_server.url, {"JETAGENTS_MCP_TOKEN": TOKEN}) as url:
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        accept = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        async with httpx2.AsyncClient(timeout=20) as http:
            for auth in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": TOKEN}):
                refused = await http.post(url, json=ping, headers={**accept, **auth})
                assert refused.status_code == 401, (auth, refused.text)
                assert refused.headers["www-authenticate"].startswith("Bearer")
        # the SDK's own client, with the token on its HTTP client: lists and calls as without auth
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            httpx2.AsyncClient(headers=bearer, timeout=20) as http,
            McpClient(streamable_http_client(url, http_client=http), read_timeout_seconds=20) as mcp,
        ):
            await _exercise(mcp, client, "auth1", r"mcp-[0-9a-f]{16}[-.r0-9a-f]+")
        # and without it the SDK's client gets no further than its first request
        with pytest.raises(BaseExceptionGroup) as failed:
            async with McpClient(url, read_timeout_seconds=10) as mcp:
                await mcp.list_tools()
        assert failed.group_contains(MCPError)


def test_http_beyond_loopback_needs_a_token() -> None:
    runner = CliRunner()
    beyond = runner.invoke(app, ["mcp", "--types", "counter", "--transport", "http", "--host", "0.0.0.0"], env={})
    assert beyond.exit_code == 2 and "needs a bearer token (JETAGENTS_MCP_TOKEN)" in beyond.output
    short = runner.invoke(app, ["mcp", "--types", "counter", "--transport", "http"], env={"JETAGENTS_MCP_TOKEN": "x"})
    assert short.exit_code == 2 and "at least 16 characters" in short.output
