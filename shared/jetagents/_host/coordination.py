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

The coordinator is I/O-agnostic: it talks to a :class:`ClusterStore` (JetStream KV in
production, :class:`MemoryStore` with a fake clock in the deterministic simulation).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog
from nats.aio.client import Client as NATS

from .._core.clock import Clock
from .._core.errors import JetAgentsError, Unavailable
from .._core.ring import UNOWNED, compute_ring, step_towards
from .._nats.api import NS, JSApiError, js_api, js_publish

log = structlog.get_logger("jetagents.cluster")

ERR_NO_MESSAGE = 10037
ERR_WRONG_LAST_SEQUENCE = 10071


class CasConflict(Exception):
    """A compare-and-set lost: the key changed since it was read (never on the wire)."""


@dataclass(frozen=True, slots=True)
class Entry:
    value: dict[str, Any]
    rev: int


class ClusterStore(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int: ...

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int: ...

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int: ...

    async def remove(self, key: str) -> None: ...

    async def scan(self, prefix: str) -> dict[str, Entry]: ...


# -- the in-memory store (deterministic simulation) ------------------------------------------
class MemoryStore:
    """A linearizable KV with per-key TTL on a fake clock: what the simulation runs on."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rev = 0
        self.data: dict[str, tuple[dict[str, Any], int, float | None]] = {}
        self.history: list[tuple[str, dict[str, Any], int]] = []  # every accepted write

    def _live(self, key: str) -> tuple[dict[str, Any], int, float | None] | None:
        item = self.data.get(key)
        if item is not None and item[2] is not None and self.clock.monotonic() >= item[2]:
            del self.data[key]
            return None
        return item

    def _write(self, key: str, value: dict[str, Any], ttl_s: float | None) -> int:
        self.rev += 1
        expires = self.clock.monotonic() + ttl_s if ttl_s else None
        self.data[key] = (dict(value), self.rev, expires)
        self.history.append((key, dict(value), self.rev))
        return self.rev

    async def get(self, key: str) -> Entry | None:
        item = self._live(key)
        return Entry(dict(item[0]), item[1]) if item else None

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        if self._live(key) is not None:
            raise CasConflict(f"{key} exists")
        return self._write(key, value, ttl_s)

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int:
        item = self._live(key)
        if item is None or item[1] != rev:
            raise CasConflict(f"{key} changed")
        return self._write(key, value, ttl_s)

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        return self._write(key, value, ttl_s)

    async def remove(self, key: str) -> None:
        self.data.pop(key, None)

    async def scan(self, prefix: str) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for key in sorted(self.data):
            if key.startswith(prefix):
                item = self._live(key)
                if item is not None:
                    out[key] = Entry(dict(item[0]), item[1])
        return out


# -- the JetStream store -------------------------------------------------------------------
def cluster_bucket_config(bucket: str, replicas: int) -> dict[str, Any]:
    """A KV bucket (so ``nats kv`` can read it) that also allows per-message TTLs."""
    return {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "discard": "new",
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "deny_purge": False,
        "allow_direct": True,
        "allow_msg_ttl": True,
        "duplicate_window": 2 * 60 * NS,
    }


class JetStreamStore:
    """:class:`ClusterStore` on a JetStream KV bucket, through the raw ``$JS.API``.

    Reads go to the stream leader (``STREAM.MSG.GET``), so a claim or the ring is never
    read from a lagging replica; ``scan`` uses a batched direct get (it only feeds the
    leader's view of the members and status output, where a moment's lag is harmless).
    """

    def __init__(self, nc: NATS, bucket: str, *, replicas: int = 1, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.replicas = replicas
        self.timeout_s = timeout_s

    async def ensure(self) -> None:
        try:
            await js_api(self.nc, f"$JS.API.STREAM.INFO.{self.stream}", None, self.timeout_s)
        except JSApiError as exc:
            if exc.err_code != 10059:  # stream not found
                raise
            try:
                await js_api(
                    self.nc,
                    f"$JS.API.STREAM.CREATE.{self.stream}",
                    cluster_bucket_config(self.bucket, self.replicas),
                    self.timeout_s,
                )
            except JSApiError as exc2:
                if "already in use" not in exc2.description:
                    raise

    def _subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"

    async def get(self, key: str) -> Entry | None:
        try:
            resp = await js_api(
                self.nc,
                f"$JS.API.STREAM.MSG.GET.{self.stream}",
                {"last_by_subj": self._subject(key)},
                self.timeout_s,
            )
        except JSApiError as exc:
            if exc.err_code == ERR_NO_MESSAGE:
                return None
            raise Unavailable(f"cluster store: {exc.description}") from None
        msg = resp["message"]
        hdrs = base64.b64decode(msg.get("hdrs") or b"").decode(errors="replace")
        if "KV-Operation: DEL" in hdrs or "KV-Operation: PURGE" in hdrs:
            return None
        data = base64.b64decode(msg.get("data") or b"")
        return Entry(orjson.loads(data) if data else {}, int(msg["seq"]))

    async def _publish(self, key: str, value: dict[str, Any], expect: int | None, ttl_s: float | None) -> int:
        hdrs: dict[str, str] = {}
        if expect is not None:
            hdrs["Nats-Expected-Last-Subject-Sequence"] = str(expect)
        if ttl_s:
            hdrs["Nats-TTL"] = f"{max(1, math.ceil(ttl_s))}s"
        try:
            ack = await js_publish(self.nc, self._subject(key), orjson.dumps(value), hdrs, self.timeout_s)
        except JSApiError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                raise CasConflict(f"{key} changed") from None
            raise Unavailable(f"cluster store: {exc.description}") from None
        return int(ack["seq"])

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        return await self._publish(key, value, 0, ttl_s)

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int:
        return await self._publish(key, value, rev, ttl_s)

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        return await self._publish(key, value, None, ttl_s)

    async def remove(self, key: str) -> None:
        try:
            await js_api(self.nc, f"$JS.API.STREAM.PURGE.{self.stream}", {"filter": self._subject(key)}, self.timeout_s)
        except JSApiError as exc:
            raise Unavailable(f"cluster store: {exc.description}") from None

    async def scan(self, prefix: str) -> dict[str, Entry]:
        inbox = self.nc.new_inbox()
        q: asyncio.Queue[Any] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            q.put_nowait(msg)

        sub = await self.nc.subscribe(inbox, cb=on_msg)
        out: dict[str, Entry] = {}
        base = f"$KV.{self.bucket}."
        try:
            req = {"multi_last": [f"{base}{prefix}>"], "batch": 4096}
            await self.nc.publish(f"$JS.API.DIRECT.GET.{self.stream}", orjson.dumps(req), reply=inbox)
            async with asyncio.timeout(self.timeout_s):
                while True:
                    msg = await q.get()
                    hdrs = msg.headers or {}
                    status = hdrs.get("Status")
                    if status in ("404", "204"):
                        return out
                    if status is not None:
                        raise Unavailable(f"cluster store scan failed with status {status}")
                    if hdrs.get("KV-Operation") in ("DEL", "PURGE"):
                        continue
                    key = hdrs.get("Nats-Subject", "")[len(base) :]
                    out[key] = Entry(orjson.loads(msg.data) if msg.data else {}, int(hdrs.get("Nats-Sequence", "0")))
        except TimeoutError:
            raise Unavailable("cluster store scan timed out") from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


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


class Coordinator:
    """One host's part in the cluster. ``step()`` does one round; ``run()`` loops it."""

    def __init__(self, host_id: str, store: ClusterStore, clock: Clock, cfg: ClusterConfig, hooks: Hooks) -> None:
        self.host_id = host_id
        self.store = store
        self.clock = clock
        self.cfg = cfg
        self.hooks = hooks
        self.ring: RingView | None = None
        self.held: set[int] = set()  # claimed and started
        self.releasing: dict[int, asyncio.Task[None]] = {}
        self.acquiring: dict[int, float] = {}  # partition -> when we started waiting for it
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
        beats = asyncio.create_task(self._heartbeat_loop())
        try:
            while not self.stopped:
                try:
                    await self.step()
                except (Unavailable, CasConflict) as exc:
                    self._log.debug("cluster_step_failed", error=str(exc))
                except Exception:  # noqa: BLE001 - the coordinator must keep going
                    self._log.exception("cluster_step_crashed")
                await asyncio.sleep(self.cfg.tick_s)
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
            await asyncio.sleep(min(self.cfg.heartbeat_s, self.cfg.tick_s))

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
            claim = claims.get(f"claim.{p}")
            if claim is None or claim.value.get("host") != self.host_id or claim.rev != self.claim_revs.get(p):
                self._log.warning("claim_lost", partition=p)
                self.held.discard(p)
                self.claim_revs.pop(p, None)
                await self.hooks.stop_partition(p, graceful=False)
                await self.hooks.event("partition.lost", {"partition": p, "host": self.host_id})

    def _release_orphans(self, claims: dict[str, Entry]) -> None:
        """Release claims that name us in the store but that we do not serve.

        A host forgets a claim without releasing it when it fences itself (silent for a
        member TTL: the store was unreachable, so it could not write), when a release or
        a claim's write failed or its reply was lost although the write landed, or when it
        restarts under the same id. While the ring gives it the partition that heals by
        itself (it claims its own claim again); once the ring has moved the partition on,
        nothing else would ever free it, and the new owner would wait out
        ``handoff_timeout_s`` for a live host that neither serves nor releases it. Checked
        every round, so a release that fails is simply tried again.
        """
        mine = self.assigned()
        busy = self.held | mine | set(self.releasing) | set(self._acquire_tasks)
        for key, claim in claims.items():
            if claim.value.get("host") != self.host_id:
                continue
            try:
                p = int(key.removeprefix("claim."))
            except ValueError:
                continue
            if p in busy or not 0 <= p < self.cfg.partitions:
                continue
            self._log.warning("orphan_claim_released", partition=p, rev=claim.rev)
            self.releasing[p] = asyncio.create_task(self._release_orphan(p, claim.rev))

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
        entries = await self.store.scan("place.")
        fresh = {k.removeprefix("place."): (str(e.value.get("host", "")), e.rev) for k, e in entries.items()}
        # never forget a placement we learnt directly (adopt) and the scan has not seen yet
        for key, (host, rev) in self.placements.items():
            if key not in fresh or fresh[key][1] < rev:
                fresh[key] = (host, rev)
        self.placements = fresh

    async def place(self, agent_key: str, host: str) -> int:
        """Record that ``agent_key`` runs on ``host`` (CAS on the previous placement);
        returns the placement's revision, the placed host's writer token."""
        key = f"place.{agent_key}"
        value = {"host": host, "ts_ms": self.clock.wall_ms()}
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
            self.held.discard(p)
            self.claim_revs.pop(p, None)
            await self.hooks.stop_partition(p, graceful=False)
        self.is_leader = False

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
        value = entry.value
        epoch = value.get("epoch", 0)
        owners = value.get("owners")
        if not (
            isinstance(epoch, int)
            and isinstance(owners, list)
            and len(owners) == self.cfg.partitions
            and all(isinstance(o, str) for o in owners)
        ):
            # Only hosts (and admins) may write the ring, yet a bad value must not stop every
            # round: read it as a ring that assigns nothing, which the leader replaces (CAS
            # on this revision) with a valid one at the next epoch.
            self._log.error("ring_malformed", rev=entry.rev)
            epoch = epoch if isinstance(epoch, int) else 0
            if self.ring is None or entry.rev != self.ring.rev:
                self.ring = RingView(
                    max(epoch, self.ring.epoch if self.ring else 0), [UNOWNED] * self.cfg.partitions, entry.rev, ""
                )
            return
        if self.ring is None or epoch > self.ring.epoch or entry.rev != self.ring.rev:
            if self.ring is not None and epoch < self.ring.epoch:
                return  # never go back to an older ring
            self.ring = RingView(epoch, list(owners), entry.rev, str(value.get("leader", "")))

    async def _lead(self) -> None:
        members = self.members_cache  # read once this round, in step()
        alive = set(members)
        joined, left = alive - self._members_seen, self._members_seen - alive
        for h in sorted(joined):
            await self.hooks.event("member.joined", {"host": h})
        for h in sorted(left):
            await self.hooks.event("member.left", {"host": h})
        self._members_seen = alive
        weights = {h: float(m.get("capacity", 1.0)) if not m.get("draining") else 0.0 for h, m in members.items()}
        p_count = self.cfg.partitions
        current = list(self.ring.owners) if self.ring else [UNOWNED] * p_count
        now = self.clock.monotonic()
        outage = now < self.members_trusted_at or now - self.last_heartbeat_ok > self.cfg.member_ttl_s
        if self.ring is not None and outage and any(owner and owner not in alive for owner in current):
            return  # (just back) from a store outage: absent members may only be late

        claims = await self.store.scan("claim.")
        in_transit = 0
        for p, owner in enumerate(current):
            claim = claims.get(f"claim.{p}")
            if owner and owner in alive and (claim is None or claim.value.get("host") != owner):
                in_transit += 1
        target = compute_ring(p_count, weights, previous=current, load_factor=self.cfg.load_factor)
        nxt = step_towards(current, target, alive, max_moves=self.cfg.max_moves, in_transit=in_transit)
        if self.ring is not None and nxt == current:
            return
        epoch = (self.ring.epoch if self.ring else 0) + 1
        value = {"epoch": epoch, "owners": nxt, "leader": self.host_id, "ts_ms": self.clock.wall_ms()}
        try:
            if self.ring is None:
                rev = await self.store.create("ring", value)
            else:
                rev = await self.store.update("ring", value, self.ring.rev)
        except CasConflict:
            return  # someone else wrote it: read it next round
        moved = sum(1 for a, b in zip(current, nxt, strict=True) if a != b)
        self.ring = RingView(epoch, nxt, rev, self.host_id)
        self._log.info("ring_updated", epoch=epoch, moved=moved, in_transit=in_transit)
        await self.hooks.event("ring", {"epoch": epoch, "moved": moved, "leader": self.host_id})

    # -- claims ---------------------------------------------------------------------------
    def assigned(self) -> set[int]:
        if self.ring is None or self.stopped:
            return set()
        return {p for p, h in enumerate(self.ring.owners) if h == self.host_id}

    async def _reconcile(self, now: float) -> None:
        mine = self.assigned()
        for p in sorted(self.held - mine):
            self.held.discard(p)
            self.releasing[p] = asyncio.create_task(self._release(p))
        want = sorted(p for p in mine - self.held if p not in self.releasing)
        for p in list(self.acquiring):
            if p not in mine:
                del self.acquiring[p]
        if not want:
            return
        want = [p for p in want if p not in self._acquire_tasks]
        if not want:
            return
        alive = set(self.members_cache)  # read once this round, in step()
        # claim and start in the background, concurrently: starting a partition (consumer
        # reset) takes a round trip or two, on a replicated stream each consumer is its
        # own raft group, and the next rounds (claims check, ring) must not wait for it
        for p in want:
            self._acquire_tasks[p] = asyncio.create_task(self._acquire_guarded(p, now, alive))

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
        if claim is not None and holder not in ("", self.host_id):
            if holder in alive and now - since < self.cfg.handoff_timeout_s:
                return  # the previous owner is still handing it over
            if holder in alive:
                self._log.warning("handoff_timeout", partition=p, holder=holder)
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
            # The previous holder is gone (its connection, and its pull requests with it)
            # or was ourselves: rewinding the consumer in place is enough and fast. A live
            # previous holder may still have pull requests waiting at the server: then the
            # consumer is recreated, which cuts them off.
            rewind = holder == self.host_id or (bool(holder) and holder not in alive)
            await self.hooks.start_partition(p, rewind=rewind)
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
        except (Unavailable, JSApiError) as exc:  # the claim still names us: released next round
            self._log.warning("partition_release_failed", partition=p, error=str(exc))
        except Exception:  # noqa: BLE001 - released next round (_release_orphans)
            self._log.exception("partition_release_failed", partition=p)
        finally:
            self.releasing.pop(p, None)

    async def still_holds(self, p: int) -> bool:
        """Ask the store (not our memory) whether our claim on ``p`` stands."""
        claim = await self.store.get(f"claim.{p}")
        ok = claim is not None and claim.value.get("host") == self.host_id and claim.rev == self.claim_revs.get(p)
        if not ok and p in self.held:
            self.held.discard(p)
            self.claim_revs.pop(p, None)
            await self.hooks.stop_partition(p, graceful=False)
        return ok

    # -- leaving ------------------------------------------------------------------------------
    async def drain(self, timeout_s: float, wait: Callable[[float], Awaitable[None]] = asyncio.sleep) -> bool:
        """Ask the leader to move our partitions away, and wait until they are released.

        True when they were handed over. False at the timeout, and at once when no other
        live host could take them (a lone host, the last of a cluster, or every host
        draining together): waiting would only delay the stop, and ``leave`` releases them.
        """
        self.draining = True
        self._next_heartbeat = 0.0
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline:
            if not self.held and not self.releasing and not self.assigned():
                return True
            if not self._successor_alive():
                return False
            await wait(self.cfg.tick_s)
        return False

    def _successor_alive(self) -> bool:
        """Is any other host alive and not draining (someone our partitions can go to)?
        From the members the coordinator's rounds read, which go on while we drain."""
        return any(h != self.host_id and not m.get("draining") for h, m in self.members_cache.items())

    async def leave(self) -> None:
        """Stop for good: release what is still held, resign, remove our member key."""
        self.stopped = True
        for p in sorted(self.held):
            self.held.discard(p)
            self.releasing[p] = asyncio.create_task(self._release(p))
        if self.releasing:
            await asyncio.gather(*self.releasing.values(), return_exceptions=True)
        await self.resign()
        with contextlib.suppress(JetAgentsError, CasConflict):
            await self.store.remove(f"member.{self.host_id}")


async def cluster_status(store: ClusterStore) -> dict[str, Any]:
    """Hosts, leader, ring epoch, partitions per host (what ``jetagents status`` prints)."""
    members = {k.removeprefix("member."): e.value for k, e in (await store.scan("member.")).items()}
    leader = await store.get("leader")
    ring = await store.get("ring")
    claims = await store.scan("claim.")
    owners: list[str] = list(ring.value.get("owners", [])) if ring else []
    held: dict[str, int] = {}
    for e in claims.values():
        h = str(e.value.get("host", ""))
        if h:
            held[h] = held.get(h, 0) + 1
    assigned: dict[str, int] = {}
    for h in owners:
        if h:
            assigned[h] = assigned.get(h, 0) + 1
    hosts = []
    for h in sorted(set(members) | set(assigned) | set(held)):
        m = members.get(h, {})
        hosts.append(
            {
                "host": h,
                "alive": h in members,
                "draining": bool(m.get("draining", False)),
                "capacity": m.get("capacity"),
                "tags": m.get("tags", []),
                "partitions_assigned": assigned.get(h, 0),
                "partitions_held": held.get(h, 0),
                "active_agents": m.get("active_agents"),
                "inflight": m.get("inflight"),
            }
        )
    return {
        "leader": (leader.value.get("host") or None) if leader else None,
        "ring_epoch": int(ring.value.get("epoch", 0)) if ring else 0,
        "partitions": len(owners),
        "unowned": sum(1 for h in owners if not h),
        "hosts": hosts,
    }
