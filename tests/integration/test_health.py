"""Per-agent health and the policy acting on it (issue 17, ADR 0059), against a real nats-server.

* a type whose instance grows with every command (a leak outside its state) is restarted by
  its policy once it holds more than ``memory_bytes``, and keeps working with its state intact;
  ``agent show`` carries the measured figures;
* a CPU-hungry type over its ``type_cpu_share`` is throttled (its calls refused ``throttled``,
  retryable, with ``retry_after_s``; its durable commands handed back, all applied later), its
  measured CPU share stays near its limit, and another type's latency stays within a bound
  measured in the same test without the hungry type.

The "hung type saturates only its own pool" case is ``test_bulkheads.py``.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import BaseModel

from jetagents import Agent, Client, Delivery, Event, HealthPolicy, NatsServer, Throttled, action, applies
from jetagents._client.inspection import Inspector
from jetagents.examples import Counter
from tests.integration.helpers import HostFactory, call_json, eventually, raw_nats, started_hosts
from tests.integration.test_telemetry import points, value

CHUNK_BYTES = 100_000
BURN_S = 0.02
SLICE_S = 0.005


class Tally(BaseModel):
    n: int = 0


class Counted(Event):
    by: int = 1


class Leaky(Agent[Tally]):
    """Keeps every command's scratch buffer in a cache nobody reads: its instance grows."""

    type_name = "leaky"
    state_type = Tally
    health = HealthPolicy(memory_bytes=350_000, memory_every=1, min_interval_s=0)

    @action
    async def grow(self) -> int:
        cache: list[bytes] = self.__dict__.setdefault("cache", [])
        cache.append(bytes(CHUNK_BYTES))
        self.emit(Counted())
        return len(cache)

    @action(read_only=True)
    async def count(self) -> int:
        return self.state.n

    @applies
    def _counted(self, state: Tally, event: Counted) -> None:
        state.n += event.by


class Hungry(Agent[Tally]):
    """Burns CPU in its action, in slices of ``SLICE_S`` with the loop run between them: the
    type takes CPU as a hungry computation would, yet the host's loop still answers (one burn
    holding it for seconds on a loaded machine cost the host its heartbeats, not what is tested)."""

    type_name = "hungry"
    state_type = Tally
    # a small share: on a machine shared with others this process may get little more than
    # that of a core, and a share it cannot reach would never be throttled
    health = HealthPolicy(type_cpu_share=0.05, window_s=1.0)

    @action
    async def burn(self, seconds: float) -> int:
        # the thread's CPU clock also runs for whatever the loop does between slices: count
        # only this action's own slices, so a burn uses ``seconds`` of CPU however busy the host
        left_s = seconds
        while left_s > 0:
            t0 = time.thread_time()
            stop = t0 + min(left_s, SLICE_S)
            while (t := time.thread_time()) < stop:
                pass
            left_s -= t - t0
            if left_s > 0:
                await asyncio.sleep(0)
        self.emit(Counted())
        # how many burns this instance ran: back to 1 after its host drops the instance
        runs: int = self.__dict__.get("runs", 0) + 1
        self.__dict__["runs"] = runs
        return runs

    @action(read_only=True)
    async def count(self) -> int:
        return self.state.n

    @applies
    def _counted(self, state: Tally, event: Counted) -> None:
        state.n += event.by


@pytest.fixture
async def make_host(nats_server: NatsServer) -> AsyncIterator[HostFactory]:
    async with started_hosts(nats_server.url, [Leaky, Hungry, Counter]) as make:
        yield make


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    async with raw_nats(nats_server.url, "health-test") as conn:
        yield conn


