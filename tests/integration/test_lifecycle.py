"""Activation, snapshots, passivation (idle and LRU), the event-log fence."""

from __future__ import annotations

import asyncio

import orjson

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import commits, eventually


async def _snapshot(client: Client, key: str) -> dict | None:
    kv = await client.nc.jetstream().key_value("agt_snap")
    try:
        entry = await kv.get(key)
    except Exception:
        return None
    return orjson.loads(entry.value) if entry.value else None


async def test_snapshot_every_n_and_rebuild(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url, snapshot_every=5)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
            ref = client.agent("counter", "snap")
            for _ in range(12):
                await ref.request("increment", {"by": 1})

            async def snapped() -> bool:
                snap = await _snapshot(client, "counter.snap")
                return bool(snap) and snap["n"] >= 10

            await eventually(snapped, 10)
            assert host.stats["activations"] == 1
        snap = await _snapshot(client, "counter.snap")
        assert snap is not None and snap["n"] == 12  # the drain wrote a final snapshot
        assert snap["state"] == {"value": 12}
        log = await commits(client.nc, "counter", "snap")
        assert snap["seq"] == log[-1]["_seq"]
        # a new host rebuilds from the snapshot and keeps the fence position
        async with Host(settings, Registry(EXAMPLE_AGENTS)):
            assert await ref.request("increment", {"by": 1}) == 13
        assert [c["n"] for c in await commits(client.nc, "counter", "snap")] == list(range(1, 14))
    finally:
        await client.close()


async def test_unusable_snapshot_falls_back_to_full_replay(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)):
            ref = client.agent("account", "corrupt")
            await ref.request("deposit", {"amount": 30})
            await ref.request("withdraw", {"amount": 5})
        kv = await client.nc.jetstream().key_value("agt_snap")
        await kv.put("account.corrupt", orjson.dumps({"v": 1, "state": {"balance": "lots"}, "seq": 999, "n": 7}))
        async with Host(settings, Registry(EXAMPLE_AGENTS)):
            assert await ref.request("balance") == 25
            assert await ref.request("deposit", {"amount": 1}) == 26
    finally:
        await client.close()


async def test_idle_passivation_and_reactivation(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url, idle_passivate_s=0.5, ack_wait_s=1.0)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
            ref = client.agent("counter", "idle")
            await ref.request("increment", {"by": 3})
            assert "counter.idle" in host.activations
            await eventually(lambda: "counter.idle" not in host.activations, 10)
            assert host.stats["passivations"] >= 1
            # the snapshot is written by a side task as the agent leaves memory: not at once
            await eventually(lambda: _snapshot(client, "counter.idle"), 5)
            snap = await _snapshot(client, "counter.idle")
            assert snap is not None and snap["state"] == {"value": 3}  # snapshot on passivation
            assert await ref.request("increment", {"by": 1}) == 4
            assert host.stats["activations"] == 2
    finally:
        await client.close()


async def test_lru_budget(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url, max_active_agents=3)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
            for i in range(6):
                await client.agent("counter", f"lru{i}").request("increment", {"by": i + 1})
                await asyncio.sleep(0.01)
            assert len(host.activations) <= 3 + 1  # the budget, plus the one being activated
            assert "counter.lru5" in host.activations and "counter.lru0" not in host.activations
            # evicted agents come back with their state
            for i in range(6):
                assert await client.agent("counter", f"lru{i}").request("get") == i + 1
    finally:
        await client.close()


async def test_fence_refuses_a_second_writer(nats_server: NatsServer) -> None:
    """Another writer appends to the agent's log behind the host's back. The host's next
    append is refused by the stream (expected last subject sequence), the host drops the
    agent, rebuilds it from the log and applies the command on top: nothing lost, no gap."""
    settings = host_settings(nats_server.url)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
            ref = client.agent("counter", "fenced")
            assert await ref.request("increment", {"by": 1}) == 1
            foreign = {
                "n": 2,
                "cmd": "foreign-1",
                "action": "increment",
                "events": [{"type": "Incremented", "data": {"by": 100}}],
                "result": 101,
            }
            ack = await client.nc.jetstream().publish(
                "agt.evt.counter.fenced", orjson.dumps(foreign), headers={"Nats-Expected-Last-Subject-Sequence": "1"}
            )
            assert ack.seq > 1
            assert await ref.request("increment", {"by": 1}) == 102
            assert host.stats["fenced"] == 1
            assert [c["n"] for c in await commits(client.nc, "counter", "fenced")] == [1, 2, 3]
    finally:
        await client.close()


async def test_priority_high_runs_before_low(nats_server: NatsServer) -> None:
    """With one worker busy, queued agents are taken by priority, not arrival."""
    import jetagents

    order: list[str] = []
    gate = asyncio.Event()

    from pydantic import BaseModel

    class S(BaseModel):
        pass

    class Slow(jetagents.Agent[S]):
        type_name = "slowprio"
        state_type = S

        @jetagents.action
        async def work(self, tag: str) -> str:
            if tag == "blocker":
                await gate.wait()
            order.append(tag)
            return tag

    settings = host_settings(nats_server.url, workers=1)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry([Slow])):
            blocker = asyncio.ensure_future(
                client.agent("slowprio", "b").request("work", {"tag": "blocker"}, delivery="at-most-once")
            )
            await asyncio.sleep(0.3)
            low = [
                asyncio.ensure_future(
                    client.agent("slowprio", f"l{i}").request("work", {"tag": f"low{i}"}, priority="low")
                )
                for i in range(3)
            ]
            await asyncio.sleep(0.5)
            high = asyncio.ensure_future(
                client.agent("slowprio", "h").request("work", {"tag": "high"}, priority="high")
            )
            await asyncio.sleep(0.5)
            gate.set()
            await asyncio.gather(blocker, high, *low)
            assert order[0] == "blocker" and order[1] == "high"
    finally:
        await client.close()
