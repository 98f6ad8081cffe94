"""Rebalancing by measured load on real processes, with the DEFAULT settings (ADR 0044: no
rebalance setting given): three hosts on a 3-node cluster, 80 % of the commands to 10 % of
the partitions (chosen on one host). The leader moves busy partitions apart; the CPU the host
processes use (measured from outside) is more even afterwards, and the ring stays put while
the load does (no flapping). The long version with figures is ``loadtests/bench_rebalance.py``."""

from __future__ import annotations

from typing import Any

import pytest

from jetagents import Client, ClientSettings, HostSettings
from jetagents.testing.server import NatsCluster
from tests.chaos.skew import run_skew

pytestmark = pytest.mark.chaos
PARTITIONS = 20


async def test_skewed_load_is_spread_and_stays_put_with_the_default_settings(
    nats_cluster: NatsCluster, host_process_factory: Any
) -> None:
    d = HostSettings()
    assert d.rebalance_interval_s > 0  # on by default
    # A second move needs the hot host hot again at ``persist`` decisions after the first
    # (its streak restarts): watching the ring that long after the move shows any flapping.
    flap_s = d.rebalance_persist * d.rebalance_interval_s + 1.0
    env = {
        "JETAGENTS_REPLICAS": "3",
        "JETAGENTS_PARTITIONS": str(PARTITIONS),
        "JETAGENTS_AGENTS": '["jetagents.examples:EXAMPLE_AGENTS", "tests.chaos.burner:AGENTS"]',
    }
    hosts = [host_process_factory(nats_cluster.url, JETAGENTS_HOST_ID=f"h{i}", **env).start() for i in range(3)]
    client = await Client.connect(
        settings=ClientSettings(nats_url=nats_cluster.url, partitions=PARTITIONS, request_timeout_s=10)
    )
    try:
        for h in hosts:
            await h.wait_ready(client, timeout_s=60)
        pids = {f"h{i}": h.proc.pid for i, h in enumerate(hosts)}
        got = await run_skew(client, pids, PARTITIONS, window_s=2.0, steady_s=flap_s - 2.0, deadline_s=60.0, burn_ms=2)
        assert got["rebalanced"], got
        assert got["moved_while_steady"] == 0, got
        assert 0 < got["moved_to_balance"] <= 2 * d.rebalance_moves, got
        assert got["imbalance_after"] < got["imbalance_before"], got
        assert got["exactly_once_kept"], got  # no increment lost or applied twice across the moves
    finally:
        await client.close()
