"""Two in-process hosts on one real nats-server: the ring splits the partitions, a joining
host takes its share through a handoff (release, then claim), a leaving one hands its
partitions back, agents keep their state across moves, and the lifecycle events go out
on agt.sys.>."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents._core.ids import partition_of
from jetagents._host.coordination import cluster_status
from jetagents._nats.kv import JetStreamStore
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import commits, eventually

FAST = {"member_ttl_s": 2.0, "lease_ttl_s": 2.0, "heartbeat_s": 0.3, "cluster_tick_s": 0.1}


async def test_join_and_leave_hand_partitions_over(nats_server: NatsServer, client: Client) -> None:
    events: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        events.append(orjson.loads(msg.data))

    await client.nc.subscribe("agt.sys.>", cb=on_event)
    store = JetStreamStore(client.nc, "agt_cluster")
    a = Host(host_settings(nats_server.url, host_id="host-a", **FAST), Registry(EXAMPLE_AGENTS))
    b = Host(host_settings(nats_server.url, host_id="host-b", **FAST), Registry(EXAMPLE_AGENTS))
    await a.start()
    try:
        assert a.ready and sorted(a.owned) == list(range(8))
        agents = [f"h{i}" for i in range(16)]
        for name in agents:
            await client.agent("counter", name).request("increment", {"by": 1})

        await b.start()  # joins: the leader (a) moves half of the partitions to b
        await eventually(lambda: len(a.owned) == 4 and len(b.owned) == 4, timeout_s=20)
        assert set(a.owned).isdisjoint(b.owned)
        st = await cluster_status(store)
        assert st["leader"] == "host-a" and st["unowned"] == 0
        assert sorted((h["host"], h["partitions_held"]) for h in st["hosts"]) == [("host-a", 4), ("host-b", 4)]
        # the state followed the partitions (snapshot on release, replay on claim)
        for name in agents:
            assert await client.agent("counter", name).request("increment", {"by": 1}) == 2
        moved = [n for n in agents if partition_of("counter", n, 8) in set(b.owned)]
        assert moved, "no agent of the test lives in b's partitions"
        for name in moved:
            hosts = [c["_headers"].get("Agt-Host") for c in await commits(client.nc, "counter", name)]
            owns = [c["own"] for c in await commits(client.nc, "counter", name)]
            assert hosts == ["host-a", "host-b"] and owns[0] < owns[1]
        # calls are answered by the owner, whichever host that is
        for name in agents:
            assert await client.agent("counter", name).request("get", delivery="at-most-once") == 2

        await b.stop()  # drains: it releases its partitions, then a claims them
        await eventually(lambda: sorted(a.owned) == list(range(8)), timeout_s=10)
        for name in agents:
            assert await client.agent("counter", name).request("increment", {"by": 1}) == 3
    finally:
        await b.stop()
        await a.stop()

    kinds = [e["kind"] for e in events]
    assert "leader" in kinds and "ring" in kinds
    assert {"host": "host-b", "kind": "member.joined"}.items() <= next(
        e for e in events if e["kind"] == "member.joined" and e["host"] == "host-b"
    ).items()
    started_b = {e["partition"] for e in events if e["kind"] == "partition.started" and e["host"] == "host-b"}
    released_b = {e["partition"] for e in events if e["kind"] == "partition.released" and e["host"] == "host-b"}
    assert len(started_b) == 4 and started_b == released_b


async def test_a_host_that_cannot_heartbeat_fences_itself(nats_server: NatsServer, client: Client) -> None:
    """Cut off from NATS for longer than the member TTL, a host stops its partitions and
    answers nothing from memory; when NATS is back it claims them again."""
    h = Host(host_settings(nats_server.url, host_id="lonely", **FAST), Registry(EXAMPLE_AGENTS))
    await h.start()
    try:
        assert await client.agent("counter", "f1").request("increment", {"by": 1}) == 1
        coord = h.coordinator
        assert coord is not None and len(coord.held) == 8
        nats_server.stop()
        await asyncio.sleep(2.8)  # > member TTL without a heartbeat
        await eventually(lambda: not coord.held, timeout_s=10)
        nats_server.start()
        await eventually(lambda: len(coord.held) == 8, timeout_s=30)
        c2 = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            assert await c2.agent("counter", "f1").request("increment", {"by": 1}, timeout=20) == 2
        finally:
            await c2.close()
    finally:
        await h.stop()


async def test_a_malformed_ring_is_replaced_by_the_leader(nats_server: NatsServer, client: Client) -> None:
    # Only hosts and admins may write the ring (ops/nats/accounts.conf); before the reply
    # check a client could make a host write {"ok": ...} there, and every round then failed
    # on the missing owners (0 of 64 partitions served once the owner died).
    a = Host(host_settings(nats_server.url, host_id="host-a", **FAST), Registry(EXAMPLE_AGENTS))
    await a.start()
    try:
        assert await client.agent("counter", "r1").request("increment", {"by": 1}) == 1
        kv = await client.nc.jetstream().key_value("agt_cluster")
        before = orjson.loads((await kv.get("ring")).value)
        await kv.put("ring", b'{"ok":true,"result":1}')

        async def replaced() -> bool:
            value = orjson.loads((await kv.get("ring")).value)
            return isinstance(value.get("owners"), list) and value["epoch"] > before["epoch"]

        await eventually(replaced, 15)
        assert await client.agent("counter", "r1").request("increment", {"by": 1}, timeout=10) == 2
    finally:
        await a.stop()


async def test_the_coordinators_own_tasks_run_under_the_hosts_supervisor(nats_server: NatsServer) -> None:
    """Its heartbeat loop, and every claim and release it starts, are tasks of the host's
    supervisor (group ``coordination``): tracked, a crash logged with its group, and a
    simulated crash ends them with the rest (ADR 0040 section 5)."""
    host = Host(host_settings(nats_server.url, partitions=8), Registry(EXAMPLE_AGENTS))
    await host.start()
    try:
        coord = host.coordinator
        assert coord is not None

        def names() -> set[str]:
            return {t.get_coro().__qualname__ for t in host.supervisor.tasks("coordination")}  # type: ignore[union-attr]

        assert "Coordinator._heartbeat_loop" in names()
        await eventually(lambda: len(coord.held) == 8, 30, 0.05)  # its claims were tasks of the group
        in_flight = {*coord.releasing.values(), *coord._acquire_tasks.values()}
        assert in_flight <= set(host.supervisor.tasks("coordination"))
        await host.stop(drain=True)  # leave: releases every partition, in tasks of the group
        assert not coord.held
        assert not [t for t in host.supervisor.tasks("coordination") if not t.done()]
    finally:
        await host.stop(drain=False)
