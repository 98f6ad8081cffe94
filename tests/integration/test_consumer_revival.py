"""A partition whose pull requests vanish unanswered gets its consumer back.

After NATS node faults a consumer can be deleted (a ``CONSUMER.DELETE`` whose reply was lost
is still applied, after the host started the partition again) while something keeps
receiving its pull subject and never answers: a stale leader on the node that was paused, a
consumer being stopped (the server drops pulls to it without a status). Nobody answers "no
responders" then, so the host never heard that the consumer was gone and its durable
commands stayed unserved for good while calls to the same partition were answered (ADR 0037).
"""

from __future__ import annotations

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents._nats.api import js_api
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings


async def test_pulls_swallowed_by_a_stale_subscriber_revive_the_consumer(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url, partitions=1, pull_expires_s=1.0)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=1, request_timeout_s=60))
    swallower = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=1))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
            ref = client.agent("counter", "revive")
            assert await ref.request("increment", {"by": 1}) == 1

            # something receives the consumer's pull subject and never answers (so the
            # server sends no "no responders"), then the consumer disappears
            swallowed = 0

            async def swallow(_msg: object) -> None:
                nonlocal swallowed
                swallowed += 1

            sub = await swallower.nc.subscribe("$JS.API.CONSUMER.MSG.NEXT.AGT_CMD.p0", cb=swallow)
            await swallower.nc.flush()
            await js_api(client.nc, "$JS.API.CONSUMER.DELETE.AGT_CMD.p0", None, 5.0)

            # a durable command is stored, and runs once the host has its consumer back
            assert await ref.request("increment", {"by": 1}) == 2
            assert swallowed > 0  # the host's pulls did reach the stale subscriber
            assert host.stats["consumers_recreated"] >= 1
            assert await ref.request("get", delivery="at-most-once") == 2
            await sub.unsubscribe()
    finally:
        await swallower.close()
        await client.close()
