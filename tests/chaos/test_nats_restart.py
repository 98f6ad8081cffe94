"""nats-server restarted under load: clients and hosts reconnect; no acknowledged
command is lost, none is applied twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from typing import Any

import pytest

from jetagents import Client, ClientSettings, NatsServer
from tests.chaos.test_kill import _check_logs, _send_until_acked

pytestmark = pytest.mark.chaos


async def test_nats_server_restart_under_load(nats_server: NatsServer, host_process_factory: Any) -> None:
    hp = host_process_factory(nats_server.url).start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        await hp.wait_ready(client)
        expected: Tally[str] = Tally()
        acked = 0
        stop_at = time.monotonic() + 8
        deadline = time.monotonic() + 90

        async def worker(w: int) -> None:
            nonlocal acked
            i = 0
            while time.monotonic() < stop_at:
                agent = f"r{(w + i) % 20}"
                await _send_until_acked(client, agent, f"r-{w}-{i}", deadline)
                expected[agent] += 1
                acked += 1
                i += 1

        load = asyncio.gather(*[worker(w) for w in range(24)])
        await asyncio.sleep(2.5)
        before = acked
        await asyncio.to_thread(nats_server.restart)
        await load
        assert acked > before > 0
        assert hp.proc is not None and hp.proc.poll() is None, "the host died with the server"
        await _check_logs(client, expected)
    finally:
        await client.close()