async def test_a_leaking_type_is_restarted_and_keeps_its_state(
    make_host: HostFactory, nc: NATS, client: Client
) -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    host = await make_host(meter_provider=meter_provider)
    sizes = []
    for _ in range(10):
        reply = await call_json(nc, "agt.call.leaky.l1", {"action": "grow"})
        assert reply["ok"] is True
        sizes.append(reply["result"])
    # 4 chunks (400 kB) are over 350 kB: restarted after every 4th command, its cache gone
    assert sizes == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
    assert host.stats["health_restarts"] == 2
    # the state was rebuilt from the log each time: every command counted
    assert await call_json(nc, "agt.call.leaky.l1", {"action": "count"}) == {"ok": True, "result": 10}

    detail = await Inspector(client, agents=[Leaky]).show("leaky", "l1")
    assert detail.state == {"n": 10}
    health = detail.health
    assert health is not None
    assert health["commands"] == 11 and health["restarts"] == 2
    assert 2 * CHUNK_BYTES < health["instance_bytes"] < 3 * CHUNK_BYTES  # two chunks since the last restart
    assert health["wall_s"] > 0 and health["type"]["commands"] == 11

    pts = points(reader)  # the same figures as OpenTelemetry metrics
    assert value(pts, "jetagents.host.action.duration", jetagents__agent__type="leaky") == 11
    assert value(pts, "jetagents.host.agent.memory", jetagents__agent__type="leaky") == 11
    assert value(pts, "jetagents.host.health.restarts") == 2
    meter_provider.shutdown()


