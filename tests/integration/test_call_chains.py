"""Call chains with a real nats-server and an in-process host (ADR 0042 section 7): a call
that comes back along its own chain (A -> B -> A) runs at once, both as a durable
``self.call`` and as a plain ``ctx.client`` call; two chains calling each other
(A -> B while B -> A) fail fast with ``deadlock``; the headers are checked as hostile input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import BaseModel

from jetagents import (
    Agent,
    CallCycle,
    Client,
    ClientSettings,
    Deadlock,
    Event,
    Host,
    NatsServer,
    Registry,
    action,
    applies,
)
from tests.conftest import host_settings
from tests.integration.helpers import commits


class PingState(BaseModel):
    hits: list[str] = []


class Hit(Event):
    what: str


class Ping(Agent[PingState]):
    type_name = "ping"
    state_type = PingState
    BARRIER: ClassVar[asyncio.Barrier | None] = None

    @action
    async def outer(self, peer: str, durable: bool, back: str = "inner") -> list[Any]:
        self.emit(Hit(what="outer-before"))
        params = {"back": self.id.id, "durable": durable, "action": back}
        if durable:  # a journaled call through the stream
            got = await self.call("ping", peer, "middle", params, timeout=15)
        else:  # a plain core request made inside the action
            ref = self.ctx.client.agent("ping", peer)
            got = await ref.request("middle", params, delivery="at-most-once", timeout=15)
        self.emit(Hit(what="outer-after"))
        return [got, self.state.hits]

    @action
    async def middle(self, back: str, durable: bool, action: str) -> Any:
        if durable:
            return await self.call("ping", back, action, {}, timeout=15)
        return await self.ctx.client.agent("ping", back).request(action, delivery="at-most-once", timeout=15)

    @action
    async def inner(self) -> list[str]:
        self.emit(Hit(what="inner"))
        return self.state.hits

    @action(reentrant=False)
    async def guarded(self) -> list[str]:
        return self.state.hits

    @action
    async def cross(self, peer: str) -> Any:
        barrier = type(self).BARRIER
        assert barrier is not None
        await barrier.wait()  # both agents are running their cross before either calls
        return await self.ctx.client.agent("ping", peer).request("inner", timeout=20)

    @action(read_only=True)
    async def hits(self) -> list[str]:
        return self.state.hits

    @applies
    def _hit(self, state: PingState, event: Hit) -> None:
        state.hits.append(event.what)


@pytest.fixture
async def ping_client(nats_server: NatsServer) -> AsyncIterator[Client]:
    async with Host(host_settings(nats_server.url, call_path_max=4), Registry([Ping])):
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            yield client
        finally:
            await client.close()


@pytest.mark.parametrize("durable", [True, False], ids=["self.call", "ctx.client"])
async def test_a_call_back_along_the_chain_runs_at_once(ping_client: Client, durable: bool) -> None:
    a = f"a-{durable}"
    got, hits = await ping_client.agent("ping", a).request(
        "outer", {"peer": f"b-{durable}", "durable": durable}, command_id=f"r-{durable}", timeout=20
    )
    # the nested inner committed first, on the state before the outer's own events; the
    # outer's draft was rebased onto it, so its commit keeps both
    assert got == ["inner"]
    assert hits == ["inner", "outer-before", "outer-after"]
    assert await ping_client.agent("ping", a).request("hits") == ["inner", "outer-before", "outer-after"]
    log = await commits(ping_client.nc, "ping", a)
    closing = [c for c in log if c.get("j") is None or c["j"]["k"] == "end"]
    assert [[e["data"]["what"] for e in c["events"]] for c in closing] == [["inner"], ["outer-before", "outer-after"]]
    assert [c["n"] for c in log] == list(range(1, len(log) + 1))  # one writer, gapless


async def test_a_call_back_to_an_action_that_is_not_reentrant_fails_with_call_cycle(ping_client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(CallCycle, match="not re-entrant") as info:
        await ping_client.agent("ping", "g1").request(
            "outer", {"peer": "g2", "durable": False, "back": "guarded"}, timeout=20
        )
    assert time.monotonic() - started < 10  # refused on arrival, not after the 15 s call timeout
    assert info.value.details["path"] == ["ping.g1", "ping.g2", "ping.g1"]


async def test_two_chains_calling_each_other_fail_fast_with_deadlock(ping_client: Client) -> None:
    Ping.BARRIER = asyncio.Barrier(2)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            ping_client.agent("ping", "d1").request("cross", {"peer": "d2"}, command_id="x1", timeout=20),
            ping_client.agent("ping", "d2").request("cross", {"peer": "d1"}, command_id="x2", timeout=20),
            return_exceptions=True,
        )
        elapsed_s = time.monotonic() - started
    finally:
        Ping.BARRIER = None
    # each closing call saw its receiver waiting on the caller: refused on arrival, not
    # after the 20 s timeout; each chain's root then failed with the same typed error
    assert all(isinstance(r, Deadlock) for r in results), results
    assert elapsed_s < 5.0, elapsed_s  # ~0.02 s here; the bound only says "not the 20 s timeout"
    d1 = results[0]
    assert isinstance(d1, Deadlock) and not d1.retryable
    # d1's call to d2 closed the cycle at d2, which waited on d1
    assert d1.details == {"chain": "x1", "path": ["ping.d1", "ping.d2"], "waiting_on": "ping.d1"}
    # nothing was left behind: both agents answer at once
    assert await ping_client.agent("ping", "d1").request("hits") == []


async def test_call_chain_headers_are_checked_as_hostile_input(ping_client: Client) -> None:
    nc = ping_client.nc
    body = orjson.dumps({"action": "hits", "params": {}})

    async def call(headers: dict[str, str]) -> dict[str, Any]:
        msg = await nc.request("agt.call.ping.h1", body, timeout=10, headers=headers)
        return dict(orjson.loads(msg.data))

    assert (await call({"Agt-Call-Chain": "c", "Agt-Call-Path": "ping.x ping.y"}))["ok"]  # nobody waits: runs
    bad = await call({"Agt-Call-Chain": "c", "Agt-Call-Path": "ping.x not-a-key"})
    assert bad["error"]["code"] == "malformed"
    assert (await call({"Agt-Call-Path": "ping.x"}))["ok"]  # a path without a chain means nothing
    assert (await call({"Agt-Call-Chain": "a b"}))["error"]["code"] == "malformed"
    deep = await call({"Agt-Call-Chain": "c", "Agt-Call-Path": " ".join(f"ping.p{i}" for i in range(5))})
    assert deep["error"]["code"] == "call_too_deep" and deep["error"]["details"]["max"] == 4
    huge = await call({"Agt-Call-Chain": "c", "Agt-Call-Path": "ping.x " * 4000})
    assert huge["error"]["code"] == "call_too_deep"
    assert (await call({}))["ok"]  # the agent still serves everyone else
