"""The kick (ADR 0042 §3): parked work a dead host was running is run by the next host on
its own, with no command to the agent. Real host processes, real nats-server.

``approve_flow`` (command ``a``) suspends on a signal; ``slow`` (command ``b``) is parked
behind it. A cancel of ``a`` sent as a call (no redelivery) closes ``a`` and starts ``b``,
which the test holds inside its step; the host is killed there. Nothing else is sent to the
agent: the kick the host armed before running ``b`` (``kick_after_s`` = 1 s here) fires, the
next host runs ``b`` again from its journal, and ``b`` finishes once.
"""

from __future__ import annotations

import json
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js.api import StreamConfig

from jetagents import Client, ClientSettings, NatsServer
from tests.durable_agents import FX_STREAM, FX_SUBJECTS
from tests.integration.helpers import commits, eventually, read_all

pytestmark = pytest.mark.chaos

AGENTS = json.dumps(["jetagents.examples:EXAMPLE_AGENTS", "tests.durable_agents:AGENTS"])


async def test_parked_work_of_a_killed_host_is_kicked_on_the_next(
    nats_server: NatsServer, host_process_factory: Any, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    (gates / "pre-slow").touch()
    url = nats_server.url
    env = {"JETAGENTS_AGENTS": AGENTS, "JETAGENTS_KICK_AFTER_S": "1"}
    hp = host_process_factory(url, **env).start()
    client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
    try:
        await hp.wait_ready(client)
        await client.nc.jetstream().add_stream(StreamConfig(name=FX_STREAM, subjects=[FX_SUBJECTS]))
        ref = client.agent("flow", "k1")
        first = await ref.request_reply("approve_flow", {"run": "a"}, command_id="a", timeout=20)
        assert first.status == "suspended"
        parked = await ref.request_reply("slow", {"run": "b", "gates": str(gates)}, command_id="b", timeout=20)
        assert parked.status == "queued"

        async def entered(n: int) -> None:
            async def reached() -> bool:
                fx = Tally(subj for _, subj, _, _ in await read_all(client.nc, FX_STREAM))
                return fx["stepfx.b.slow.enter"] >= n

            await eventually(reached, 30, 0.05)

        # a cancel as a call (core publish, wire contract 3.4): nothing redelivers it
        await client.nc.publish(client.subjects.call("flow", "k1"), orjson.dumps({"cancel": "a"}))
        await entered(1)  # a is closed, b runs and is held inside its step
        hp.kill()
        hp = host_process_factory(url, **env).start()
        await entered(2)  # the kick, not a command: nothing was sent to flow/k1 since
        (gates / "pre-slow").unlink()
        assert await ref.result("b", timeout=30) == "b done"
        assert (await ref.request("count", timeout=10))["bumps"] == 1
        fx = Tally(subj for _, subj, _, _ in await read_all(client.nc, FX_STREAM))
        assert fx["stepfx.b.slow.done"] == 1
        log = await commits(client.nc, "flow", "k1")
        assert [c["j"]["error"]["code"] for c in log if c["cmd"] == "a" and c["j"]["k"] == "end"] == ["cancelled"]
        assert [c["j"]["k"] for c in log if c["cmd"] == "b"] == ["park", "step", "end"]
    finally:
        await client.close()