async def _latencies(nc: NATS, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        assert (await call_json(nc, f"agt.call.counter.lat{i % 5}", {"action": "increment"}))["ok"] is True
        out.append(time.perf_counter() - t0)
    return out


async def test_a_cpu_hungry_type_is_throttled_and_others_keep_their_latency(
    make_host: HostFactory, nc: NATS, client: Client
) -> None:
    # static membership: a loop blocked by burns on a loaded machine must not cost the host its
    # ring membership (calls refused "lost touch with the cluster"), which is not what is tested
    host = await make_host(membership="static")
    baseline = await _latencies(nc, 40)

    refused: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def hog(i: int) -> None:
        while not stop.is_set():
            reply = await call_json(nc, f"agt.call.hungry.h{i}", {"action": "burn", "params": {"seconds": BURN_S}})
            if not reply["ok"]:
                refused.append(reply["error"])
                await asyncio.sleep(0.01)  # much sooner than retry_after_s: keeps the pressure on

    started = time.monotonic()
    cpu_before = host.catalog.health.figures("hungry")["cpu_s"]
    hogs = [asyncio.ensure_future(hog(i)) for i in range(4)]
    await eventually(lambda: host.stats["throttled"] > 0, timeout_s=30)
    during = await _latencies(nc, 40)
    stop.set()
    await asyncio.gather(*hogs)
    elapsed_s = time.monotonic() - started
    used_cpu_s = host.catalog.health.figures("hungry")["cpu_s"] - cpu_before

    throttled = [err for err in refused if err["code"] == "throttled"]
    assert throttled
    for err in throttled:
        assert err["retryable"] is True
        assert err["details"]["applied"] is False and err["details"]["reason"] == "type_cpu"
        assert 0 < err["details"]["retry_after_s"] <= 30
    assert all(err["retryable"] for err in refused), refused
    # the hungry type's own CPU stays within its share (0.05 of a core) of the time it ran,
    # whatever the machine's speed, plus a few burns: the first 4 admitted before any had run
    # (nothing measured yet to reserve), the window's allowance (0.05 s) and those in hand
    assert 0 < used_cpu_s < 0.05 * elapsed_s + 10 * BURN_S
    # while the hungry type runs (throttled), another type's calls wait at most about one burn
    # more than without it: the median, against the same machine measured without it
    assert statistics.median(during) < 3 * statistics.median(baseline) + 2 * BURN_S

    # a durable command of a throttled type is handed back, not lost: all run later
    ref = client.agent("hungry", "d1")
    for _ in range(3):
        await ref.send("burn", {"seconds": BURN_S})

    async def applied() -> bool:
        reply = await call_json(nc, "agt.call.hungry.d1", {"action": "count"})
        return reply == {"ok": True, "result": 3}

    await eventually(applied, timeout_s=60, interval_s=0.3)


async def test_an_agent_over_its_own_cpu_share_is_throttled_alone(
    make_host: HostFactory, nc: NATS, client: Client
) -> None:
    # settings win over the class's policy; a long window: the share cannot decay under the
    # limit between two calls, however slow the machine
    host = await make_host(membership="static", health={"hungry": {"cpu_share": 0.001, "window_s": 10.0}})
    burn = {"action": "burn", "params": {"seconds": BURN_S}}
    assert (await call_json(nc, "agt.call.hungry.hot", burn))["ok"] is True  # 0.002 of a core > 0.001
    reply = await call_json(nc, "agt.call.hungry.hot", burn)
    assert reply["ok"] is False and reply["error"]["code"] == "throttled"
    assert reply["error"]["details"]["reason"] == "cpu"
    # until its decayed CPU (what the one burn measured) is under 0.001 * 10 s
    used_cpu_s = host.catalog.health.of("hungry.hot")["cpu_s"]  # type: ignore[index]
    assert used_cpu_s >= BURN_S
    assert 0 < reply["error"]["details"]["retry_after_s"] <= 10 * math.log(used_cpu_s / 0.01) + 0.001
    # another agent of the same type is not throttled for it
    assert await call_json(nc, "agt.call.hungry.cool", {"action": "count"}) == {"ok": True, "result": 0}
    assert host.stats["throttled"] == 1
    # a client waits retry_after_s before sending it again, and not at all when that is past
    # its own timeout: the throttled error at once, not a timeout after re-sending in vain
    with pytest.raises(Throttled) as caught:
        await client.agent("hungry", "hot").request(
            "burn", {"seconds": BURN_S}, delivery=Delivery.AT_MOST_ONCE, timeout=3
        )
    assert caught.value.details["retry_after_s"] > 3
    assert host.stats["throttled"] == 2


async def test_health_measure_all_measures_types_without_a_policy(make_host: HostFactory, nc: NATS) -> None:
    host = await make_host(membership="static", health_measure_all=True)
    for _ in range(64):  # the 64th command measures the instance too
        assert (await call_json(nc, "agt.call.counter.m", {"action": "get"}))["ok"] is True
    health = host.catalog.health.of("counter.m")
    assert health is not None
    assert health["commands"] == 64 and "cpu_s" in health and health["cpu_share"] >= 0
    assert health["instance_bytes"] == 0  # a counter holds nothing besides its state
    assert host.stats["throttled"] == 0 and host.stats["health_restarts"] == 0


async def test_a_leaking_type_may_be_passivated_instead(make_host: HostFactory, nc: NATS) -> None:
    policy = {"memory_bytes": 350_000, "memory_every": 1, "on_memory": "passivate", "min_interval_s": 0}
    host = await make_host(membership="static", health={"leaky": policy})
    sizes = [(await call_json(nc, "agt.call.leaky.p1", {"action": "grow"}))["result"] for _ in range(5)]
    assert sizes == [1, 2, 3, 4, 1]  # passivated after the 4th: the 5th activated it anew
    assert host.stats["health_passivations"] == 1 and host.stats["health_restarts"] == 0
    assert host.stats["passivations"] >= 1
    assert await call_json(nc, "agt.call.leaky.p1", {"action": "count"}) == {"ok": True, "result": 5}


@pytest.mark.parametrize("on_cpu", ["restart", "passivate"])
async def test_an_agent_over_its_cpu_share_may_be_restarted_or_passivated_instead(
    make_host: HostFactory, nc: NATS, on_cpu: str
) -> None:
    # one burn (BURN_S of CPU) is over 0.001 of a core decayed over 10 s (0.01 CPU-s): every
    # burn crosses the limit, and min_interval_s 0 lets the policy act after each
    policy = {"cpu_share": 0.001, "window_s": 10.0, "on_cpu": on_cpu, "min_interval_s": 0}
    host = await make_host(membership="static", health={"hungry": policy})
    burn = {"action": "burn", "params": {"seconds": BURN_S}}
    runs = []
    for _ in range(3):
        reply = await call_json(nc, "agt.call.hungry.r1", burn)
        assert reply["ok"] is True, reply  # not throttled: the policy acts on the agent instead
        runs.append(reply["result"])
    # each burn ran on a fresh instance: the one before was dropped after its command
    assert runs == [1, 1, 1]
    restarts, passivations = host.stats["health_restarts"], host.stats["health_passivations"]
    assert (restarts, passivations) == ((3, 0) if on_cpu == "restart" else (0, 3))
    assert host.stats["throttled"] == 0
    # its state was rebuilt from its log each time: every burn counted
    assert await call_json(nc, "agt.call.hungry.r1", {"action": "count"}) == {"ok": True, "result": 3}
