"""Pub-sub through a SIGKILL and constant passivation (ADR 0049): a real host process runs
the subscribers with room for 3 agents in memory (so each of the 8 subscribers is passivated
and rebuilt again and again), is killed with SIGKILL in the middle of the stream and
replaced; every subscriber still handles every message exactly once, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from jetagents import Client, ClientSettings, JetAgentsError, NatsServer
from tests.integration.helpers import commits

pytestmark = pytest.mark.chaos

FOLLOWERS = [f"f{i}" for i in range(8)]
MESSAGES = 150
ENV = {
    "JETAGENTS_AGENTS": '["tests.pubsub_agents:PUBSUB_AGENTS", "jetagents.examples:EXAMPLE_AGENTS"]',
    "JETAGENTS_MAX_ACTIVE_AGENTS": "3",
}


async def _publish(client: Client, topic: str, n: int) -> int:
    while True:  # what a careful publisher does: the same message id until stored
        try:
            return await client.publish(topic, {"n": n}, msg_id=f"chaos-{n}")
        except JetAgentsError as err:
            if not err.retryable:
                raise
            await asyncio.sleep(0.1)


async def _stats(client: Client) -> dict[str, Any]:
    msg = await client.nc.request("$SRV.STATS.jetagents-host", b"", timeout=2)
    return dict(orjson.loads(msg.data)["endpoints"][0]["data"]["stats"])


async def test_subscribers_killed_and_passivated_mid_stream_lose_nothing(
    nats_server: NatsServer, host_process_factory: Any
) -> None:
    first = host_process_factory(nats_server.url, **ENV).start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=5))
    try:
        await first.wait_ready(client)
        for f in FOLLOWERS:  # activated once: subscribed to orders.* by the class
            await client.agent("follower", f).request("seen", delivery="at-most-once", timeout=10)
        published: list[list[Any]] = []
        second = None
        for n in range(MESSAGES):
            topic = "orders.created" if n % 2 else "orders.paid"
            published.append([topic, await _publish(client, topic, n), n])
            if n == MESSAGES // 3:
                passivated = (await _stats(client)).get("passivations", 0)
                first.kill()  # SIGKILL: fan-out and subscribers die mid-stream
                second = host_process_factory(nats_server.url, **ENV).start()
        assert second is not None
        await second.wait_ready(client, timeout_s=30)

        async def caught_up(f: str) -> list[list[Any]]:
            while True:
                try:
                    seen = await client.agent("follower", f).request("seen", delivery="at-most-once", timeout=5)
                except JetAgentsError:
                    seen = []
                if len(seen) >= MESSAGES:
                    return list(seen)
                await asyncio.sleep(0.25)

        for f in FOLLOWERS:
            seen = await asyncio.wait_for(caught_up(f), 90)
            assert seen == published, f"{f}: lost, duplicated or reordered"
            log = [c for c in await commits(client.nc, "follower", f) if c["action"] == "on_order"]
            assert len(log) == MESSAGES and len({c["cmd"] for c in log}) == MESSAGES
        assert passivated > 0, "the subscribers were passivated mid-stream"
        assert (await _stats(client)).get("passivations", 0) > 0
    finally:
        await client.close()
