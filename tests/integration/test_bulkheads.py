"""Bulkheads (issue 17): a hung type saturates only its own worker pool, against a real
nats-server.

* without a pool, hung actions of one type take every shared worker and a counter's call
  waits behind them (the defect the issue measured);
* with the type in a pool of 2 workers and a queue of 2, the same load runs 2, queues 2 and
  refuses the rest at once with a retryable ``unavailable`` (reason ``pool_saturated``), and
  the counter is answered at once throughout;
* durable commands refused by a saturated pool are handed back and all run later, in order;
* a type listed in two pools is a settings error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from jetagents import Client, HostSettings, NatsServer
from jetagents._nats.api import connect as raw_connect
from jetagents.examples import Counter
from tests.integration.helpers import HostFactory, call_json, commits, eventually, started_hosts
from tests.integration.test_stuck_agents import Stuck


@pytest.fixture
async def make_host(nats_server: NatsServer) -> AsyncIterator[HostFactory]:
    async with started_hosts(nats_server.url, [Stuck, Counter]) as make:
        yield make


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await raw_connect(nats_server.url, name="bulkhead-test")
    try:
        yield conn
    finally:
        await conn.close()


_call = call_json


async def test_without_a_pool_a_hung_type_takes_every_shared_worker(make_host: HostFactory, nc: NATS) -> None:
    host = await make_host(workers=4, action_timeout_s=4.0)
    hung = [asyncio.ensure_future(_call(nc, f"agt.call.stuck.h{i}", {"action": "hang"})) for i in range(4)]
    await eventually(lambda: sum(a.scheduled for a in host.activations.values()) == 4, timeout_s=20)
    # every worker holds a hung action: the counter waits for one to time out
    with pytest.raises(TimeoutError):
        await _call(nc, "agt.call.counter.starved", {"action": "increment"}, timeout=1.5)
    await asyncio.gather(*hung)


async def test_a_hung_type_saturates_only_its_own_pool(make_host: HostFactory, nc: NATS) -> None:
    pools = {"slow": {"types": ["stuck"], "workers": 2, "queue_max": 2}}
    host = await make_host(workers=4, action_timeout_s=4.0, pools=pools)
    hung = [asyncio.ensure_future(_call(nc, f"agt.call.stuck.h{i}", {"action": "hang"})) for i in range(10)]
    # six of ten are refused at once: two run, two wait for the pool's workers
    await eventually(lambda: sum(f.done() for f in hung) >= 6, timeout_s=20)
    refused = [f.result() for f in hung if f.done()]
    assert len(refused) == 6
    for r in refused:
        assert r["ok"] is False
        assert r["error"]["code"] == "unavailable"
        assert r["error"]["retryable"] is True
        assert r["error"]["details"] == {"applied": False, "reason": "pool_saturated", "pool": "slow"}
    # the shared workers are all free: the counter is answered at once, every time
    for i in range(20):
        assert await _call(nc, f"agt.call.counter.c{i}", {"action": "increment"}, timeout=1.5) == {
            "ok": True,
            "result": 1,
        }
    codes = sorted(r["error"]["code"] for r in await asyncio.gather(*hung))
    assert codes == ["action_timeout"] * 4 + ["unavailable"] * 6
    await eventually(lambda: host.scheduler.inflight_count == 0, timeout_s=10)
    # the pool is free again
    assert await _call(nc, "agt.call.stuck.after", {"action": "add", "params": {"item": 7}}) == {
        "ok": True,
        "result": [7],
    }


async def test_durable_commands_refused_by_a_saturated_pool_all_run_later_in_order(
    make_host: HostFactory, nc: NATS, client: Client
) -> None:
    pools = {"slow": {"types": ["stuck"], "workers": 1, "queue_max": 0}}
    host = await make_host(action_timeout_s=10.0, pools=pools)
    blocker = asyncio.ensure_future(client.agent("stuck", "blocker").request("slow", {"seconds": 1.0}, timeout=30))
    await asyncio.sleep(0.3)
    ref = client.agent("stuck", "ordered")
    for i in range(4):
        await ref.send("add", {"item": i})
    assert await blocker == "done"
    assert host.stats["agent_busy"] >= 1  # the pool refused (handed back) at least one of them

    async def all_applied() -> bool:
        return len(await commits(nc, "stuck", "ordered")) == 4

    await eventually(all_applied, timeout_s=60)
    items = [e["data"]["item"] for c in await commits(nc, "stuck", "ordered") for e in c["events"]]
    assert items == list(range(4))


def test_a_type_in_two_pools_is_a_settings_error() -> None:
    two = {"a": {"types": ["stuck"], "workers": 1}, "b": {"types": ["counter", "stuck"], "workers": 1}}
    with pytest.raises(ValidationError, match="'stuck' is in two worker pools"):
        HostSettings(pools=two)
    with pytest.raises(ValidationError):
        HostSettings(pools={"a": {"types": [], "workers": 1}})
