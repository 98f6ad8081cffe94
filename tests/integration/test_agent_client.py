"""The client an agent gets (``ctx.client``) talks to the same deployment as its host."""

from __future__ import annotations

from pydantic import BaseModel

from jetagents import Agent, Client, ClientSettings, Host, NatsServer, Registry, action
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings


class RelayState(BaseModel):
    pass


class Relay(Agent[RelayState]):
    """Calls a counter through ``ctx.client``: what an agent does to talk to another."""

    type_name = "relay"
    state_type = RelayState

    @action(read_only=True)
    async def bump(self, counter: str, by: int) -> int:
        return int(
            await self.ctx.client.agent("counter", counter).request(
                "increment", {"by": by}, delivery="at-most-once", timeout=10
            )
        )


async def test_an_agent_calls_another_under_the_hosts_subject_root(nats_server: NatsServer) -> None:
    """A host on subject root ``app1`` serves nothing under ``agt``: an agent's call to
    another agent must go out under ``app1`` too, or nobody answers it."""
    settings = host_settings(nats_server.url, subject_root="app1")
    async with Host(settings, Registry([*EXAMPLE_AGENTS, Relay])) as host:
        client = await Client.connect(
            settings=ClientSettings(nats_url=nats_server.url, subject_root="app1", partitions=8, request_timeout_s=10)
        )
        try:
            relay = client.agent("relay", "r1")
            assert await relay.request("bump", {"counter": "c1", "by": 2}, delivery="at-most-once") == 2
            assert await relay.request("bump", {"counter": "c1", "by": 3}) == 5
            assert await client.agent("counter", "c1").request("get", delivery="at-most-once") == 5
        finally:
            await client.close()
        # the rest of the deployment's settings follow the host too
        assert host._client.settings.partitions == settings.partitions == 8
        assert host._client.settings.max_payload_bytes == settings.max_payload_bytes
