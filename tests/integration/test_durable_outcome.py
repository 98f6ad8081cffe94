"""A durable request whose outcome the stream has not told yet: the client resolves it
within the caller's timeout, or raises a retryable timeout; never a final error."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from jetagents import AgentTimeout, Client, ClientSettings, Host, NatsServer, Registry
from jetagents._client import sender as sender_module
from jetagents._core.wire import H_MSG_ID
from jetagents._nats.api import ERR_DUPLICATE_IN_PROCESS, JSApiError
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


async def test_an_id_stuck_in_process_is_sent_again_under_a_fresh_stream_id(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream leader change can leave a Nats-Msg-Id "in process" (10158) for the whole
    duplicate window (its proposal lost, or stored with the answer lost). Here the first copy
    IS stored, and every later answer to that id is 10158: the client gives the id up after
    its patience, sends a copy under a fresh stream id with the same command id, and the
    host runs the command once and answers (from the agent's record if the first copy ran)."""
    monkeypatch.setattr(sender_module, "IN_PROCESS_PATIENCE_S", 0.5)
    async with Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS)):
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            ref = client.agent("counter", "stuck")
            assert await ref.request("increment", {"by": 1}) == 1
            transport = client._sender.transport
            real = transport.publish_durable
            stuck: dict[str, int] = {}  # stream id -> the sends it got

            async def publish_durable(subject: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Any:
                msg_id = headers.get(H_MSG_ID, "")
                if msg_id == "stuck-1":  # the copy under a fresh id goes through
                    stuck[msg_id] = stuck.get(msg_id, 0) + 1
                    if stuck[msg_id] == 1:
                        await real(subject, body, headers, timeout_s)  # stored; its answer lost
                    raise JSApiError(ERR_DUPLICATE_IN_PROCESS, 400, "duplicate message id is in process")
                return await real(subject, body, headers, timeout_s)

            monkeypatch.setattr(transport, "publish_durable", publish_durable)
            assert await ref.request("increment", {"by": 1}, command_id="stuck-1", timeout=20) == 2
            assert stuck["stuck-1"] >= 2  # asked again with the same id before giving it up
            assert await ref.request("get", delivery="at-most-once") == 2  # applied once
            log = await commits(client.nc, "counter", "stuck")
            assert [c["n"] for c in log] == [1, 2]
        finally:
            await client.close()
