"""Deterministic simulation of the cluster protocol: membership, leader lease, ring,
claims and handoff, driven by a fake clock with seeded faults.

The hosts run the real :class:`Coordinator` against :class:`MemoryStore` (a linearizable
KV with per-key TTL on the fake clock). Each simulated host also writes to agents the way
the real host does (cached log position, append fenced by the expected last sequence,
activation refused when the log holds a newer owner's claim, claim re-checked in the
store after a fence), so the checks cover what matters: who writes to an agent's log.

Faults: lost heartbeats, delayed (stale) ring reads, a host cut off from the store, the
store unreachable for every host at once (its stream leader paused or killed: every
member key may expire together), writes that land although their reply is lost, a host
paused past its lease that comes back, kills, joins and graceful drains.

Invariants, checked after every step:
* no two hosts ever acquired a claim on one partition at the same ring epoch, and no
  two hosts serve one partition under the same claim epoch;
* in every agent's log the writers' claims never decrease (a newer owner's writes are
  never followed by an older owner's: writes of two hosts never interleave);
and after the faults stop: within a few seconds (far less than the handoff timeout, which
is set out of reach here, so no claim is ever freed by waiting it out) every partition is
owned, claimed and served by exactly the host the ring names, and every host sees the
same ring.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from jetagents._core.errors import JetAgentsError, Unavailable
from jetagents._core.kv import CasConflict, Entry
from jetagents._core.ring import UNOWNED
from jetagents._host.coordination import ClusterConfig, Coordinator
from jetagents.testing import ManualClock, MemoryStore

PARTITIONS = 16
AGENTS = [f"a{i}" for i in range(48)]
DT = 0.25


def partition_of(agent: str) -> int:
    return int(agent[1:]) % PARTITIONS


@dataclass
class Faults:
    cut_until: float = 0.0
    paused_until: float = 0.0
    no_heartbeat_until: float = 0.0
    stale_ring_until: float = 0.0
    stale_ring: Entry | None = None
    lost_reply_until: float = 0.0  # writes land, their replies are lost (half of them)
    rnd: random.Random = field(default_factory=lambda: random.Random(0))


class FaultyStore:
    """One host's view of the shared store, with that host's faults applied."""

    def __init__(self, store: MemoryStore, clock: ManualClock, faults: Faults) -> None:
        self.store, self.clock, self.faults = store, clock, faults

    def _check(self) -> None:
        if self.clock.monotonic() < self.faults.cut_until:
            raise Unavailable("cut off")

    def _landed(self) -> None:
        """A write that reached the store: its reply may still be lost on the way back."""
        if self.clock.monotonic() < self.faults.lost_reply_until and self.faults.rnd.random() < 0.5:
            raise Unavailable("reply lost (the write landed)")

    async def get(self, key: str) -> Entry | None:
        self._check()
        if key == "ring" and self.clock.monotonic() < self.faults.stale_ring_until:
            return self.faults.stale_ring
        return await self.store.get(key)

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        self._check()
        rev = await self.store.create(key, value, ttl_s)
        self._landed()
        return rev

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int:
        self._check()
        new = await self.store.update(key, value, rev, ttl_s)
        self._landed()
        return new

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        self._check()
        if key.startswith("member.") and self.clock.monotonic() < self.faults.no_heartbeat_until:
            raise Unavailable("heartbeat lost")
        rev = await self.store.put(key, value, ttl_s)
        self._landed()
        return rev

    async def remove(self, key: str) -> None:
        self._check()
        await self.store.remove(key)

    async def scan(self, prefix: str) -> dict[str, Entry]:
        self._check()
        return await self.store.scan(prefix)


@dataclass
class LogEntry:
    seq: int
    host: str
    own: int


@dataclass
class World:
    clock: ManualClock
    store: MemoryStore
    logs: dict[str, list[LogEntry]] = field(default_factory=dict)
    seq: int = 0
    claims_seen: dict[tuple[int, int], str] = field(default_factory=dict)

    def append(self, agent: str, expected_last: int, host: str, own: int) -> int | None:
        log = self.logs.setdefault(agent, [])
        last = log[-1].seq if log else 0
        if last != expected_last:
            return None  # the fence: Nats-Expected-Last-Subject-Sequence mismatch
        self.seq += 1
        log.append(LogEntry(self.seq, host, own))
        return self.seq


class SimHost:
    def __init__(self, host_id: str, world: World, cfg: ClusterConfig) -> None:
        self.id = host_id
        self.world = world
        self.faults = Faults()
        self.serving: set[int] = set()
        self.cache: dict[str, tuple[int, int]] = {}  # agent -> (last seq, max own seen)
        self.alive = True
        self.draining = False
        store = FaultyStore(world.store, world.clock, self.faults)
        self.coord = Coordinator(host_id, store, world.clock, cfg, self)

    # hooks
    async def start_partition(self, partition: int, *, rewind: bool = False) -> None:
        self.serving.add(partition)

    async def stop_partition(self, partition: int, *, graceful: bool) -> None:
        self.serving.discard(partition)
        for a in [a for a in self.cache if partition_of(a) == partition]:
            del self.cache[a]

    def load(self) -> dict[str, Any]:
        return {"active_agents": len(self.cache)}

    async def event(self, kind: str, data: dict[str, Any]) -> None:
        return None

    # behaviour
    def running(self) -> bool:
        return self.alive and self.world.clock.monotonic() >= self.faults.paused_until

    async def write(self, agent: str) -> None:
        p = partition_of(agent)
        if p not in self.serving:
            return
        mine = self.coord.claim_revs.get(p, 0)
        if agent not in self.cache:  # activation: read the log
            log = self.world.logs.get(agent, [])
            newest = max((e.own for e in log), default=0)
            if newest > mine:  # a newer owner wrote it: never write after it
                await self._recheck(p)
                return
            self.cache[agent] = (log[-1].seq if log else 0, newest)
        last, _ = self.cache[agent]
        seq = self.world.append(agent, last, self.id, mine)
        if seq is None:  # fenced: rebuild, and only carry on if the store says p is ours
            del self.cache[agent]
            await self._recheck(p)
            return
        self.cache[agent] = (seq, mine)

    async def _recheck(self, p: int) -> None:
        try:
            await self.coord.still_holds(p)
        except JetAgentsError:
            await self.stop_partition(p, graceful=False)


def check_invariants(world: World, hosts: list[SimHost]) -> None:
    # claims: one host per (partition, epoch)
    for key, value, _rev in world.store.history:
        if key.startswith("claim.") and value.get("host"):
            slot = (int(key.split(".")[1]), int(value["epoch"]))
            holder = world.claims_seen.setdefault(slot, value["host"])
            assert holder == value["host"], f"two hosts claimed partition {slot[0]} at epoch {slot[1]}"
    world.store.history.clear()
    # serving: never two hosts on one partition under the same claim
    for p in range(PARTITIONS):
        revs = [h.coord.claim_revs.get(p) for h in hosts if h.alive and p in h.serving]
        assert len(revs) == len(set(revs)), f"partition {p} served twice under one claim: {revs}"
    # logs: writers' claims never decrease, and one claim belongs to one host
    for agent, log in world.logs.items():
        owns = [e.own for e in log]
        assert owns == sorted(owns), f"{agent}: an older owner wrote after a newer one: {owns}"
        by_own: dict[int, str] = {}
        for e in log:
            assert by_own.setdefault(e.own, e.host) == e.host, f"{agent}: claim {e.own} used by two hosts"


async def let_tasks_run() -> None:
    for _ in range(8):
        await asyncio.sleep(0)


async def settled(world: World, hosts: list[SimHost]) -> bool:
    """Every partition owned, claimed and served by the one host the ring names."""
    live = [h for h in hosts if h.alive]
    rings = {(h.coord.ring.epoch if h.coord.ring else -1) for h in live}
    ring = live[0].coord.ring
    if len(rings) != 1 or ring is None:
        return False
    claims = await world.store.scan("claim.")
    names = {h.id for h in live}
    for p, owner in enumerate(ring.owners):
        claim = claims.get(f"claim.{p}")
        if owner not in names or claim is None or claim.value["host"] != owner:
            return False
        if [h.id for h in live if p in h.serving] != [owner]:
            return False
    return True


async def simulate(seed: int, steps: int = 320, quiet: int = 60) -> dict[str, int]:
    rnd = random.Random(seed)
    clock = ManualClock()
    world = World(clock, MemoryStore(clock))
    cfg = ClusterConfig(partitions=PARTITIONS, heartbeat_s=0.5, member_ttl_s=3.0, lease_ttl_s=3.0, tick_s=DT)
    cfg.max_moves = 4
    # out of reach: a claim freed only by waiting this out would never settle in time
    cfg.handoff_timeout_s = 10_000.0
    hosts = [SimHost(f"h{i}", world, cfg) for i in range(3)]
    kinds = ("pause", "cut", "drop_hb", "stale_ring", "kill", "join", "drain", "outage", "lost_reply")
    counts = dict.fromkeys(kinds, 0)
    next_id = len(hosts)

    async def one_step(faulty: bool) -> None:
        nonlocal next_id
        clock.advance(DT)
        now = clock.monotonic()
        live = [h for h in hosts if h.alive and not h.draining]
        if faulty and rnd.random() < 0.06 and live:
            kind = rnd.choice(list(counts))
            victim = rnd.choice(live)
            if kind == "pause":  # past the lease and the member TTL, then back
                victim.faults.paused_until = now + rnd.uniform(3.5, 7.0)
            elif kind == "cut":
                victim.faults.cut_until = now + rnd.uniform(1.0, 5.0)
            elif kind == "drop_hb":
                victim.faults.no_heartbeat_until = now + rnd.uniform(1.0, 4.5)
            elif kind == "stale_ring":
                victim.faults.stale_ring = await world.store.get("ring")
                victim.faults.stale_ring_until = now + rnd.uniform(1.0, 10.0)
            elif kind == "outage":  # the store's leader paused or killed: nobody reaches it
                until = now + rnd.uniform(3.5, 8.0)
                for h in hosts:
                    h.faults.cut_until = max(h.faults.cut_until, until)
            elif kind == "lost_reply":
                victim.faults.lost_reply_until = now + rnd.uniform(1.0, 6.0)
                victim.faults.rnd = random.Random(rnd.random())
            elif kind == "kill" and len(live) > 1:
                victim.alive = False
            elif kind == "join" and len(live) < 5:
                hosts.append(SimHost(f"h{next_id}", world, cfg))
                next_id += 1
            elif kind == "drain" and len(live) > 1:
                victim.draining = True
                victim.coord.draining = True
            else:
                kind = ""
            if kind:
                counts[kind] += 1
        # Each running host does a coordinator round and a burst of writes, in random
        # order: a host back from a pause runs commands it had in hand before its
        # coordinator notices anything, as a real one does.
        actions = [(h, kind) for h in hosts if h.running() for kind in ("step", "write")]
        rnd.shuffle(actions)
        for h, kind in actions:
            if not h.running():
                continue
            if kind == "write":
                for agent in rnd.sample(AGENTS, 6):
                    await h.write(agent)
                continue
            try:
                await h.coord.step()
            except (Unavailable, CasConflict):
                pass
            await let_tasks_run()
            done = not h.coord.held and not h.coord.releasing and not h.coord.assigned()
            if h.draining and done and h.coord.ring is not None:
                await h.coord.leave()
                h.alive = False
        check_invariants(world, hosts)

    for _ in range(steps):
        await one_step(True)
    for h in hosts:  # the faults stop; the cluster must settle
        h.faults = Faults()
        h.coord.store.faults = h.faults  # type: ignore[attr-defined]
    for n in range(quiet):
        await one_step(False)
        if await settled(world, hosts):
            counts["settled_after_steps"] = n + 1
            break

    live = [h for h in hosts if h.alive]
    rings = {h.coord.ring.epoch for h in live if h.coord.ring}
    assert len(rings) == 1, f"hosts disagree on the ring: {rings}"
    ring = live[0].coord.ring
    assert ring is not None
    names = {h.id for h in live}
    claims = await world.store.scan("claim.")
    for p, owner in enumerate(ring.owners):
        assert owner != UNOWNED and owner in names, f"partition {p} not owned by a live host: {owner!r}"
        assert claims[f"claim.{p}"].value["host"] == owner
        servers = [h.id for h in live if p in h.serving]
        assert servers == [owner], f"partition {p} served by {servers}, ring says {owner}"
    return counts


@pytest.mark.parametrize("seed", range(12))
async def test_simulated_cluster_is_safe_and_settles(seed: int) -> None:
    counts = await simulate(seed)
    assert sum(counts.values()) >= 5  # the run did inject faults


async def test_simulation_is_deterministic() -> None:
    a = await simulate(3, steps=120, quiet=60)
    b = await simulate(3, steps=120, quiet=60)
    assert a == b


async def test_the_checker_catches_an_unfenced_writer() -> None:
    """The invariant checker is not vacuous: a host that skips the ownership check on
    activation ends up writing after the newer owner, and the checker says so."""
    clock = ManualClock()
    world = World(clock, MemoryStore(clock))
    cfg = ClusterConfig(partitions=PARTITIONS)
    old, new = SimHost("old", world, cfg), SimHost("new", world, cfg)
    old.coord.claim_revs[0], new.coord.claim_revs[0] = 1, 2
    old.serving.add(0)
    new.serving.add(0)
    await new.write("a0")
    world.append("a0", world.logs["a0"][-1].seq, "old", 1)  # what an unfenced writer does
    with pytest.raises(AssertionError, match="older owner wrote"):
        check_invariants(world, [old, new])


# -- graceful drain ---------------------------------------------------------------------------
async def _rounds(hosts: list[SimHost], clock: ManualClock, n: int) -> None:
    for _ in range(n):
        clock.advance(DT)
        for h in hosts:
            if h.alive:
                await h.coord.step()
                await let_tasks_run()


def _two_host_world() -> tuple[ManualClock, World, ClusterConfig]:
    clock = ManualClock()
    cfg = ClusterConfig(partitions=PARTITIONS, heartbeat_s=0.5, member_ttl_s=3.0, lease_ttl_s=3.0, tick_s=DT)
    return clock, World(clock, MemoryStore(clock)), cfg


async def test_a_lone_host_does_not_wait_to_hand_over_to_nobody() -> None:
    clock, world, cfg = _two_host_world()
    h = SimHost("h0", world, cfg)
    await _rounds([h], clock, 40)
    assert h.coord.held == set(range(PARTITIONS))
    waits: list[float] = []

    async def wait(s: float) -> None:
        waits.append(s)
        clock.advance(s)

    assert await h.coord.drain(30.0, wait) is False
    assert waits == []  # no other host: it returns at once, leave() releases the partitions
    await h.coord.leave()
    claims = await world.store.scan("claim.")
    assert not any(c.value.get("host") for c in claims.values())


async def test_a_draining_host_with_a_successor_hands_everything_over() -> None:
    clock, world, cfg = _two_host_world()
    hosts = [SimHost("h0", world, cfg), SimHost("h1", world, cfg)]
    await _rounds(hosts, clock, 60)
    assert hosts[0].coord.held and hosts[1].coord.held
    waits: list[float] = []

    async def wait(s: float) -> None:  # the cluster keeps running while h0 waits
        waits.append(s)
        await _rounds(hosts, clock, 1)

    assert await hosts[0].coord.drain(60.0, wait) is True
    assert waits  # it did wait for the handoff
    assert not hosts[0].coord.held and hosts[1].coord.held == set(range(PARTITIONS))


async def test_the_coordinators_own_loops_run_on_the_manual_clock() -> None:
    """``run()`` and ``drain()`` wait on the injected clock, never on asyncio's: under
    autojump a minute of cluster time (two hosts settle, one drains away) takes no real time."""
    clock, world, cfg = _two_host_world()
    hosts = [SimHost("h0", world, cfg), SimHost("h1", world, cfg)]
    async with clock.autojump():
        loops = [asyncio.create_task(h.coord.run()) for h in hosts]
        await clock.sleep(15.0)
        assert await settled(world, hosts)
        assert await hosts[0].coord.drain(60.0) is True
        await hosts[0].coord.leave()
        await clock.sleep(5.0)
        for h in hosts:
            h.coord.stopped = True
        await asyncio.wait(loops)
    assert clock.monotonic() - 1000.0 < 60.0
    assert not hosts[0].serving and hosts[1].serving == set(range(PARTITIONS))


# -- NATS node faults -----------------------------------------------------------------------
def _three_host_world(handoff_timeout_s: float = 45.0) -> tuple[ManualClock, World, list[SimHost]]:
    clock, world, cfg = _two_host_world()
    cfg.handoff_timeout_s = handoff_timeout_s
    return clock, world, [SimHost(f"h{i}", world, cfg) for i in range(3)]


async def _faulty_rounds(hosts: list[SimHost], clock: ManualClock, n: int) -> None:
    for _ in range(n):
        clock.advance(DT)
        for h in hosts:
            try:
                await h.coord.step()
            except (Unavailable, CasConflict):
                pass
            await let_tasks_run()


async def test_a_claim_forgotten_while_cut_off_is_released_once_the_ring_moves_on() -> None:
    """A host cut off from the store for a member TTL (its NATS node paused) fences itself:
    it stops its partitions and cannot release their claims. The leader gives them to the
    others; one of them is slow to claim (its own node stalled a moment), and by then the
    first host is back and alive, with claims that still name it. It must release them,
    or the new owner waits out the handoff timeout (45 s) for a live host that neither
    serves nor releases them."""
    clock, world, hosts = _three_host_world()
    await _rounds(hosts, clock, 40)
    assert await settled(world, hosts)
    leader = next(h for h in hosts if h.coord.is_leader)
    victim, slow = (h for h in hosts if h is not leader)
    start = clock.monotonic()
    victim.faults.cut_until = start + 4.0  # > member TTL (3 s): expelled
    for _ in range(24):  # 6 s
        if clock.monotonic() >= start + 2.5:  # < member TTL: stays a member, claims nothing
            slow.faults.cut_until = start + 4.6  # before the victim is back
        await _faulty_rounds(hosts, clock, 1)
    ring = leader.coord.ring
    assert ring is not None and slow.id in ring.owners and victim.id in ring.owners
    for _ in range(40):  # 10 s, far below the 45 s handoff timeout
        if await settled(world, hosts):
            break
        await _faulty_rounds(hosts, clock, 1)
    else:
        pytest.fail("partitions unserved 10 s after the host came back: a claim nobody releases")


async def test_a_store_outage_for_everyone_moves_no_partition() -> None:
    """The bucket's stream leader paused: no host reaches the store for longer than a
    member TTL, and every member key expires at once. Nobody is gone: the first host
    back must not give every partition to itself while the others re-register."""
    clock, world, hosts = _three_host_world()
    await _rounds(hosts, clock, 40)
    assert await settled(world, hosts)
    epoch = hosts[0].coord.ring.epoch if hosts[0].coord.ring else 0
    for h in hosts:
        h.faults.cut_until = clock.monotonic() + 5.0
    await _faulty_rounds(hosts, clock, 40)
    assert await settled(world, hosts)
    ring = hosts[0].coord.ring
    assert ring is not None and ring.epoch == epoch, "the ring moved partitions after an outage nobody died in"


# -- how cluster keys are written -----------------------------------------------------------
class WriteRulesStore(MemoryStore):
    """Records every write with how it was made: a plain put, a create or an update
    (compare-and-set on the revision), and its TTL."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.writes: list[tuple[str, str, float | None]] = []

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        self.writes.append((key, "create", ttl_s))
        return await super().create(key, value, ttl_s)

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int:
        self.writes.append((key, "update", ttl_s))
        return await super().update(key, value, rev, ttl_s)

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        self.writes.append((key, "put", ttl_s))
        return await super().put(key, value, ttl_s)


