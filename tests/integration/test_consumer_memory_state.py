"""Partition consumers keep their state in server memory (ADR 0032): a restarted server
forgets them, the host recreates them, and no command is lost or applied twice."""

from __future__ import annotations

import asyncio

import orjson

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings


async def _consumers(client: Client) -> list[str]:
    msg = await client.nc.request("$JS.API.CONSUMER.NAMES.AGT_CMD", b"{}", timeout=5)
    return sorted(orjson.loads(msg.data).get("consumers") or [])


async def test_server_restart_forgets_consumers_and_the_host_recreates_them(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url, partitions=4)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=4, request_timeout_s=30))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
            refs = [client.agent("counter", f"mem-{i}") for i in range(8)]
            for ref in refs:
                assert await ref.request("increment", {"by": 1}) == 1
            assert await _consumers(client) == ["p0", "p1", "p2", "p3"]

            await asyncio.to_thread(nats_server.restart)
            # the restarted server knows the streams (file storage) but not the consumers
            for _ in range(100):
                if client.nc.is_connected:
                    break
                await asyncio.sleep(0.1)

            # durable commands sent now are stored, and run once the host has recreated
            # the consumers it found missing
            results = await asyncio.gather(*(ref.request("increment", {"by": 1}) for ref in refs))
            assert results == [2] * len(refs)
            assert await _consumers(client) == ["p0", "p1", "p2", "p3"]
            assert host.stats["consumers_recreated"] >= 4
            assert host.stats["dead_letters"] == 0
            for ref in refs:
                assert await ref.request("get", delivery="at-most-once") == 2
    finally:
        await client.close()


async def test_commands_stored_before_a_restart_run_exactly_once(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url, partitions=4)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=4, request_timeout_s=30))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)):
            assert await client.agent("counter", "kept").request("increment", {"by": 1}) == 1
        # no host: these wait in the stream (no consumer state needed to remember them)
        ids = [await client.agent("counter", "kept").send("increment", {"by": 10}) for _ in range(3)]
        assert len(set(ids)) == 3
        await asyncio.to_thread(nats_server.restart)
        for _ in range(100):
            if client.nc.is_connected:
                break
            await asyncio.sleep(0.1)
        async with Host(settings, Registry(EXAMPLE_AGENTS)):
            for _ in range(200):
                value = await client.agent("counter", "kept").request("get", delivery="at-most-once")
                if value == 31:
                    break
                await asyncio.sleep(0.05)
            assert value == 31
            await asyncio.sleep(0.5)  # nothing runs a second time
            assert await client.agent("counter", "kept").request("get", delivery="at-most-once") == 31
    finally:
        await client.close()
