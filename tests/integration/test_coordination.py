"""Leases, barriers and the cache against a real nats-server (ADR 0050): a holder that stops
renewing (paused past its TTL) loses the lease to a new holder and its fenced writes are
refused by the server; a barrier one party never reaches times out with a typed error for
the others; 100 concurrent misses over two connections compute once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jetagents import BarrierTimeout, Client, ClientSettings, LeaseBusy, LeaseLost, NatsServer
from jetagents._nats.api import ensure_stream
from jetagents._nats.coordination import coord_bucket_config


@pytest.fixture
async def clients(nats_server: NatsServer) -> AsyncIterator[list[Client]]:
    made = [
        await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=5))
        for _ in range(3)
    ]
    await ensure_stream(made[0].nc, coord_bucket_config("agt_coord", 1), 5)  # what a host does on start
    try:
        yield made
    finally:
        for c in made:
            await c.close()


async def test_a_paused_holder_loses_the_lease_and_its_fenced_writes_are_refused(clients: list[Client]) -> None:
    old_client, new_client, _ = clients
    old = await old_client.lease("jobs.leader", ttl_s=2).acquire()
    assert await old.put("jobs.last", {"by": "old", "n": 1}) > old.token
    with pytest.raises(LeaseBusy):  # held and renewed: nobody else gets it
        await new_client.lease("jobs.leader", ttl_s=2, wait_s=3).acquire()
    old.pause_renewals()  # what a stalled process does: it stops renewing, and does not know
    async with new_client.lease("jobs.leader", ttl_s=2, wait_s=20) as new:
        assert new.token > old.token
        await new.put("jobs.last", {"by": "new", "n": 2})
        assert not old.lost.is_set()  # the old holder has not noticed: the server decides
        with pytest.raises(LeaseLost):
            await old.put("jobs.last", {"by": "old", "n": 3})
        assert old.lost.is_set()
        assert await new.get("jobs.last") == {"by": "new", "n": 2}
        await new.put("jobs.last", {"by": "new", "n": 4})  # the new holder goes on
    await old.release()  # lost: releases nothing
    # released by the new holder: free at once
    async with old_client.lease("jobs.leader", ttl_s=2, wait_s=5) as third:
        assert third.token > new.token


async def test_a_barrier_one_party_never_reaches_times_out_for_the_others(clients: list[Client]) -> None:
    a, b, c = clients
    await asyncio.gather(*(x.barrier("round-1", parties=3, timeout_s=10) for x in clients))

    async def dies() -> None:  # a party that crashes before it arrives
        await asyncio.sleep(0.05)
        raise RuntimeError("party 3 crashed")

    outcomes = await asyncio.gather(
        a.barrier("round-2", parties=3, timeout_s=2),
        b.barrier("round-2", parties=3, timeout_s=2),
        dies(),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], RuntimeError)
    for out in outcomes[:2]:
        assert isinstance(out, BarrierTimeout), out
        assert out.details == {"barrier": "round-2", "arrived": 2, "parties": 3}
        assert out.retryable and out.code == "timeout"
    del c


async def test_a_hundred_concurrent_misses_compute_once(clients: list[Client]) -> None:
    computed: list[int] = []

    async def compute() -> dict[str, int]:
        computed.append(1)
        await asyncio.sleep(0.3)  # long enough for every miss to arrive meanwhile
        return {"rate": 17}

    asks = [clients[i % 2].get_or_compute("fx.eur", compute, ttl_s=1) for i in range(100)]
    values = await asyncio.gather(*asks)
    assert values == [{"rate": 17}] * 100
    assert len(computed) == 1
    assert await clients[2].get_or_compute("fx.eur", compute, ttl_s=1) == {"rate": 17}  # a hit
    assert len(computed) == 1

    async def expired() -> None:  # per-key TTL: after 1 s the next miss computes again
        while len(computed) < 2:
            await clients[2].get_or_compute("fx.eur", compute, ttl_s=1)
            await asyncio.sleep(0.2)

    await asyncio.wait_for(expired(), 15)
    assert len(computed) == 2
