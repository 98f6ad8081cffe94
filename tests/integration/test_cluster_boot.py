"""The 3-node loopback cluster used by the cluster tests really replicates (R3)."""

from __future__ import annotations

from jetagents import Client, ClientSettings, Host, Registry
from jetagents._nats.api import js_api
from jetagents.examples import EXAMPLE_AGENTS
from jetagents.testing.server import NatsCluster
from tests.conftest import host_settings


async def test_r3_topology_on_three_nodes_survives_one_node_loss(nats_cluster: NatsCluster) -> None:
    url = nats_cluster.url
    async with Host(host_settings(url, replicas=3), Registry(EXAMPLE_AGENTS)):
        client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
        try:
            info = await js_api(client.nc, "$JS.API.STREAM.INFO.AGT_EVT", None, 5)
            assert info["config"]["num_replicas"] == 3
            assert len(info["cluster"].get("replicas", [])) == 2
            assert await client.agent("counter", "r3").request("increment", {"by": 1}) == 1
            nats_cluster.servers[2].kill()
            # the time to recover is NATS's raft elections plus the host's fence and consumer
            # restarts: 10.5 s median, 19.9 s worst on the loaded machine (ADR 0037); 20 s
            # failed a CI run at the tail, so the bound is the hand-off timeout's 45 s
            assert await client.agent("counter", "r3").request("increment", {"by": 1}, timeout=45) == 2
        finally:
            await client.close()
