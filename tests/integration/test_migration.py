"""Moving single agents between hosts (checkpoint, state transfer, cold start) with no
lost or repeated command, placement by resource requirements, and the queue when no host
can take a type. Two or three in-process hosts on one real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from jetagents import Agent, Client, Event, Host, NatsServer, Registry, Unavailable, action, applies
from jetagents._core.ids import partition_of
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import commits, eventually

FAST = {"member_ttl_s": 2.0, "lease_ttl_s": 2.0, "heartbeat_s": 0.3, "cluster_tick_s": 0.1}


class RenderState(BaseModel):
    frames: int = 0


class Rendered(Event):
    n: int


class Renderer(Agent[RenderState]):
    """Needs a GPU: only hosts advertising the ``gpu`` tag may run it."""

    type_name = "renderer"
    state_type = RenderState
    requires: ClassVar[frozenset[str]] = frozenset({"gpu"})

    @action
    async def render(self, n: int = 1) -> int:
        self.emit(Rendered(n=n))
        return self.state.frames

    @applies
    def _rendered(self, state: RenderState, event: Rendered) -> None:
        state.frames += event.n


AGENTS = [*EXAMPLE_AGENTS, Renderer]


def host(url: str, host_id: str, **kw: Any) -> Host:
    return Host(host_settings(url, host_id=host_id, **FAST, **kw), Registry(AGENTS))


def agent_owned_by(h: Host, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(1000) if partition_of("counter", f"{prefix}{i}", 8) in set(h.owned))


@pytest.mark.parametrize("strategy", ["checkpoint", "state", "cold"])
async def test_migrate_loses_and_repeats_nothing(nats_server: NatsServer, client: Client, strategy: str) -> None:
    a, b = host(nats_server.url, "host-a"), host(nats_server.url, "host-b")
    await a.start()
    await b.start()
    try:
        await eventually(lambda: len(a.owned) == 4 and len(b.owned) == 4, timeout_s=20)
        name = agent_owned_by(a, "m")
        ref = client.agent("counter", name)
        for _ in range(5):
            await ref.request("increment", {"by": 1})
        assert await client.locate("counter", name) == "host-a"

        # commands keep flowing while the agent moves: none lost, none applied twice
        async def load(offset: int) -> None:
            for i in range(30):
                await ref.request("increment", {"by": 1}, command_id=f"{strategy}-{offset}-{i}")

        loaders = [asyncio.create_task(load(k)) for k in range(4)]
        await asyncio.sleep(0.05)
        moved = await client.migrate("counter", name, "host-b", strategy=strategy)
        assert moved["from"] == "host-a" and moved["to"] == "host-b" and moved["strategy"] == strategy
        await asyncio.gather(*loaders)
        assert await ref.request("get") == 5 + 120
        assert await client.locate("counter", name) == "host-b"
        log = await commits(client.nc, "counter", name)
        assert [c["n"] for c in log] == list(range(1, 126))
        writers = [c["_headers"]["Agt-Host"] for c in log]
        assert writers[:5] == ["host-a"] * 5 and writers[-1] == "host-b"
        switch = writers.index("host-b")
        assert set(writers[switch:]) == {"host-b"}, "the writers interleaved"
        owns = [c["own"] for c in log]
        assert owns == sorted(owns) and owns[-1] == moved["token"]
        # calls reach it too (the owner forwards them)
        assert await ref.request("get", delivery="at-most-once") == 125

        back = await client.migrate("counter", name, "host-a", strategy=strategy)
        assert back["from"] == "host-b" and back["to"] == "host-a"
        assert await ref.request("increment", {"by": 1}) == 126
        last = (await commits(client.nc, "counter", name))[-1]
        assert last["_headers"]["Agt-Host"] == "host-a" and last["own"] == back["token"]
    finally:
        await b.stop()
        await a.stop()


async def test_placed_agent_comes_home_when_its_host_dies(nats_server: NatsServer, client: Client) -> None:
    a, b = host(nats_server.url, "host-a"), host(nats_server.url, "host-b")
    await a.start()
    await b.start()
    try:
        await eventually(lambda: len(a.owned) == 4 and len(b.owned) == 4, timeout_s=20)
        name = agent_owned_by(a, "d")
        ref = client.agent("counter", name)
        await ref.request("increment", {"by": 2})
        await client.migrate("counter", name, "host-b")
        assert await ref.request("increment", {"by": 1}) == 3
        await b.stop(drain=False)  # gone without a goodbye: its member key expires
        assert await ref.request("increment", {"by": 1}, timeout=30) == 4
        last = (await commits(client.nc, "counter", name))[-1]
        assert last["_headers"]["Agt-Host"] == "host-a"
    finally:
        await b.stop()
        await a.stop()


async def test_resource_requirements_place_or_queue(nats_server: NatsServer, client: Client) -> None:
    a = host(nats_server.url, "plain")
    await a.start()
    gpu: Host | None = None
    try:
        ref = client.agent("renderer", "r1")
        # nobody offers a GPU: the caller is told, the command stays queued in the stream
        with pytest.raises(Unavailable) as info:
            await ref.request("render", {"n": 2}, command_id="r-1", timeout=10)
        assert info.value.details["queued"] is True and info.value.details["requires"] == ["gpu"]
        gpu = host(nats_server.url, "gpu-host", tags=["gpu"])
        await gpu.start()
        # once a capable host exists, the queued command runs there, then the next one
        await eventually(lambda: commits(client.nc, "renderer", "r1"), timeout_s=30)
        assert await ref.request("render", {"n": 1}, timeout=20) == 3
        log = await commits(client.nc, "renderer", "r1")
        assert log[0]["cmd"] == "r-1"
        assert {c["_headers"]["Agt-Host"] for c in log} == {"gpu-host"}
        assert await client.locate("renderer", "r1") == "gpu-host"
    finally:
        if gpu is not None:
            await gpu.stop()
        await a.stop()
