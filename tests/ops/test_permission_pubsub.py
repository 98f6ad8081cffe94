"""Pub-sub, coordination and work queues under the shipped accounts (ADR 0049, 0050): a ``client`` may
publish and listen to topics and use the coordination bucket, but cannot subscribe an agent
(the subscriptions bucket and the control subjects are the hosts'), so a topic never becomes
a command to an agent that did not subscribe, whatever the topic says."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import pytest

from jetagents import Client, ClientSettings, Host, Registry
from jetagents._core.pubsub import subscription_key
from jetagents._nats.api import js_api
from tests.conftest import host_settings
from tests.integration.helpers import eventually
from tests.ops.nats_configs import CLIENT_INBOX, HOST_INBOX, OPS_NATS, BootedConfigs, Node, Violations, boot
from tests.pubsub_agents import PUBSUB_AGENTS


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedConfigs]:
    booted = boot(tmp_path_factory.mktemp("perm-pubsub"), [Node("solo", OPS_NATS / "single.conf")], with_accounts=True)
    try:
        yield booted
    finally:
        booted.stop()


async def test_a_client_publishes_and_coordinates_but_never_subscribes_an_agent(server: BootedConfigs) -> None:
    settings = host_settings(server.url("host"), host_id="perm-pubsub", inbox_prefix=HOST_INBOX)
    seen = Violations()
    async with Host(settings, Registry(PUBSUB_AGENTS)):
        client = await Client.connect(
            settings=ClientSettings(nats_url=server.url("client"), partitions=8, inbox_prefix=CLIENT_INBOX)
        )
        atk = await nats.connect(server.url("client"), inbox_prefix=CLIENT_INBOX, error_cb=seen.record)
        admin = await nats.connect(server.url("admin"))
        try:
            follower = client.agent("follower", "f1")
            assert await follower.request("seen", delivery="at-most-once") == []  # subscribed by its host
            victim = client.agent("follower", "victim")  # never activated: subscribed to nothing
            # the legitimate paths: a topic message reaches the subscriber, an ephemeral listener
            async with client.subscribe("orders.>") as stream:
                seq = await client.publish("orders.created", {"n": 1})
                got = await asyncio.wait_for(anext(aiter(stream)), 10)
            assert got.data == {"n": 1}

            async def delivered() -> bool:
                return bool(await follower.request("seen", delivery="at-most-once"))

            await eventually(delivered, 30, 0.1)
            # leases, barriers and the cache work under the client's permissions
            async with client.lease("perm", ttl_s=5) as lease:
                await lease.put("perm-key", {"v": 1})
            await client.barrier("perm-barrier", parties=1, timeout_s=5)
            assert await client.get_or_compute("perm-cache", lambda: 42, ttl_s=5) == 42
            # and work queues: put a job, a worker takes and acknowledges it
            q = client.work_queue("perm", visibility_s=5)
            await q.put({"job": 1})
            took: list[object] = []
            stop = asyncio.Event()

            def work(data: object) -> None:
                took.append(data)
                stop.set()

            await asyncio.wait_for(q.process(work, stop=stop), 20)
            assert took == [{"job": 1}]
            # an agent works a queue itself, under the host user's permissions
            await q.put({"job": 2})
            await q.put({"job": 3})
            taken = await follower.request("take_jobs", {"queue": "perm", "n": 2}, timeout=30)
            assert taken == [{"job": 2}, {"job": 3}]

            async def acked() -> bool:  # acknowledgements are published, not awaited
                return (await js_api(admin, "$JS.API.STREAM.INFO.AGT_WORK", None, 5))["state"]["messages"] == 0

            await eventually(acked, 30, 0.1)

            # the attacks: subscribe the victim through the bucket, poke a control subject
            key = subscription_key("orders.*", "follower", "victim")
            await atk.publish(f"$KV.agt_subs.{key}", b'{"pattern":"orders.*","type":"follower","id":"victim"}')
            await seen.wait_for('Permissions Violation for Publish to "$KV.agt_subs')
            await atk.publish("agt.pubctl.x", b"", headers={"Agt-Sub-Key": key})
            await seen.wait_for('Permissions Violation for Publish to "agt.pubctl.x"')
            # a topic shaped like a command subject is only a topic
            await client.publish("cmd.follower.victim", {"n": 2})
            await client.publish("orders.paid", {"n": 3})
            await eventually(delivered, 30, 0.1)

            async def two() -> bool:
                return len(await follower.request("seen", delivery="at-most-once")) == 2

            await eventually(two, 30, 0.1)
            resp = await js_api(admin, "$JS.API.STREAM.INFO.KV_agt_subs", {"subjects_filter": ">"}, 5)
            assert f"$KV.agt_subs.{key}" not in (resp["state"].get("subjects") or {})
            assert await victim.request("seen", delivery="at-most-once") == []
            assert seq > 0
        finally:
            await admin.close()
            await atk.close()
            await client.close()
