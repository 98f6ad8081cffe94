"""Pub-sub against a real nats-server and a real host (ADR 0049): declared and run-time
subscriptions, order per topic, unsubscribe, publishing from an action as a step, the
ephemeral subscription, bad topic messages dead-lettered once, and a bare nats-py publisher
and subscriber that use only the wire contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import orjson
import pytest

from jetagents import Client, ClientSettings, Host, Message, NatsServer, Registry
from jetagents._core.pubsub import delivery_id, matches, pattern_partition, validate_pattern, validate_topic
from tests.conftest import host_settings
from tests.integration.helpers import commits, dead_letters, eventually, stream_state
from tests.pubsub_agents import PUBSUB_AGENTS


@pytest.fixture
async def world(nats_server: NatsServer) -> AsyncIterator[tuple[Host, Client]]:
    host = Host(host_settings(nats_server.url, ack_wait_s=2.0), Registry(PUBSUB_AGENTS))
    await host.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=10))
    try:
        yield host, client
    finally:
        await client.close()
        await host.stop()


async def _seen(client: Client, agent_id: str) -> list[list[Any]]:
    return list(await client.agent("follower", agent_id).request("seen", delivery="at-most-once", timeout=5))


async def _wait_seen(client: Client, agent_id: str, count: int, timeout_s: float = 30) -> list[list[Any]]:
    got: list[list[Any]] = []

    async def enough() -> bool:
        nonlocal got
        got = await _seen(client, agent_id)
        return len(got) >= count

    await eventually(enough, timeout_s, 0.1)
    return got


async def test_declared_and_runtime_subscriptions_deliver_in_order_once(world: tuple[Host, Client]) -> None:
    host, client = world
    for a in ("a1", "a2"):  # activated: subscribed to orders.* by the class
        assert await _seen(client, a) == []
    await client.agent("follower", "a3").request("follow", {"pattern": "shipments.>"})
    await client.agent("follower", "a3").request("unfollow", {"pattern": "orders.*"})
    published = []
    for n in range(40):
        topic = ("orders.created", "orders.paid", "shipments.eu.sent")[n % 3]
        published.append((topic, await client.publish(topic, {"n": n}), n))
    orders = [[t, s, n] for t, s, n in published if t.startswith("orders.")]
    shipments = [[t, s, n] for t, s, n in published if t.startswith("shipments.")]
    assert await _wait_seen(client, "a1", len(orders)) == orders
    assert await _wait_seen(client, "a2", len(orders)) == orders
    assert await _wait_seen(client, "a3", len(shipments)) == shipments
    # exactly once, under the deterministic id, and nothing more after the last one
    log = await commits(client.nc, "follower", "a1")
    ids = [c["cmd"] for c in log if c["action"] == "on_order"]
    assert ids == [delivery_id(s, "follower", "a1") for _, s, _ in orders]
    await client.agent("follower", "a1").request("unfollow", {"pattern": "orders.*"})
    last = await client.publish("orders.created", {"n": 99})
    assert (await _wait_seen(client, "a2", len(orders) + 1))[-1] == ["orders.created", last, 99]
    assert len(await _seen(client, "a1")) == len(orders)
    assert host.stats["pubsub_deliveries"] >= 2 * len(orders) + len(shipments)
    # three subscribing agents, two distinct patterns: two consumers, not one per subscriber
    info = await client.nc.jetstream().stream_info("AGT_PUB")
    assert info.state.consumer_count == 2


async def test_at_least_once_subscribers_get_every_message_without_a_deterministic_id(
    world: tuple[Host, Client],
) -> None:
    _, client = world
    for a in ("l1", "l2"):  # activated: subscribed to loose.* by the class, at least once
        assert await client.agent("loose_follower", a).request("seen", delivery="at-most-once", timeout=5) == []
    published = [["loose.x", await client.publish("loose.x", {"n": n}), n] for n in range(10)]
    for a in ("l1", "l2"):
        got: list[Any] = []

        async def arrived(agent: str = a) -> bool:
            nonlocal got
            ref = client.agent("loose_follower", agent)
            got = list(await ref.request("seen", delivery="at-most-once", timeout=5))
            return len({tuple(g) for g in got}) >= len(published)

        await eventually(arrived, 30, 0.1)
        # at least once: each one arrived (a redelivery may repeat one)
        assert sorted({tuple(g) for g in got}, key=lambda g: g[1]) == [tuple(p) for p in published]
        log = [c for c in await commits(client.nc, "loose_follower", a) if c["action"] == "on_loose"]
        assert len(log) >= len(published)
        assert not {c["cmd"] for c in log} & {delivery_id(s, "loose_follower", a) for _, s, _ in published}


async def test_publish_from_an_action_is_a_step_and_ephemeral_subscribers_see_it(
    world: tuple[Host, Client],
) -> None:
    _, client = world
    async with client.subscribe("news.>") as stream:
        seq = await client.agent("follower", "p1").request("announce", {"topic": "news.today", "n": 7})
        msg = await asyncio.wait_for(anext(aiter(stream)), 10)
    assert isinstance(msg, Message) and (msg.topic, msg.data) == ("news.today", {"n": 7})
    # the publish was journaled: its step entry carries the sequence the action returned
    log = await commits(client.nc, "follower", "p1")
    steps = [c["j"] for c in log if c.get("j") and c["j"].get("k") == "step"]
    assert [(j["name"], j["value"]) for j in steps] == [("publish:news.today", seq)]
    # published under the step's key: the stream holds it once, with that id
    stored = await client.nc.jetstream().get_msg("AGT_PUB", seq)
    assert (stored.headers or {}).get("Nats-Msg-Id", "").startswith("follower.p1:")


async def test_a_bad_topic_message_is_dead_lettered_once_and_the_topic_goes_on(
    world: tuple[Host, Client], nats_server: NatsServer
) -> None:
    _, client = world
    assert await _seen(client, "b1") == []
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.publish("agt.pub.orders.created", b"{not json")
        good = await client.publish("orders.created", {"n": 1})
        assert await _wait_seen(client, "b1", 1) == [["orders.created", good, 1]]
        letters = [d for d in await dead_letters(client.nc) if d["subject"] == "agt.pub.orders.created"]
        assert len(letters) == 1 and letters[0]["error"]["code"] == "malformed"
    finally:
        await nc.close()


async def test_bare_nats_py_publishes_and_subscribes_with_the_wire_contract(
    world: tuple[Host, Client], nats_server: NatsServer
) -> None:
    _, client = world
    assert await _seen(client, "w1") == []  # activated: subscribed to orders.*
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.subscribe("agt.pub.orders.*")
        js = nc.jetstream()
        ack = await js.publish("agt.pub.orders.bare", b'{"n": 5}', headers={"Nats-Msg-Id": "bare-1"})
        again = await js.publish("agt.pub.orders.bare", b'{"n": 5}', headers={"Nats-Msg-Id": "bare-1"})
        assert ack.stream == "AGT_PUB" and again.duplicate and again.seq == ack.seq
        got = await sub.next_msg(timeout=5)
        assert got.subject == "agt.pub.orders.bare" and orjson.loads(got.data) == {"n": 5}
        assert await _wait_seen(client, "w1", 1) == [["orders.bare", ack.seq, 5]]
        state = await stream_state(nc, "AGT_PUB")
        assert state["messages"] >= 1
    finally:
        await nc.close()


def test_topics_and_patterns_are_validated() -> None:
    assert validate_topic("orders.created") == "orders.created"
    assert validate_pattern("orders.>") == "orders.>"
    for bad in ("", "orders..x", "orders.*", "a b", "orders.>", "x" * 201, ".".join("a" * 17), "ordérs"):
        with pytest.raises(ValueError):
            validate_topic(bad)
    for bad in ("orders.>.x", "or*ders", ">x", "a..b", "$JS.API"):
        with pytest.raises(ValueError):
            validate_pattern(bad)
    assert matches("orders.*", "orders.paid") and not matches("orders.*", "orders.eu.paid")
    assert matches("orders.>", "orders.eu.paid") and not matches("orders.>", "orders")


async def test_the_fan_out_is_spread_over_the_hosts_by_pattern(nats_server: NatsServer) -> None:
    """Each host runs the patterns whose partition (``pattern_partition``) it serves, not the
    leader all of them; every subscriber still gets its messages, whichever host runs them."""
    hosts = [
        Host(
            host_settings(nats_server.url, host_id=f"spread-{i}", membership="static", host_count=2, host_index=i),
            Registry(PUBSUB_AGENTS),
        )
        for i in range(2)
    ]
    for h in hosts:
        await h.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=10))
    try:
        patterns = [f"spread.t{i}.*" for i in range(8)]
        for i, pattern in enumerate(patterns):
            await client.subscribe_agent("follower", f"s{i}", pattern, action="on_order")
        want = [{p for p in patterns if pattern_partition(p, 8) % 2 == i} for i in range(2)]
        assert want[0] and want[1], "the patterns of this test land on both hosts"

        def running() -> list[set[str]]:
            return [{p for p in h.pubsub._running if p.startswith("spread.")} for h in hosts]

        await eventually(lambda: running() == want, 30, 0.05)
        for i, pattern in enumerate(patterns):
            await client.publish(pattern.replace("*", "x"), {"n": i})
        for i in range(len(patterns)):
            assert [row[2] for row in await _wait_seen(client, f"s{i}", 1)] == [i]
    finally:
        await client.close()
        for h in hosts:
            await h.stop()
