"""Rebalancing by measured load on real processes (ADR 0044): three hosts on a 3-node
cluster, 80 % of the commands to 10 % of the partitions (chosen on one host). The leader
moves busy partitions apart; the CPU the host processes use (measured from outside) is more
even afterwards, and the ring stays put while the load does (no flapping). Short: the long
version with figures is ``loadtests/bench_rebalance.py``."""

from __future__ import annotations

from typing import Any

import pytest

from jetagents import Client, ClientSettings
from jetagents.testing.server import NatsCluster
from tests.chaos.skew import BALANCE_ENV, run_skew

pytestmark = pytest.mark.chaos
PARTITIONS = 20


async def test_skewed_load_is_spread_and_stays_put(nats_cluster: NatsCluster, host_process_factory: Any) -> None:
    env = {"JETAGENTS_REPLICAS": "3", "JETAGENTS_PARTITIONS": str(PARTITIONS), **BALANCE_ENV}
    hosts = [host_process_factory(nats_cluster.url, JETAGENTS_HOST_ID=f"h{i}", **env).start() for i in range(3)]
    client = await Client.connect(
        settings=ClientSettings(nats_url=nats_cluster.url, partitions=PARTITIONS, request_timeout_s=10)
    )
    try:
        for h in hosts:
            await h.wait_ready(client, timeout_s=60)
        pids = {f"h{i}": h.proc.pid for i, h in enumerate(hosts)}
        got = await run_skew(client, pids, PARTITIONS, window_s=2.0, steady_s=4.0, deadline_s=60.0)
        assert got["rebalanced"], got
        assert got["moved_while_steady"] == 0, got
        assert got["imbalance_after"] < got["imbalance_before"], got
    finally:
        await client.close()
