"""MCP tool calls as journaled steps across SIGKILL (ADR 0048): a real host process runs an
action that lists an MCP server's tools and calls three of them; the server (the SDK's
``MCPServer`` over streamable HTTP, in this process) counts the calls. The host is killed
between the first and second call and again between the second and third, and restarted each
time: the command's redelivery re-runs the action, whose journaled calls return their recorded
results. Each tool ran exactly once, each with its step's key, and the caller gets the result.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from jetagents import Client, ClientSettings, NatsServer
from tests.integration.helpers import commits, eventually
from tests.mcp_agents import TOOLS, CountingServer

# a host process restarted under load (pydantic-ai, fastmcp imported anew) took over 30 s to
# serve again at a load of 20 on two cores: every wait for a fresh host is given what the first
# start is (wait_ready), and the call's own timeout covers two restarts
RESTART_S = 90
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]

AGENTS = json.dumps(["jetagents.examples:EXAMPLE_AGENTS", "tests.mcp_agents:AGENTS"])


async def test_sigkill_between_tool_calls(nats_server: NatsServer, host_process_factory: Any, tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    trace = gates / "trace"
    for held in ("pre-summarize", "pre-store"):
        (gates / held).touch()
    counting = CountingServer()
    async with counting.serving() as mcp_url:
        url = nats_server.url
        env = {"JETAGENTS_AGENTS": AGENTS, "JETAGENTS_TEST_MCP_URL": mcp_url}
        hp = host_process_factory(url, **env).start()
        client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
        try:
            await hp.wait_ready(client, timeout_s=60)  # pydantic-ai, fastmcp: a slow start when loaded
            ref = client.agent("researcher", "r1")
            call = asyncio.create_task(
                ref.request("research", {"run": "k", "gates": str(gates)}, command_id="k1", timeout=3 * RESTART_S)
            )

            def reached(gate: str, times: int) -> Any:
                return lambda: trace.exists() and trace.read_text().split().count(gate) >= times

            async def kill_and_restart() -> Any:
                hp.kill()
                return host_process_factory(url, **env).start()

            # 1. fetch done and journaled, the action held before summarize
            await eventually(reached("pre-summarize", 1), RESTART_S)
            assert counting.calls == {"fetch": 1}
            hp = await kill_and_restart()
            await eventually(reached("pre-summarize", 2), RESTART_S)  # the re-run skipped the list and fetch
            assert counting.calls == {"fetch": 1}
            (gates / "pre-summarize").unlink()
            # 2. summarize done and journaled, held before store
            await eventually(reached("pre-store", 1), RESTART_S)
            hp = await kill_and_restart()
            await eventually(reached("pre-store", 2), RESTART_S)
            assert counting.calls == {"fetch": 1, "summarize": 1}
            (gates / "pre-store").unlink()

            out = await call
            assert out == {"listed": sorted([*TOOLS, "fail"]), "results": [{"result": f"{t}:k"} for t in TOOLS]}
            assert counting.calls == {t: 1 for t in TOOLS}
            assert counting.keys == {t: [f"researcher.r1:k1#{i + 1}"] for i, t in enumerate(TOOLS)}
            log = await commits(client.nc, "researcher", "r1")
            assert [(c["j"]["k"], c["j"]["i"]) for c in log] == [("step", i) for i in range(4)] + [("end", 4)]
            # three runs of the action, each from the top; only the first called fetch, the second summarize
            runs = ["pre-fetch", "pre-summarize"], ["pre-fetch", "pre-summarize", "pre-store"]
            assert trace.read_text().split() == runs[0] + runs[1] + runs[1]
        finally:
            await client.close()


async def test_sigkill_between_tool_calls_of_a_pydantic_ai_mcp_toolset(
    nats_server: NatsServer, host_process_factory: Any, tmp_path: Path
) -> None:
    """The same through pydantic-ai's own ``MCPToolset`` given to a ``DurableAgent``: the host is
    killed while the model's second request waits (fetch called and journaled); the re-run
    answers the first request and fetch from the journal and goes on."""
    gates = tmp_path / "g1"
    gates.mkdir()
    trace = gates / "trace"
    (gates / "pre-summarize").touch()
    counting = CountingServer()
    async with counting.serving() as mcp_url:
        url = nats_server.url
        env = {"JETAGENTS_AGENTS": AGENTS, "JETAGENTS_TEST_MCP_URL": mcp_url}
        hp = host_process_factory(url, **env).start()
        client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
        try:
            await hp.wait_ready(client, timeout_s=60)  # pydantic-ai, fastmcp: a slow start when loaded
            ref = client.agent("mcpdesk", "d1")
            call = asyncio.create_task(
                ref.request("ask", {"gates": str(gates)}, command_id="m1", timeout=2 * RESTART_S)
            )

            def asked(gate: str, times: int) -> Any:
                return lambda: trace.exists() and trace.read_text().split().count(gate) >= times

            await eventually(asked("pre-summarize", 1), RESTART_S)  # model request 2 waits: fetch is journaled
            assert counting.calls == {"fetch": 1}
            hp.kill()
            hp = host_process_factory(url, **env).start()
            await eventually(asked("pre-summarize", 2), RESTART_S)  # the re-run: request 1 and fetch from the journal
            assert counting.calls == {"fetch": 1}
            (gates / "pre-summarize").unlink()

            assert await call == "fetch:g1 summarize:g1 store:g1"
            assert counting.calls == {t: 1 for t in TOOLS}  # each MCP tool call once, counted in the server
            # model requests: only the one the kill interrupted (never answered, never journaled) was made twice
            assert trace.read_text().split() == ["pre-fetch", "pre-summarize", "pre-summarize", "pre-store", "answer"]
            log = await commits(client.nc, "mcpdesk", "d1")
            assert [c["j"].get("name") for c in log] == [
                "model:default",
                "tool:fetch:c-fetch",
                "model:default",
                "tool:summarize:c-summarize",
                "model:default",
                "tool:store:c-store",
                "model:default",
                None,
            ]
        finally:
            await client.close()
