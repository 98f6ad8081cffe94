"""A durable pydantic-ai turn across SIGKILL (ADR 0047): real host processes, a real
nats-server, a real HTTP server speaking the OpenAI chat-completions protocol.

The turn makes 3 model calls and 4 tool calls (``tests/ai_agents.py``, ``httpdesk``)::

    model 0 -> check(a), check(b) -> model 1 -> check(c), check(d) -> model 2: "resolved"

The scripted server (in this test's process, outside the host) counts every request it
received and every answer it gave, and every tool effect (tools report theirs to it with
their step's idempotency key). The host is killed at four chosen step boundaries, each time
while the next unit is held in the server, unanswered:

* model 0 journaled, tool check(a) not yet effective;
* tools a and b journaled, model call 1 asked but not answered;
* tools c and d journaled, model call 2 asked but not answered;
* model call 2 answered and journaled, the closing commit (the conversation and the reply) not
  made: the action reports ``turn-end`` to the server after its turn and is held there.

The other boundaries are the same cases (a journaled unit, the next one not done); four kills
keep the test near 40 s. Afterwards each model call was answered exactly once and each tool's
effect happened exactly once, the held calls were asked again (never answered twice), the last
model call was not asked again after the last kill (the re-run replays it from the journal), the
conversation holds the whole turn and the caller got the reply.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from jetagents import Client, ClientSettings, NatsServer
from jetagents.testing.openai_server import ScriptedChatServer
from tests.integration.helpers import commits, eventually

pytestmark = pytest.mark.chaos

AGENTS = json.dumps(["jetagents.examples:EXAMPLE_AGENTS", "tests.ai_agents:AGENTS"])
SCRIPT: list[Any] = [
    [("check", {"item": "a"}), ("check", {"item": "b"})],
    [("check", {"item": "c"}), ("check", {"item": "d"})],
    "resolved",
]


async def test_sigkill_at_step_boundaries_of_a_turn_with_3_model_calls_and_4_tool_calls(
    nats_server: NatsServer, host_process_factory: Any, tmp_path: Path
) -> None:
    url = nats_server.url
    with ScriptedChatServer(SCRIPT) as server:
        env = {"JETAGENTS_AGENTS": AGENTS, "JETAGENTS_MODEL": "openai:scripted", "OPENAI_BASE_URL": server.base_url}
        held = ["effect:check-a", "chat:1", "chat:2", "effect:turn-end"]
        for what in held:
            server.hold(what)
        hp = host_process_factory(url, **env).start()
        client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
        try:
            await hp.wait_ready(client, 40)
            ref = client.agent("httpdesk", "t1")
            call = asyncio.create_task(ref.request("ask", {"prompt": "disk full"}, command_id="turn1", timeout=110))

            async def waiting(what: str, n: int) -> None:
                async def reached() -> bool:
                    return server.waiting(what) == n

                await eventually(reached, 40, 0.05)

            for what in held:
                await waiting(what, 1)  # the unit before it is journaled; this one is held, not done
                if what == "effect:turn-end":  # all 7 steps journaled, no closing commit yet
                    journaled = [c["j"].get("name") for c in await _commits(url)]
                    assert len(journaled) == 7 and journaled[-1] == "model:default"
                hp.kill()
                server.abandon()  # the killed host's request is dropped, unanswered
                await waiting(what, 0)
                hp = host_process_factory(url, **env).start()
                await waiting(what, 1)  # the redelivered command re-ran up to the same unit
                server.release(what)

            reply = await call
            assert reply == {"output": "resolved", "messages": 6}
            again = await ref.request_reply("ask", {"prompt": "disk full"}, command_id="turn1", timeout=20)
            assert again.duplicate and again.result == reply
        finally:
            await client.close()

    assert server.answered == {0: 1, 1: 1, 2: 1}  # each model call answered exactly once
    assert server.received == {0: 1, 1: 2, 2: 2}  # the held ones asked again after the kill, not after the last
    # turn-end is the action's own code after its turn, not a step: it ran again after the kill
    # (waited on above); the killed host's report was dropped unanswered, so it counts once
    assert server.effects == {"check-a": 1, "check-b": 1, "check-c": 1, "check-d": 1, "turn-end": 1}
    keys = [k for name in ("check-a", "check-b", "check-c", "check-d") for k in server.effect_keys[name]]
    assert keys == [f"httpdesk.t1:turn1#{i}" for i in (1, 2, 4, 5)]
    log = await _commits(url)
    names = [c["j"].get("name") for c in log]
    assert names == [
        "model:default",
        "tool:check:call_0_0",
        "tool:check:call_0_1",
        "model:default",
        "tool:check:call_1_0",
        "tool:check:call_1_1",
        "model:default",
        None,
    ]
    assert [c["n"] for c in log] == list(range(1, 9))
    assert [len(e["data"]["messages"]) for e in log[-1]["events"]] == [6]


async def _commits(url: str) -> list[dict[str, Any]]:
    client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
    try:
        return await commits(client.nc, "httpdesk", "t1")
    finally:
        await client.close()
