"""The catalog over the in-memory ports: activation (snapshot + replay), its refusals, the
fence against a newer owner, passivation and snapshots; no NATS."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import structlog

from jetagents._core.agent import Registry
from jetagents._core.errors import FencedError, InternalError, UnknownAgent
from jetagents._core.ids import AgentId, partition_of
from jetagents._core.wire import Subjects, encode_commit
from jetagents._host.catalog import Activation, Catalog
from jetagents._host.supervisor import Supervisor
from jetagents._obs.metrics import Metrics
from jetagents._obs.telemetry import HostTelemetry
from jetagents._settings import HostSettings
from jetagents.examples.counter import Counter
from jetagents.testing.clock import ManualClock
from jetagents.testing.streams import MemoryBucket, MemoryEventStream

SUBJECTS = Subjects("agt")


class _Host:
    supervisor = Supervisor()
    owned: list[int] = []


class World:
    def __init__(self, token: int | None = None, **settings: Any) -> None:
        self.clock = ManualClock()
        self.events = MemoryEventStream(self.clock)
        self.snapshots = MemoryBucket()
        self.meta = MemoryBucket()
        self.settings = HostSettings(partitions=8, **settings)
        self.supervisor = Supervisor()
        self.metrics = Metrics(HostTelemetry(_Host(), "h-catalog"))
        self.catalog = Catalog(
            self.settings,
            SUBJECTS,
            self.clock,
            self.supervisor,
            self.metrics,
            HostTelemetry(_Host(), "h-catalog"),
            structlog.get_logger("test"),
            lambda aid, partition: token,
        )
        self.catalog.bind(self.events, self.snapshots, self.meta, None)

    def commit(self, aid: AgentId, n: int, by: int, *, own: int = 0) -> int:
        body = encode_commit(
            n=n,
            cmd=f"c{n}",
            action="increment",
            events=[{"type": "Incremented", "data": {"by": by}}],
            result=by,
            cseq=n,
            ts_ms=self.clock.wall_ms(),
            own=own,
        )
        return self.events.store(SUBJECTS.evt(aid.type, aid.id), body, {}).seq

    def act(self, aid: AgentId) -> Activation:
        act = Activation(aid, Counter.__jetagents_spec__)
        self.catalog.activations[aid.key] = act
        return act


AID = AgentId("counter", "c1")


async def test_activation_replays_the_log_after_the_snapshot() -> None:
    w = World()
    w.commit(AID, 1, 2)
    seq2 = w.commit(AID, 2, 3)
    snap = {"v": 1, "state": {"value": 5}, "seq": seq2, "n": 2, "own": 0, "records": [["c2", seq2, 3]]}
    await w.snapshots.put(AID.key, orjson.dumps(snap))
    seq3 = w.commit(AID, 3, 10)
    act = w.act(AID)
    await w.catalog.activate(act)
    assert act.agent is not None and act.agent.state.value == 15
    assert (act.n, act.last_seq, act.since_snapshot) == (3, seq3, 1)
    records = act.records
    assert records is not None and len(records) == 2
    assert records.get("c2") is not None and records.get("c3") is not None and records.get("c1") is None
    assert w.metrics.stats["activations"] == 1


async def test_an_unreadable_snapshot_is_ignored_and_the_whole_log_replayed() -> None:
    w = World()
    w.commit(AID, 1, 4)
    await w.snapshots.put(AID.key, b"not json")
    act = w.act(AID)
    await w.catalog.activate(act)
    assert act.agent is not None and act.agent.state.value == 4 and act.n == 1


async def test_a_gap_in_the_log_is_an_internal_error() -> None:
    w = World()
    w.commit(AID, 1, 1)
    w.commit(AID, 3, 1)
    with pytest.raises(InternalError, match="gap"):
        await w.catalog.activate(w.act(AID))


async def test_a_spawn_required_agent_never_spawned_is_unknown() -> None:
    class Spawned(Counter):
        type_name = "spawned"
        spawn_required = True

    w = World()
    spec = Registry([Spawned]).get("spawned")
    assert spec is not None
    with pytest.raises(UnknownAgent):
        await w.catalog.activate(Activation(AgentId("spawned", "x"), spec))
    await w.meta.put("spawned.x", orjson.dumps({"owner": "me"}))
    act = Activation(AgentId("spawned", "x"), spec)
    await w.catalog.activate(act)
    assert act.agent is not None and act.agent.ctx.metadata == {"owner": "me"}


async def test_a_log_written_by_a_newer_owner_fences_the_activation() -> None:
    w = World(token=4)
    w.commit(AID, 1, 1, own=5)
    with pytest.raises(FencedError):
        await w.catalog.activate(w.act(AID))
    alone = World(token=None)  # no cluster membership: nothing fences
    alone.commit(AID, 1, 1, own=5)
    await alone.catalog.activate(alone.act(AID))


async def test_idle_agents_are_passivated_with_a_snapshot_and_busy_ones_kept() -> None:
    w = World(idle_passivate_s=10.0)
    w.commit(AID, 1, 7)
    idle = w.act(AID)
    await w.catalog.activate(idle)
    busy = w.act(AgentId("counter", "busy"))
    busy.scheduled = True
    w.clock.advance(11)
    pruned: list[Activation] = []
    w.catalog.passivate_idle(w.clock.monotonic(), lambda act, now: pruned.append(act))
    assert list(w.catalog.activations) == ["counter.busy"]
    assert w.metrics.stats["passivations"] == 1
    await w.supervisor.drain("side", 1.0)
    value = await w.snapshots.get(AID.key)
    assert value is not None and orjson.loads(value)["state"] == {"value": 7}


async def test_forgetting_a_partition_drops_its_agents_and_snapshots_them_when_graceful() -> None:
    w = World()
    w.commit(AID, 1, 2)
    act = w.act(AID)
    await w.catalog.activate(act)
    await w.catalog.forget_partition(partition_of(AID.type, AID.id, 8), graceful=True)
    assert AID.key not in w.catalog.activations
    value = await w.snapshots.get(AID.key)
    assert value is not None and orjson.loads(value)["n"] == 1