async def test_every_cluster_key_is_written_with_a_ttl_or_an_expected_revision() -> None:
    """Members and the leader lease expire by themselves (TTL); the ring, claims and
    placements are only ever written with compare-and-set. No write is neither: a key
    that nobody renews or guards cannot outlive its writer."""
    clock = ManualClock()
    store = WriteRulesStore(clock)
    world = World(clock, store)
    cfg = ClusterConfig(partitions=PARTITIONS, heartbeat_s=0.5, member_ttl_s=3.0, lease_ttl_s=3.0, tick_s=DT)
    hosts = [SimHost(f"h{i}", world, cfg) for i in range(3)]
    await _rounds(hosts, clock, 40)
    await hosts[0].coord.place("counter.c1", "h1")  # a placement, then a move
    await hosts[0].coord.place("counter.c1", "h2")
    hosts[2].faults.cut_until = clock.monotonic() + 4.0  # fenced and expelled, then back
    await _faulty_rounds(hosts, clock, 40)
    leader = next(h for h in hosts if h.coord.is_leader)
    waits: list[float] = []

    async def wait(s: float) -> None:
        waits.append(s)
        await _rounds([h for h in hosts if h.alive], clock, 1)

    await leader.coord.drain(60.0, wait)  # the leader drains, hands over and leaves
    await leader.coord.leave()
    leader.alive = False
    await _rounds([h for h in hosts if h.alive], clock, 20)

    kinds = {(k.split(".")[0], op) for k, op, _ in store.writes}
    assert {("member", "put"), ("leader", "create"), ("leader", "update"), ("ring", "update")} <= kinds
    assert {("claim", "create"), ("claim", "update"), ("place", "create"), ("place", "update")} <= kinds
    for key, op, ttl_s in store.writes:
        if key.startswith("member.") or key == "leader":
            assert ttl_s, f"{key} written ({op}) without a TTL"
        else:
            assert op in ("create", "update"), f"{key} written with a plain put"
