"""Implicit steps across SIGKILL (ADR 0042 §12): real host processes, real nats-server.

``Relay.plain`` (``tests/durable_agents.py``) makes a plain ``client.agent(...).request`` to a
counter and a plain ``client.shared().strong.increment``, no ``self.step`` in sight, then
waits at a gate the test holds. Two such commands are in flight when the host is killed;
the next host (started with ``RELAY_SWAP=k2``: for ``k2`` the code now makes the two in the
other order) re-runs both from their journals:

* ``k1`` finishes with the callee applied once (its log holds one commit) and the shared key
  written once (read by the test, outside any host), both journaled as steps;
* ``k2`` fails with ``nondeterministic`` naming the step it reached and the one journaled.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamConfig

from jetagents import Client, ClientSettings, NatsServer, NonDeterministic
from tests.durable_agents import FX_STREAM, FX_SUBJECTS
from tests.integration.helpers import commits, eventually, read_all

pytestmark = pytest.mark.chaos

AGENTS = json.dumps(["jetagents.examples:EXAMPLE_AGENTS", "tests.durable_agents:AGENTS"])


async def test_plain_calls_and_shared_writes_are_steps_across_a_kill(
    nats_server: NatsServer, host_process_factory: Any, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    for run in ("k1", "k2"):
        (gates / run).touch()
    url = nats_server.url
    hp = host_process_factory(url, JETAGENTS_AGENTS=AGENTS).start()
    client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
    try:
        await hp.wait_ready(client)
        await client.nc.jetstream().add_stream(StreamConfig(name=FX_STREAM, subjects=[FX_SUBJECTS]))
        params = {"gates": str(gates)}
        k1 = asyncio.create_task(
            client.agent("relay", "a1").request(
                "plain", {"run": "k1", "counter": "c1", **params}, command_id="k1", timeout=60
            )
        )
        k2 = asyncio.create_task(
            client.agent("relay", "a2").request(
                "plain", {"run": "k2", "counter": "c2", **params}, command_id="k2", timeout=60
            )
        )

        async def held(n: int, *runs: str) -> None:
            async def reached() -> bool:
                fx = Tally(subj for _, subj, _, _ in await read_all(client.nc, FX_STREAM))
                return all(fx[f"stepfx.{run}.held"] >= n for run in runs)

            await eventually(reached, 30, 0.05)

        await held(1, "k1", "k2")
        for aid, run in (("a1", "k1"), ("a2", "k2")):
            log = await commits(client.nc, "relay", aid)
            assert [(c["j"]["i"], c["j"]["name"]) for c in log] == [
                (0, f"call:counter/c{run[1]}.increment"),
                (1, f"state.strong:fx.{run}"),
            ]
        hp.kill()
        hp = host_process_factory(url, JETAGENTS_AGENTS=AGENTS, RELAY_SWAP="k2").start()

        # k2: the re-run reached the write first; the journal says the call came first
        with pytest.raises(NonDeterministic) as info:
            await k2
        assert info.value.details["step"] == "state.strong:fx.k2"
        assert info.value.details["journaled"] == "call:counter/c2.increment"

        await held(2, "k1")  # k1 ran again up to its gate, its two steps answered from the journal
        (gates / "k1").unlink()
        assert await k1 == [1, 1]
        shared = client.shared()
        assert (await shared.strong.get("fx.k1")).value == 1  # written once
        assert [c["result"] for c in await commits(client.nc, "counter", "c1")] == [1]  # applied once
        assert await client.agent("counter", "c1").request("get", timeout=10) == 1
        log = await commits(client.nc, "relay", "a1")
        assert [c["j"]["k"] for c in log] == ["step", "step", "end"]
        assert log[-1]["events"] == [{"type": "Finished", "data": {"run": "k1"}}]
    finally:
        await client.close()
