"""Shared state in JetStream KV with a consistency level chosen per use.

::

    shared = client.shared()                       # or self.ctx.client.shared() in an agent
    await shared.strong.increment("stock.sku1", -1)            # CAS on the KV revision, retried
    await shared.eventual.put("prefs.u1", {"theme": "dark"})    # local now, propagated later
    (await shared.eventual.get("prefs.u1")).staleness_s         # how old the cache may be
    s = shared.session(); await s.put("cart.u1", [1]); await s.get("cart.u1")  # read-your-writes
    await shared.crdt.increment("views")                        # server counter (Nats-Incr)
    await shared.crdt.add("tags", "blue")                       # add-wins OR-set, merged on conflict

Everything is stored in one KV bucket (``<root>_state``) plus one counter stream
(``<ROOT>_CTR``); the key layout and the documents are in ``docs/state.md``. The pure parts
(CRDTs, vector clocks, resolvers) live in ``_core``; the NATS calls in ``_nats.statekv``.
:class:`SharedState` is the facade one replica is used through: it owns the connection to the
bucket, what this replica last saw of each key, and whether the cluster is reachable; each
consistency level is its own module (``strong``, ``eventual``, ``session``, ``crdt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Callable
from typing import Any

import orjson

from .._core.clock import Clock, SystemClock
from .._core.errors import JetAgentsError, PartitionError, Unavailable
from .._core.vclock import Resolver, resolver_from
from .._core.wire import Subjects
from .._nats.kv import KvConflict, NatsClient
from .._nats.statekv import StateBucket, new_replica_id, unavailable_on_loss
from .cache import Cache
from .crdt import CrdtState
from .eventual import EventualState
from .options import StateOptions, StateStats, validate_key
from .session import Session
from .strong import StrongState
from .tasks import stop_tasks
from .versions import VersionedWrites


class SharedState:
    """Shared state for one process (one replica). Create with ``client.shared()`` or
    :meth:`connect`. Use :attr:`strong`, :attr:`eventual`, :meth:`session` and :attr:`crdt`.
    """

    def __init__(
        self,
        nc: NatsClient,
        options: StateOptions | None = None,
        *,
        subjects: Subjects | None = None,
        replica_id: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        owns_connection: bool = False,
        resolver: Resolver | Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self.nc = nc
        self.options = options or StateOptions()
        self.subjects = subjects or Subjects()
        self.bucket = self.subjects.bucket("state")
        self.stream = f"KV_{self.bucket}"
        self.counter_stream = self.subjects.stream("CTR")
        self.kv = StateBucket(
            nc, self.bucket, self.counter_stream, f"{self.subjects.root}.ctr.>", timeout_s=self.options.op_timeout_s
        )
        self.replica_id = replica_id or new_replica_id()
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.resolver: Resolver = resolver_from(resolver if resolver is not None else self.options.resolver)
        self.stats = StateStats()
        self.partitioned = False
        self._retry = self.options.cas_retry()
        self._owns = owns_connection
        self._ready: asyncio.Task[None] | None = None
        self._cache: Cache | None = None
        self._cache_start: asyncio.Task[Cache] | None = None
        self._known: dict[str, tuple[Any, int]] = {}  # last doc seen per kv key
        self._ops = itertools.count(1)
        self._healer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.versions = VersionedWrites(self)
        self.strong = StrongState(self)
        self.eventual = EventualState(self)
        self.crdt = CrdtState(self)

    @classmethod
    async def connect(
        cls, url: str, options: StateOptions | None = None, *, inbox_prefix: str = "_INBOX", **kw: Any
    ) -> SharedState:
        from .._nats.api import connect

        nc = await connect(url, name="jetagents-state", inbox_prefix=inbox_prefix)
        st = cls(nc, options, owns_connection=True, **kw)
        await st.start()
        return st

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the bucket and the counter stream if missing (idempotent)."""
        if self._ready is None or (self._ready.done() and self._ready.exception() is not None):
            self._ready = asyncio.ensure_future(
                self.kv.ensure(replicas=self.options.replicas, max_value_bytes=self.options.max_value_bytes)
            )
        await asyncio.shield(self._ready)

    async def close(self) -> None:
        await stop_tasks(list(self._background) + ([self._healer] if self._healer else []))
        await self.eventual.stop()
        if self._cache is not None:
            await self._cache.stop()
        if self._owns:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def __aenter__(self) -> SharedState:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self) -> Session:
        """A session: read-your-writes and monotonic reads for whoever holds it."""
        return Session(self)

    async def cache(self) -> Cache:
        """The watch-fed cache (started on first use)."""
        if self._cache is not None:
            return self._cache
        if self._cache_start is None:
            self._cache_start = asyncio.ensure_future(self._start_cache())
        return await asyncio.shield(self._cache_start)

    async def _start_cache(self) -> Cache:
        await self.start()
        c = Cache(self)
        async with unavailable_on_loss():  # the cache's first catch-up timing out too
            await c.start()
        self._cache = c
        return c

    # -- keys and raw operations -------------------------------------------------------------
    def value_key(self, key: str) -> str:
        return f"v.{validate_key(key)}"

    def crdt_key(self, key: str) -> str:
        return f"c.{validate_key(key)}"

    def next_seq(self) -> int:
        return next(self._ops)

    def next_op(self) -> str:
        return f"{self.replica_id}.{next(self._ops)}"

    async def read_doc(self, kv_key: str) -> tuple[Any, int]:
        """Read the latest document from the stream leader (linearizable per key)."""
        await self.start()
        try:
            entry = await self.kv.last(kv_key)
        except Unavailable:
            self.mark_unhealthy()
            raise
        self.mark_healthy()
        if entry is None:
            return None, 0
        doc = orjson.loads(entry.data) if entry.data else None
        self._remember(kv_key, doc, entry.revision)
        return doc, entry.revision

    async def cas(self, kv_key: str, doc: Any, expected_rev: int, msg_id: str) -> int:
        """Store ``doc`` if the key's revision is still ``expected_rev`` (0: absent); raises
        ``KvConflict`` if someone wrote first."""
        data = orjson.dumps(doc)
        if len(data) > self.options.max_value_bytes:
            raise ValueError(f"state value of {len(data)} bytes exceeds {self.options.max_value_bytes}")
        await self.start()
        try:
            rev = await self.kv.cas(kv_key, data, expected_rev, msg_id)
        except KvConflict:
            self.mark_healthy()
            raise
        except Unavailable:
            self.mark_unhealthy()
            raise
        self.mark_healthy()
        self.stats.writes += 1
        self._remember(kv_key, doc, rev)
        return rev

    async def barrier(self, kv_key: str, rev: int) -> bool:
        """Confirm through the bucket's Raft group that ``kv_key`` is still at ``rev``.

        Publishes an empty message to ``$KV.<bucket>._rb`` with
        ``Nats-Expected-Last-Subject-Sequence: rev`` checked against the subject of
        ``kv_key`` (``Nats-Expected-Last-Subject-Sequence-Subject``). Only a leader with a quorum
        can commit it, and the check is made in log order: a PubAck means ``rev`` was the
        key's latest revision at the barrier's place in the log, after the read began. False:
        the key moved on (read again). Unavailable: no quorum (a deposed leader cannot ack).
        """
        try:
            await self.kv.barrier(kv_key, rev)
        except KvConflict:
            self.mark_healthy()
            return False
        except Unavailable:
            self.mark_unhealthy()
            raise
        self.mark_healthy()
        return True

    def _remember(self, kv_key: str, doc: Any, rev: int) -> None:
        cur = self._known.get(kv_key)
        if cur is None or rev >= cur[1]:
            self._known[kv_key] = (doc, rev)

    def fallback(self, kv_key: str) -> tuple[Any, int] | None:
        """The newest copy held in memory (cache or last seen), for degraded reads."""
        best = self._known.get(kv_key)
        if self._cache is not None:
            c = self._cache.get(kv_key)
            if c is not None and (best is None or c[1] > best[1]):
                best = c
        return best

    async def backoff(self, attempt: int) -> None:
        await asyncio.sleep(self._retry.delay(attempt, self.rng))

    # -- partitions ------------------------------------------------------------------------
    def mark_healthy(self) -> None:
        self.partitioned = False

    def mark_unhealthy(self) -> None:
        self.partitioned = True
        if self._healer is None or self._healer.done():
            self._healer = asyncio.create_task(self._heal(), name="state-heal")

    def refuse(self, what: str, *, applied: bool | str = False) -> PartitionError:
        self.stats.partition_refusals += 1
        return PartitionError(
            f"{what}: the cluster cannot reach quorum (strategy {self.options.partition.value})",
            details={"applied": applied, "strategy": self.options.partition.value},
        )

    async def _heal(self) -> None:
        """While partitioned: probe until the bucket has a leader again, then reconcile."""
        while True:
            await asyncio.sleep(self.options.probe_interval_s)
            try:
                info = await self.kv.info()
            except JetAgentsError:
                continue
            cluster = info.get("cluster") or {}
            if self.options.replicas > 1 and not cluster.get("leader"):
                continue
            self.partitioned = False
            try:
                await self.reconcile()
            except JetAgentsError:
                self.partitioned = True
                continue
            return

    async def reconcile(self) -> int:
        """Write everything accepted locally during a partition; returns how many keys/counters."""
        n = await self.crdt.reconcile()
        n += await self.eventual.reconcile()
        self.stats.reconciled += n
        return n

    def pending(self) -> int:
        """Writes accepted locally and not yet on the server."""
        return self.crdt.pending() + self.eventual.pending()

    async def wait_reconciled(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while self.pending():
                if self._healer is None or self._healer.done():
                    with contextlib.suppress(JetAgentsError):
                        await self.reconcile()
                await asyncio.sleep(0.05)
