"""Cluster membership, the leader lease, the ring and partition claims.

Everything the hosts agree on lives in one KV bucket (``<root>_cluster``):

==================  ====================================================  ===============
key                 value                                                 written with
==================  ====================================================  ===============
``member.<host>``   capacity, tags, load, draining flag                   put, per-key TTL
``leader``          ``{"host": id}``                                      create / CAS, TTL
``ring``            ``{"epoch": E, "owners": [host per partition]}``       CAS (leader)
``claim.<p>``       ``{"host": id or "", "epoch": E}``                     CAS (hosts)
==================  ====================================================  ===============

* A host heartbeats its ``member`` key with a TTL; when it stops, the server removes
  the key and the host is no longer a member.
* The leader holds the ``leader`` key (created with a TTL, renewed by compare-and-set).
  It computes the ring from the members (``_ring.compute_ring``), moves it towards the
  target a bounded number of partitions at a time, and writes it with CAS.
* Every host reads the ring. For a partition the ring gives it, a host *claims* it with
  CAS, but only once the previous holder released it or is no longer a member; only
  then does it start the partition (consumer reset, pulls). A host that loses a
  partition stops pulling it, finishes the commands in hand, snapshots its agents and
  releases the claim.

The claim decides who may *start* a partition. Safety does not rest on timing: two
hosts can never hold the same claim revision, the consumer is recreated by each new
owner (the server then feeds only it, through a pinned priority group), and every event
append is fenced by the agent's last sequence, so a stale owner's write is refused.

The coordinator is I/O-agnostic: it talks to a :class:`~jetagents._core.kv.ClusterStore`
(``_nats/kv.py: JetStreamStore`` in production, ``jetagents.testing.MemoryStore`` with a fake
clock in the deterministic simulation), and leaves the decisions that need no I/O to
``_core/membership.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from ..._core.balance import BalancePolicy
from ..._core.clock import Clock
from ..._core.errors import JetAgentsError, Unavailable
from ..._core.kv import CasConflict, ClusterStore, Entry
from ..._core.membership import (
    Takeover,
    claim_stands,
    in_transit,
    merge_placements,
    orphan_claims,
    parse_ring,
    rewind_on_start,
    takeover,
    unowned_ring,
)
from ..._core.resources import DEFAULT_WEIGHTS
from ..._core.ring import UNOWNED
from .handoff import Handoff
from .planner import RingPlanner
from .ringlog import record_ring_change

log = structlog.get_logger("jetagents.cluster")


# -- the coordinator -------------------------------------------------------------------------
@dataclass(slots=True)
class ClusterConfig:
    partitions: int
    heartbeat_s: float = 0.5
    member_ttl_s: float = 3.0
    lease_ttl_s: float = 3.0
    tick_s: float = 0.25
    load_factor: float = 1.25
    max_moves: int = 8
    handoff_timeout_s: float = 40.0
    capacity: float = 1.0
    tags: list[str] = field(default_factory=list)
    # rebalancing by measured load (ADR 0044): off without a policy or an interval
    balance: BalancePolicy | None = None
    balance_interval_s: float = 0.0
    load_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


class Hooks(Protocol):
    """What the coordinator asks of the host it runs in."""

    async def start_partition(self, partition: int, *, rewind: bool = False) -> None: ...

    async def stop_partition(self, partition: int, *, graceful: bool) -> None: ...

    def load(self) -> dict[str, Any]: ...

    async def event(self, kind: str, data: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class RingView:
    epoch: int
    owners: list[str]
    rev: int
    leader: str = ""


class Coordinator(Handoff):
    """One host's part in the cluster. ``step()`` does one round; ``run()`` loops it; leaving
    and handing partitions over: ``Handoff``."""

    def __init__(
        self,
        host_id: str,
        store: ClusterStore,
        clock: Clock,
        cfg: ClusterConfig,
        hooks: Hooks,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] = asyncio.create_task,
    ) -> None:
        """``spawn`` starts the coordinator's own tasks (heartbeats, releases, claims): the
        host's supervisor, which tracks them and logs a crash, in a host."""
        self.host_id = host_id
        self._spawn = spawn
        self.store = store
        self.clock = clock
        self.cfg = cfg
        self.hooks = hooks
        self.planner = RingPlanner(cfg)  # the ring by capacity, then by measured load
        self.ring: RingView | None = None
        self.held: set[int] = set()  # claimed and started
        self.releasing: dict[int, asyncio.Task[None]] = {}
        self.acquiring: dict[int, float] = {}  # partition -> when we started waiting for it
        # assigned to us and free to take (released, or its holder gone), not started yet: a
        # call for it is answered "retry, not applied" (``Intake.on_call``)
        self.starting: set[int] = set()
        self.handing: dict[int, float] = {}  # partition -> since when it waits for its next owner to know
        self._acquire_tasks: dict[int, asyncio.Task[None]] = {}
        self.claim_revs: dict[int, int] = {}
        # agent key -> (host, revision): agents placed on a host other than their
        # partition's owner (migrations, resource requirements); the revision is the
        # writer token of the placed host
        self.placements: dict[str, tuple[str, int]] = {}
        self.members_cache: dict[str, dict[str, Any]] = {}
        self.is_leader = False
        self.lease_rev = 0
        self.draining = False
        self.stopped = False
        self.last_heartbeat_ok = clock.monotonic()
        # until then the leader moves no partition away from a host that is not a member:
        # set after our own store outage, when every host's member key may have expired
        # at once without any host being gone (a NATS node fault)
        self.members_trusted_at = 0.0
        self._next_heartbeat = 0.0
        self._next_renew = 0.0
        self._members_seen: set[str] = set()
        self._log = log.bind(host=host_id)

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        # Heartbeats have their own loop: a round that waits on slow partition starts
        # (replicated consumers under load take seconds) must never make us miss our TTL.
        beats = self._spawn(self._heartbeat_loop())
        try:
            while not self.stopped:
                try:
                    await self.step()
                except (Unavailable, CasConflict) as exc:
                    self._log.debug("cluster_step_failed", error=str(exc))
                except Exception:  # noqa: BLE001 - the coordinator must keep going
                    self._log.exception("cluster_step_crashed")
                await self.clock.sleep(self.cfg.tick_s)
        finally:
            beats.cancel()
            for task in list(self._acquire_tasks.values()):
                task.cancel()
            await asyncio.gather(beats, *self._acquire_tasks.values(), return_exceptions=True)

    async def _heartbeat_loop(self) -> None:
        while not self.stopped:
            try:
                await self._heartbeat(self.clock.monotonic())
            except Exception as exc:  # noqa: BLE001 - keep beating; the TTL judges us
                self._log.debug("heartbeat_failed", error=str(exc))
            await self.clock.sleep(min(self.cfg.heartbeat_s, self.cfg.tick_s))

    async def step(self) -> None:
        now = self.clock.monotonic()
        if self.held and now - self.last_heartbeat_ok > self.cfg.member_ttl_s:
            # No heartbeat for a whole TTL (paused, or cut off from NATS): the others may
            # have expelled us and taken our partitions. Stop serving them before anything
            # else; whatever we still own is claimed again below.
            self._log.warning("self_fenced", silent_s=round(now - self.last_heartbeat_ok, 2))
            await self._self_fence()
        await self._heartbeat(now)
        await self._verify_claims()
        await self._read_placements()
        await self.members()
        await self._lease(now)
        await self._read_ring()
        if self.is_leader:
            await self._lead()
        await self._reconcile(now)

    # -- membership -----------------------------------------------------------------------
    def member_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "host": self.host_id,
            "capacity": self.cfg.capacity,
            "tags": list(self.cfg.tags),
            "draining": self.draining,
            "partitions": len(self.held),
            "ring_epoch": self.ring.epoch if self.ring else 0,
            "ts_ms": self.clock.wall_ms(),
        }
        value.update(self.hooks.load())
        return value

    async def _heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.cfg.heartbeat_s
        await self.store.put(f"member.{self.host_id}", self.member_value(), self.cfg.member_ttl_s)
        done = self.clock.monotonic()
        if done - self.last_heartbeat_ok > self.cfg.member_ttl_s:
            # We could not reach the store for a whole member TTL. Others probably could
            # not either (the bucket's stream leader was paused or killed): their keys may
            # have expired with ours, and they will be back within a heartbeat. Give them
            # a TTL before treating their absence as death.
            self.members_trusted_at = done + self.cfg.member_ttl_s
        self.last_heartbeat_ok = now

    async def _verify_claims(self) -> None:
        """Stop at once any partition whose claim is no longer ours (taken over while we
        were paused, cut off, or reading a stale ring), and let go of any claim the store
        still gives us for a partition we neither serve nor are assigned."""
        claims = await self.store.scan("claim.")
        self._release_orphans(claims)
        for p in sorted(self.held):
            if not claim_stands(claims.get(f"claim.{p}"), self.host_id, self.claim_revs.get(p)):
                self._log.warning("claim_lost", partition=p)
                await self._drop(p)
                await self.hooks.event("partition.lost", {"partition": p, "host": self.host_id})

    def _release_orphans(self, claims: dict[str, Entry]) -> None:
        """Release claims that name us in the store but that we do not serve
        (``membership.orphan_claims`` says when and why)."""
        busy = self.held | self.assigned() | set(self.releasing) | set(self._acquire_tasks)
        for p, rev in orphan_claims(claims, self.host_id, busy, self.cfg.partitions):
            self._log.warning("orphan_claim_released", partition=p, rev=rev)
            self.releasing[p] = self._spawn(self._release_orphan(p, rev))

    async def _release_orphan(self, p: int, rev: int) -> None:
        try:
            epoch = self.ring.epoch if self.ring else 0
            # CAS on the revision we read: if anyone claimed it since, it is not ours to free
            await self.store.update(f"claim.{p}", {"host": "", "epoch": epoch}, rev)
        except (Unavailable, CasConflict) as exc:
            self._log.debug("orphan_release_failed", partition=p, error=str(exc))
        finally:
            self.releasing.pop(p, None)

    async def _read_placements(self) -> None:
        self.placements = merge_placements(await self.store.scan("place."), self.placements)

    async def place(self, agent_key: str, host: str, needs: Mapping[str, float] | None = None, since: int = 0) -> int:
        """Record that ``agent_key`` runs on ``host`` (CAS on the previous placement);
        returns the placement's revision, the placed host's writer token. ``needs`` keep the
        reservation of an agent whose type declares resources (ADR 0060) when it moves,
        ``since`` the revision of the hold that reserved them on ``host`` (their order there)."""
        key = f"place.{agent_key}"
        value: dict[str, Any] = {"host": host, "ts_ms": self.clock.wall_ms()}
        if needs:
            value.update(needs=dict(needs), **({"since": since} if since else {}))
        current = await self.store.get(key)
        rev = (
            await self.store.create(key, value) if current is None else await self.store.update(key, value, current.rev)
        )
        self.placements[agent_key] = (host, rev)
        return rev

    def learn_placement(self, agent_key: str, host: str, rev: int) -> None:
        known = self.placements.get(agent_key)
        if known is None or known[1] < rev:
            self.placements[agent_key] = (host, rev)

    async def _self_fence(self) -> None:
        for p in sorted(self.held):
            await self._drop(p)
        self.is_leader = False

    async def _drop(self, p: int) -> None:
        """Stop serving ``p`` at once: its claim is (or may be) someone else's now."""
        self.held.discard(p)
        self.claim_revs.pop(p, None)
        await self.hooks.stop_partition(p, graceful=False)

    async def members(self) -> dict[str, dict[str, Any]]:
        entries = await self.store.scan("member.")
        self.members_cache = {k.removeprefix("member."): e.value for k, e in entries.items()}
        return self.members_cache

    # -- leadership -----------------------------------------------------------------------
    async def _lease(self, now: float) -> None:
        lease = await self.store.get("leader")
        ttl = self.cfg.lease_ttl_s
        value = {"host": self.host_id, "ts_ms": self.clock.wall_ms()}
        if self.stopped:  # a draining leader keeps leading: it moves its own partitions away
            self.is_leader = False
            return
        try:
            if lease is None:
                self.lease_rev = await self.store.create("leader", value, ttl)
                await self._became_leader()
            elif lease.value.get("host") == self.host_id:
                self.is_leader = True
                self.lease_rev = lease.rev
                if now >= self._next_renew:
                    self.lease_rev = await self.store.update("leader", value, lease.rev, ttl)
                    self._next_renew = now + ttl / 3
            elif not lease.value.get("host"):
                self.lease_rev = await self.store.update("leader", value, lease.rev, ttl)
                await self._became_leader()
            else:
                self.is_leader = False
        except CasConflict:
            self.is_leader = False

    async def _became_leader(self) -> None:
        self.is_leader = True
        self._next_renew = self.clock.monotonic() + self.cfg.lease_ttl_s / 3
        self._members_seen = set()
        self._log.info("leader_elected")
        await self.hooks.event("leader", {"host": self.host_id})

    async def resign(self) -> None:
        """Give the lease up at once (a draining or stopping leader)."""
        if not self.is_leader:
            return
        self.is_leader = False
        with contextlib.suppress(JetAgentsError, CasConflict):
            await self.store.update("leader", {"host": ""}, self.lease_rev, 1.0)

    # -- the ring -------------------------------------------------------------------------
    async def _read_ring(self) -> None:
        entry = await self.store.get("ring")
        if entry is None:
            return
        parsed = parse_ring(entry.value, self.cfg.partitions)
        if parsed is None:
            self._log.error("ring_malformed", rev=entry.rev)
            if self.ring is None or entry.rev != self.ring.rev:
                epoch, owners = unowned_ring(entry.value, self.cfg.partitions, self.ring.epoch if self.ring else 0)
                self.ring = RingView(epoch, owners, entry.rev, "")
            return
        epoch, owners = parsed
        if self.ring is None or epoch > self.ring.epoch or entry.rev != self.ring.rev:
            if self.ring is not None and epoch < self.ring.epoch:
                return  # never go back to an older ring
            if self.ring is None or epoch != self.ring.epoch:
                self._next_heartbeat = 0.0  # say at once which ring we know (``successor_knows``)
            self.ring = RingView(epoch, owners, entry.rev, str(entry.value.get("leader", "")))

    async def _lead(self) -> None:
        members = self.members_cache  # read once this round, in step()
        alive = set(members)
        joined, left = alive - self._members_seen, self._members_seen - alive
        for h in sorted(joined):
            await self.hooks.event("member.joined", {"host": h})
        for h in sorted(left):
            await self.hooks.event("member.left", {"host": h})
        self._members_seen = alive
        p_count = self.cfg.partitions
        current = list(self.ring.owners) if self.ring else [UNOWNED] * p_count
        now = self.clock.monotonic()
        outage = now < self.members_trusted_at or now - self.last_heartbeat_ok > self.cfg.member_ttl_s
        if self.ring is not None and outage and any(owner and owner not in alive for owner in current):
            return  # (just back) from a store outage: absent members may only be late

        moving = in_transit(current, alive, await self.store.scan("claim."))
        nxt = self.planner.next_ring(current, members, alive, moving, now)
        if self.ring is not None and nxt == current:
            return
        epoch, ts_ms = (self.ring.epoch if self.ring else 0) + 1, self.clock.wall_ms()
        value = {"epoch": epoch, "owners": nxt, "leader": self.host_id, "ts_ms": ts_ms}
        try:
            if self.ring is None:
                rev = await self.store.create("ring", value)
            else:
                rev = await self.store.update("ring", value, self.ring.rev)
        except CasConflict:
            return  # someone else wrote it: read it next round
        moved = sum(1 for a, b in zip(current, nxt, strict=True) if a != b)
        self.ring = RingView(epoch, nxt, rev, self.host_id)
        self._next_heartbeat = 0.0
        await record_ring_change(self.store, epoch, current, nxt, self.host_id, ts_ms)
        self._log.info("ring_updated", epoch=epoch, moved=moved, in_transit=moving)
        by_load = [[m.partition, m.source, m.target] for m in self.planner.last_moves]
        await self.hooks.event("ring", {"epoch": epoch, "moved": moved, "leader": self.host_id, "by_load": by_load})

    # -- claims ---------------------------------------------------------------------------
    def assigned(self) -> set[int]:
        if self.ring is None or self.stopped:
            return set()
        return {p for p, h in enumerate(self.ring.owners) if h == self.host_id}

    async def _reconcile(self, now: float) -> None:
        mine = self.assigned()
        self.handing = {p: t for p, t in self.handing.items() if p in self.held - mine}
        for p in sorted(self.held - mine):
            if not self.successor_knows(p, now):
                continue  # served a little longer (``Handoff.successor_knows``)
            self.held.discard(p)
            self.releasing[p] = self._spawn(self._release(p))
        want = sorted(p for p in mine - self.held if p not in self.releasing and p not in self._acquire_tasks)
        for p in list(self.acquiring):
            if p not in mine:
                del self.acquiring[p]
        if not want:
            return
        alive = set(self.members_cache)  # read once this round, in step()
        # claim and start in the background, concurrently: starting a partition (consumer
        # reset) takes a round trip or two, on a replicated stream each consumer is its
        # own raft group, and the next rounds (claims check, ring) must not wait for it
        for p in want:
            self._acquire_tasks[p] = self._spawn(self._acquire_guarded(p, now, alive))

    async def _acquire_guarded(self, p: int, now: float, alive: set[str]) -> None:
        try:
            await self._acquire(p, now, alive)
        except (Unavailable, CasConflict) as exc:
            self._log.debug("partition_claim_failed", partition=p, error=str(exc))
        except Exception:  # noqa: BLE001 - retried next round
            self._log.exception("partition_claim_crashed", partition=p)
        finally:
            self._acquire_tasks.pop(p, None)

    async def _acquire(self, p: int, now: float, alive: set[str]) -> None:
        since = self.acquiring.setdefault(p, now)
        claim = await self.store.get(f"claim.{p}")
        epoch = self.ring.epoch if self.ring else 0
        value = {"host": self.host_id, "epoch": epoch, "ts_ms": self.clock.wall_ms()}
        holder = str(claim.value.get("host", "")) if claim else ""
        verdict = takeover(holder, self.host_id, alive, now - since, self.cfg.handoff_timeout_s)
        if verdict is Takeover.WAIT:
            return  # the previous owner is still handing it over
        if verdict is Takeover.TIMED_OUT:  # its holder may still serve it: calls get no "retry"
            self._log.warning("handoff_timeout", partition=p, holder=holder)
        else:  # its previous owner released it or is gone: it takes no call of it any more
            self.starting.add(p)
        try:
            await self._claim_and_start(p, claim, value, holder, alive, epoch)
        finally:
            self.starting.discard(p)

    async def _claim_and_start(
        self, p: int, claim: Entry | None, value: dict[str, Any], holder: str, alive: set[str], epoch: int
    ) -> None:
        try:
            if claim is None:
                rev = await self.store.create(f"claim.{p}", value)
            else:
                rev = await self.store.update(f"claim.{p}", value, claim.rev)
        except CasConflict:
            return
        self.claim_revs[p] = rev
        self.acquiring.pop(p, None)
        if p not in self.assigned() or self.stopped:  # the ring moved on meanwhile
            self.claim_revs.pop(p, None)
            with contextlib.suppress(JetAgentsError, CasConflict):
                await self.store.update(f"claim.{p}", {"host": "", "epoch": epoch}, rev)
            return
        try:
            await self.hooks.start_partition(p, rewind=rewind_on_start(holder, self.host_id, alive))
        except JetAgentsError as exc:
            self._log.warning("partition_start_failed", partition=p, error=str(exc))
            with contextlib.suppress(JetAgentsError, CasConflict):
                await self.store.update(f"claim.{p}", {"host": "", "epoch": epoch}, rev)
            self.claim_revs.pop(p, None)
            return
        self.held.add(p)
        await self.hooks.event("partition.started", {"partition": p, "host": self.host_id})

    async def _release(self, p: int) -> None:
        try:
            await self.hooks.stop_partition(p, graceful=True)
            rev = self.claim_revs.pop(p, None)
            if rev is not None:
                epoch = self.ring.epoch if self.ring else 0
                with contextlib.suppress(CasConflict):
                    await self.store.update(f"claim.{p}", {"host": "", "epoch": epoch}, rev)
            await self.hooks.event("partition.released", {"partition": p, "host": self.host_id})
        except JetAgentsError as exc:  # the claim still names us: released next round
            self._log.warning("partition_release_failed", partition=p, error=str(exc))
        except Exception:  # noqa: BLE001 - released next round (_release_orphans)
            self._log.exception("partition_release_failed", partition=p)
        finally:
            self.releasing.pop(p, None)

    async def still_holds(self, p: int) -> bool:
        """Ask the store (not our memory) whether our claim on ``p`` stands."""
        ok = claim_stands(await self.store.get(f"claim.{p}"), self.host_id, self.claim_revs.get(p))
        if not ok and p in self.held:
            await self._drop(p)
        return ok
