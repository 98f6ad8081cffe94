"""An agent using an external MCP server's tools as journaled steps (``McpTools``, ADR 0048):
a real MCP server (the SDK's ``MCPServer`` over streamable HTTP), a real host and nats-server.
The kill -9 proof is ``tests/chaos/test_mcp_kill.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jetagents import Client, DomainError, Host, NatsServer, Registry
from jetagents._core.retry import RetryPolicy
from jetagents.examples import EXAMPLE_AGENTS
from jetagents.mcp import McpTools
from tests.conftest import host_settings
from tests.integration.helpers import commits, eventually
from tests.mcp_agents import TOOLS, CountingServer, Researcher


@pytest.fixture
async def fixture_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[CountingServer, str]]:
    counting = CountingServer()
    async with counting.serving() as url:
        monkeypatch.setenv("JETAGENTS_TEST_MCP_URL", url)
        yield counting, url


async def test_tool_calls_are_steps_run_once_and_refusals_are_journaled(
    nats_server: NatsServer, client: Client, fixture_url: tuple[CountingServer, str]
) -> None:
    counting, _ = fixture_url
    host = Host(host_settings(nats_server.url), Registry([Researcher, *EXAMPLE_AGENTS]))
    await host.start()
    try:
        ref = client.agent("researcher", "r1")
        out = await ref.request("research", {"run": "a"}, command_id="c1", timeout=20)
        assert out == {"listed": sorted([*TOOLS, "fail"]), "results": [{"result": f"{t}:a"} for t in TOOLS]}
        assert counting.calls == {t: 1 for t in TOOLS}
        # each call carried its step's key (step 0 is the listing)
        assert counting.keys == {t: [f"researcher.r1:c1#{i + 1}"] for i, t in enumerate(TOOLS)}
        log = await commits(client.nc, "researcher", "r1")
        assert [(c["j"]["k"], c["j"].get("name")) for c in log] == [
            ("step", "mcp:fixture/tools/list"),
            *[("step", f"mcp:fixture/{t}") for t in TOOLS],
            ("end", None),
        ]
        again = await ref.request_reply("research", {"run": "a"}, command_id="c1", timeout=20)
        assert again.duplicate and again.result == out and counting.calls == {t: 1 for t in TOOLS}

        # the tool's own error: a domain refusal, journaled as the step's result
        with pytest.raises(DomainError) as info:
            await ref.request("refused", {"run": "b"}, command_id="c2", timeout=20)
        assert info.value.reason == "mcp_tool_error" and "no luck for b" in info.value.message
        assert counting.calls["fail"] == 1
        [entry] = [c["j"] for c in await commits(client.nc, "researcher", "r1") if c["cmd"] == "c2"]
        assert entry["k"] == "step" and entry["ok"] is False and entry["error"]["reason"] == "mcp_tool_error"
    finally:
        await host.stop()


async def test_a_call_waits_out_a_server_outage_under_the_retry_policy() -> None:
    counting = CountingServer()
    async with counting.serving() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        tools = McpTools(url, name="fixture", retry=RetryPolicy(attempts=100, base_s=0.05, max_s=0.2))
        assert await tools.call_tool("fetch", {"run": "1"}, key="k1") == {"result": "fetch:1"}
    # the server is gone: the session breaks, the call is retried on new ones until it is back
    call = asyncio.create_task(tools.call_tool("fetch", {"run": "2"}, key="k2"))
    await eventually(lambda: tools.retries >= 2, 20)
    async with counting.serving(port):
        assert await call == {"result": "fetch:2"}
    assert counting.calls["fetch"] == 2 and counting.keys["fetch"] == ["k1", "k2"]
    await tools.aclose()
