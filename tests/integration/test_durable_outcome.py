"""A durable request whose outcome the stream has not told yet: the client resolves it
within the caller's timeout, or raises a retryable timeout; never a final error."""

from __future__ import annotations

import asyncio
import signal

import pytest

from jetagents import AgentTimeout, Client, ClientSettings, Host, NatsServer, Registry
from jetagents.examples import EXAMPLE_AGENTS
from jetagents.testing.server import NatsCluster
from tests.conftest import host_settings
from tests.integration.helpers import commits


async def test_same_command_id_while_the_first_is_being_stored(nats_cluster: NatsCluster) -> None:
    """On a replicated stream a publish whose Nats-Msg-Id is still being stored is refused
    with JetStream error 10158 ("duplicate message id is in process"): what a re-send after
    a lost PubAck meets. The outcome is unknown, not failed: each caller asks again with the
    same id until the stream says stored or duplicate, and gets the one result."""
    url = nats_cluster.url
    async with Host(host_settings(url, replicas=3), Registry(EXAMPLE_AGENTS)):
        client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8, request_timeout_s=20))
        try:
            ref = client.agent("counter", "inproc")
            assert await ref.request("increment", {"by": 1}) == 1  # the topology is up and served
            for k in range(3):
                results = await asyncio.gather(
                    *(ref.request("increment", {"by": 1}, command_id=f"same-{k}") for _ in range(4))
                )
                assert results == [k + 2] * 4  # applied once, every caller told its result
            assert await ref.request("get") == 4
            log = await commits(client.nc, "counter", "inproc")
            assert [c["n"] for c in log] == [1, 2, 3, 4]
        finally:
            await client.close()


async def test_durable_request_out_of_time_is_a_timeout(nats_server: NatsServer) -> None:
    """The stream cannot answer within the caller's short timeout (its server stalls):
    the caller hears ``AgentTimeout`` (the command may be stored: re-send with the same
    command id), not ``Unavailable``."""
    async with Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS)):
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            ref = client.agent("counter", "short")
            assert await ref.request("increment", {"by": 1}) == 1
            assert nats_server.proc is not None
            nats_server.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(AgentTimeout, match="same command id dur-1") as info:
                    await ref.request("increment", {"by": 1}, command_id="dur-1", timeout=0.3)
                assert info.value.retryable
                with pytest.raises(AgentTimeout):
                    await ref.send("increment", {"by": 1}, command_id="dur-2", timeout=0.3)
            finally:
                nats_server.proc.send_signal(signal.SIGCONT)
            # the stalled sends were stored after all: re-sending with the same ids
            # resolves them, each applied once
            assert await ref.request("increment", {"by": 1}, command_id="dur-1", timeout=30) in (2, 3)
            await ref.send("increment", {"by": 1}, command_id="dur-2", timeout=30)
            async with asyncio.timeout(30):
                while await ref.request("get", timeout=30) != 3:
                    await asyncio.sleep(0.05)
        finally:
            await client.close()
