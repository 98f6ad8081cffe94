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
(CRDTs, vector clocks, resolvers) live in ``_crdt.py`` and ``_vclock.py``; this module is the
adapter that moves them through NATS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import itertools
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.nuid import NUID
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .._core.clock import Clock, SystemClock
from .._core.crdt import CRDT, GCounter, GSet, LWWMap, LWWRegister, ORMap, ORSet, PNCounter, decode_crdt
from .._core.errors import InternalError, JetAgentsError, PartitionError, Unavailable
from .._core.vclock import Resolver, VectorClock, Versioned, canonical, reconcile_detail, resolver_from
from .._core.wire import Subjects
from .._nats.api import NS, JSApiError, js_api, js_publish

C = TypeVar("C", bound=CRDT)
ERR_NO_MESSAGE = 10037
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
Consistency = Literal["strong", "eventual", "session", "crdt"]


class PartitionStrategy(enum.StrEnum):
    """What state writes do when the cluster cannot reach quorum."""

    PAUSE = "pause"  # refuse reads and writes that need the server: PartitionError
    DEGRADED = "degraded"  # serve cached reads (marked stale), refuse writes
    CONTINUE = "continue"  # accept CRDT (and eventual) writes locally, reconcile after healing


class StateOptions(BaseSettings):
    """Options of a :class:`SharedState` (also from ``JETAGENTS_STATE_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="JETAGENTS_STATE_", extra="ignore")

    replicas: int = Field(default=1, ge=1, le=5, description="R3 on a 3-node cluster for linearizable strong state")
    partition: PartitionStrategy = PartitionStrategy.PAUSE
    resolver: str = Field(default="lww", description="conflict resolution of eventual/session writes")
    op_timeout_s: float = Field(default=2.0, gt=0, description="one NATS round trip")
    max_attempts: int = Field(default=200, ge=1, description="CAS attempts of one strong update")
    retry_base_s: float = Field(default=0.002, gt=0)
    retry_max_s: float = Field(default=0.25, gt=0)
    probe_interval_s: float = Field(default=0.5, gt=0, description="staleness and partition-heal probes")
    linearizable_reads: bool = Field(
        default=False,
        description="strong reads confirmed by a quorum write (a read barrier); see StrongState.get",
    )
    max_value_bytes: int = Field(default=1024 * 1024, ge=1024)


def validate_key(key: str) -> str:
    if not _KEY_RE.match(key) or len(key) > 256:
        raise ValueError(f"invalid state key {key!r}: dot-separated tokens of [A-Za-z0-9_-]")
    return key


class StoredValue(BaseModel):
    """The document of a plain (non-CRDT) value: one version, or siblings."""

    model_config = ConfigDict(extra="forbid")
    versions: list[Versioned]


@dataclass(slots=True)
class Read:
    """What a read returns. ``revision`` is the KV revision the value comes from (0: none);
    ``staleness_s`` bounds how old a cached view may be; ``stale`` marks a read served from
    memory because the cluster was unreachable; ``siblings`` holds concurrent values kept by
    the ``siblings`` resolver (then ``value`` is the latest of them)."""

    key: str
    value: Any
    revision: int
    source: Literal["server", "cache", "local"]
    staleness_s: float | None = None
    stale: bool = False
    siblings: list[Any] = field(default_factory=list)

    @property
    def conflict(self) -> bool:
        return len(self.siblings) > 1


@dataclass(slots=True)
class WriteResult:
    key: str
    value: Any
    revision: int  # 0 while only queued locally
    conflicts: int = 0  # CAS retries this write needed
    queued: bool = False  # accepted locally during a partition, not yet on the server


@dataclass(slots=True)
class StateStats:
    """Counters a benchmark or an operator reads."""

    writes: int = 0
    conflicts: int = 0  # CAS attempts refused because someone wrote first
    lost_writes: int = 0  # writes overwritten by one that had not seen them (see write_versioned)
    partition_refusals: int = 0
    queued: int = 0
    reconciled: int = 0
    read_barriers: int = 0  # barriers published by linearizable reads (shared by concurrent ones)


class _Conflict(Exception):
    pass


@contextlib.asynccontextmanager
async def _net() -> AsyncIterator[None]:
    """One place that turns "the cluster cannot answer" into Unavailable."""
    try:
        yield
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.NoRespondersError,
        nats.errors.TimeoutError,
        TimeoutError,
    ) as exc:
        raise Unavailable(f"NATS unavailable: {type(exc).__name__}") from None
    except JSApiError as exc:
        if exc.status == 503 or exc.status == 500:
            raise Unavailable(f"JetStream unavailable: {exc.description}") from None
        raise


async def _stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they are really done.

    One ``cancel()`` is not enough on Python 3.11: a task cancelled while inside
    ``asyncio.wait_for`` (every ``nc.request`` of nats-py) loses the cancellation if the
    awaited reply arrives in the same loop iteration, and a ``while True`` loop then goes on
    for ever (a test hung in ``close()`` that way). So cancel again until it ends."""
    while pending := [t for t in tasks if not t.done()]:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.2)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: never "exception was never retrieved" at shutdown


def _decode_value(doc: Any) -> list[Versioned]:
    if doc is None:
        return []
    return StoredValue.model_validate(doc).versions


def _winner(versions: list[Versioned]) -> Versioned | None:
    return max(versions, key=Versioned.sort_key) if versions else None


class _Cache:
    """A watch-fed copy of the bucket (every key), with a staleness bound.

    ``caught_up_at`` is the last moment the cache was known to hold everything the stream
    held: when the watch reports nothing pending, or when a probe finds the stream's last
    sequence already applied. ``now - caught_up_at`` bounds how stale any read is.
    """

    def __init__(self, owner: SharedState) -> None:
        self._owner = owner
        self.entries: dict[str, tuple[Any, int]] = {}  # kv key -> (doc, revision)
        self.last_seq = 0
        self.caught_up_at: float | None = None
        self._paused = False
        self._held: list[Any] = []
        self._watcher: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        self.changed = asyncio.Condition()

    async def start(self) -> None:
        o = self._owner
        js = o.nc.jetstream(timeout=o.options.op_timeout_s)
        kv = await js.key_value(o.bucket)
        self._watcher = await kv.watchall()
        self._tasks = [
            asyncio.create_task(self._run(), name="state-cache-watch"),
            asyncio.create_task(self._probe(), name="state-cache-probe"),
        ]
        await asyncio.wait_for(self.ready.wait(), o.options.op_timeout_s * 5)

    async def stop(self) -> None:
        await _stop_tasks(self._tasks)
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()

    def pause(self) -> None:
        """Stop applying updates (they are held): a lagging cache, for tests and drills."""
        self._paused = True

    async def resume(self) -> None:
        self._paused = False
        held, self._held = self._held, []
        for e in held:
            await self._apply(e)

    async def _run(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # initial values delivered
                self.caught_up_at = self._owner.clock.monotonic()
                self.ready.set()
                continue
            if self._paused:
                self._held.append(entry)
                continue
            await self._apply(entry)

    async def _apply(self, entry: Any) -> None:
        key = entry.key
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.entries.pop(key, None)
        else:
            try:
                self.entries[key] = (orjson.loads(entry.value), int(entry.revision))
            except orjson.JSONDecodeError:
                return  # not ours; a foreign writer must not break the cache
        self.last_seq = max(self.last_seq, int(entry.revision))
        if not self._paused and int(entry.delta or 0) == 0:
            self.caught_up_at = self._owner.clock.monotonic()
        async with self.changed:
            self.changed.notify_all()

    async def _probe(self) -> None:
        o = self._owner
        while True:
            await asyncio.sleep(o.options.probe_interval_s)
            t0 = o.clock.monotonic()
            try:
                async with _net():
                    info = await js_api(o.nc, f"$JS.API.STREAM.INFO.{o.stream}", None, o.options.op_timeout_s)
            except JetAgentsError:
                continue
            if not self._paused and self.last_seq >= int(info["state"]["last_seq"]):
                self.caught_up_at = max(self.caught_up_at or t0, t0)

    def staleness_s(self) -> float | None:
        if self.caught_up_at is None:
            return None
        return max(0.0, self._owner.clock.monotonic() - self.caught_up_at)

    def get(self, kv_key: str) -> tuple[Any, int] | None:
        return self.entries.get(kv_key)

    async def wait_revision(self, kv_key: str, revision: int, timeout_s: float) -> bool:
        """Wait until the cache holds ``kv_key`` at ``revision`` or later."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.changed:
                    while True:
                        cur = self.entries.get(kv_key)
                        if cur is not None and cur[1] >= revision:
                            return True
                        await self.changed.wait()
        except TimeoutError:
            return False


class SharedState:
    """Shared state for one process (one replica). Create with ``client.shared()`` or
    :meth:`connect`. Use :attr:`strong`, :attr:`eventual`, :meth:`session` and :attr:`crdt`.
    """

    def __init__(
        self,
        nc: NATS,
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
        root = self.subjects.root.replace("-", "_")
        self.bucket = f"{root}_state"
        self.stream = f"KV_{self.bucket}"
        self.counter_stream = f"{root.upper()}_CTR"
        self.replica_id = replica_id or NUID().next().decode()
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.resolver: Resolver = resolver_from(resolver if resolver is not None else self.options.resolver)
        self.stats = StateStats()
        self.partitioned = False
        self._owns = owns_connection
        self._ready: asyncio.Task[None] | None = None
        self._cache: _Cache | None = None
        self._cache_start: asyncio.Task[_Cache] | None = None
        self._known: dict[str, tuple[Any, int]] = {}  # last doc seen per kv key
        self._writing: dict[str, dict[str, Versioned]] = {}  # kv key -> op -> version being written
        self._lin_locks: dict[str, asyncio.Lock] = {}  # linearizable-read rounds per kv key
        self._lin_started: dict[str, int] = {}
        self._lin_done: dict[str, tuple[int, Any, int]] = {}  # kv key -> (round, doc, revision)
        self._nuid = NUID()
        self._ops = itertools.count(1)
        self._healer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
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
            self._ready = asyncio.ensure_future(self._ensure())
        await asyncio.shield(self._ready)

    async def _ensure(self) -> None:
        o = self.options
        dup = 120 * NS
        configs = [
            {
                "name": self.stream,
                "subjects": [f"$KV.{self.bucket}.>"],
                "max_msgs_per_subject": 1,
                "discard": "new",
                "allow_rollup_hdrs": True,
                "deny_delete": True,
                "allow_direct": True,
                "num_replicas": o.replicas,
                "storage": "file",
                "duplicate_window": dup,
                "max_msg_size": o.max_value_bytes + 4096,
                "retention": "limits",
            },
            {
                "name": self.counter_stream,
                "subjects": [f"{self.subjects.root}.ctr.>"],
                "allow_msg_counter": True,
                "allow_direct": True,
                "max_msgs_per_subject": 1,  # the server keeps the running total in the last one
                "num_replicas": o.replicas,
                "storage": "file",
                "duplicate_window": dup,
                "retention": "limits",
            },
        ]
        async with _net():
            for cfg in configs:
                try:
                    await js_api(self.nc, f"$JS.API.STREAM.INFO.{cfg['name']}", None, o.op_timeout_s)
                except JSApiError as exc:
                    if exc.err_code != 10059:
                        raise
                    try:
                        await js_api(self.nc, f"$JS.API.STREAM.CREATE.{cfg['name']}", cfg, o.op_timeout_s * 2)
                    except JSApiError as exc2:
                        if "already in use" not in exc2.description:
                            raise

    async def close(self) -> None:
        await _stop_tasks(list(self._background) + ([self._healer] if self._healer else []))
        await self.eventual._stop()
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

    async def cache(self) -> _Cache:
        """The watch-fed cache (started on first use)."""
        if self._cache is not None:
            return self._cache
        if self._cache_start is None:
            self._cache_start = asyncio.ensure_future(self._start_cache())
        return await asyncio.shield(self._cache_start)

    async def _start_cache(self) -> _Cache:
        await self.start()
        c = _Cache(self)
        async with _net():
            await c.start()
        self._cache = c
        return c

    # -- keys and raw operations -------------------------------------------------------------
    def value_key(self, key: str) -> str:
        return f"v.{validate_key(key)}"

    def crdt_key(self, key: str) -> str:
        return f"c.{validate_key(key)}"

    def _subject(self, kv_key: str) -> str:
        return f"$KV.{self.bucket}.{kv_key}"

    def next_op(self) -> str:
        return f"{self.replica_id}.{next(self._ops)}"

    async def _get(self, kv_key: str) -> tuple[Any, int]:
        """Read the latest document from the stream leader (linearizable per key)."""
        await self.start()
        try:
            async with _net():
                resp = await js_api(
                    self.nc,
                    f"$JS.API.STREAM.MSG.GET.{self.stream}",
                    {"last_by_subj": self._subject(kv_key)},
                    self.options.op_timeout_s,
                )
        except JSApiError as exc:
            if exc.err_code == ERR_NO_MESSAGE:
                self._healthy()
                return None, 0
            raise
        except Unavailable:
            self._unhealthy()
            raise
        self._healthy()
        msg = resp["message"]
        raw = base64.b64decode(msg.get("data") or "")
        doc = orjson.loads(raw) if raw else None
        rev = int(msg["seq"])
        self._remember(kv_key, doc, rev)
        return doc, rev

    async def _cas(self, kv_key: str, doc: Any, expected_rev: int, msg_id: str) -> int:
        """Store ``doc`` if the key's revision is still ``expected_rev`` (0: absent)."""
        data = orjson.dumps(doc)
        if len(data) > self.options.max_value_bytes:
            raise ValueError(f"state value of {len(data)} bytes exceeds {self.options.max_value_bytes}")
        headers = {"Nats-Expected-Last-Subject-Sequence": str(expected_rev), "Nats-Msg-Id": msg_id}
        await self.start()
        try:
            async with _net():
                ack = await js_publish(self.nc, self._subject(kv_key), data, headers, self.options.op_timeout_s)
        except JSApiError as exc:
            if exc.err_code in (10071, 10164):  # 10164: the clustered leader refused it up front
                self._healthy()
                raise _Conflict() from None
            raise
        except Unavailable:
            self._unhealthy()
            raise
        self._healthy()
        rev = int(ack["seq"])
        self.stats.writes += 1
        self._remember(kv_key, doc, rev)
        return rev

    async def _barrier(self, kv_key: str, rev: int) -> bool:
        """Confirm through the bucket's Raft group that ``kv_key`` is still at ``rev``.

        Publishes an empty message to ``$KV.<bucket>._rb`` with
        ``Nats-Expected-Last-Subject-Sequence: rev`` checked against the subject of
        ``kv_key`` (``Nats-Expected-Last-Subject-Sequence-Subject``). Only a leader with a quorum
        can commit it, and the check is made in log order: a PubAck means ``rev`` was the
        key's latest revision at the barrier's place in the log, after the read began. False:
        the key moved on (read again). Unavailable: no quorum (a deposed leader cannot ack).
        """
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(rev),
            "Nats-Expected-Last-Subject-Sequence-Subject": self._subject(kv_key),
        }
        try:
            async with _net():
                await js_publish(self.nc, self._subject("_rb"), b"", headers, self.options.op_timeout_s)
        except JSApiError as exc:
            if exc.err_code in (10071, 10164):
                self._healthy()
                return False
            raise
        except Unavailable:
            self._unhealthy()
            raise
        self._healthy()
        return True

    async def _linearizable_get(self, kv_key: str) -> tuple[Any, int, int]:
        """A read linearizable across a network split: leader read, then a read barrier.
        Returns (doc, revision, re-reads needed).

        Concurrent barriers on one key refuse each other on a clustered leader (10164 while
        another is in flight), so concurrent linearizable reads of a key in this process share
        rounds: a caller may take the result of any round that *started* after it began (then
        the round's read and barrier both happened inside the caller's call); otherwise it runs
        the next round, which everyone queued behind it shares."""
        ticket = self._lin_started.get(kv_key, 0)  # rounds started before this call
        lock = self._lin_locks.setdefault(kv_key, asyncio.Lock())
        async with lock:
            done = self._lin_done.get(kv_key)
            if done is not None and done[0] > ticket:
                return done[1], done[2], 0
            round_no = self._lin_started[kv_key] = self._lin_started.get(kv_key, 0) + 1
            for attempt in range(self.options.max_attempts):
                doc, rev = await self._get(kv_key)
                self.stats.read_barriers += 1
                if await self._barrier(kv_key, rev):
                    self._lin_done[kv_key] = (round_no, doc, rev)
                    return doc, rev, attempt
                self.stats.conflicts += 1
                await self.backoff(attempt)
        raise Unavailable(f"linearizable read of {kv_key} gave up after {self.options.max_attempts} re-reads")

    def _remember(self, kv_key: str, doc: Any, rev: int) -> None:
        cur = self._known.get(kv_key)
        if cur is None or rev >= cur[1]:
            self._known[kv_key] = (doc, rev)

    def _fallback(self, kv_key: str) -> tuple[Any, int] | None:
        """The newest copy held in memory (cache or last seen), for degraded reads."""
        best = self._known.get(kv_key)
        if self._cache is not None:
            c = self._cache.get(kv_key)
            if c is not None and (best is None or c[1] > best[1]):
                best = c
        return best

    async def backoff(self, attempt: int) -> None:
        cap = min(self.options.retry_max_s, self.options.retry_base_s * (2 ** min(attempt, 20)))
        await asyncio.sleep(self.rng.uniform(0, cap))

    # -- partitions ------------------------------------------------------------------------
    def _healthy(self) -> None:
        self.partitioned = False

    def _unhealthy(self) -> None:
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
                async with _net():
                    info = await js_api(self.nc, f"$JS.API.STREAM.INFO.{self.stream}", None, self.options.op_timeout_s)
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
        n = await self.crdt._reconcile()
        n += await self.eventual._reconcile()
        self.stats.reconciled += n
        return n

    def pending(self) -> int:
        """Writes accepted locally and not yet on the server."""
        return self.crdt._pending_count() + self.eventual.pending()

    async def wait_reconciled(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while self.pending():
                if self._healer is None or self._healer.done():
                    with contextlib.suppress(JetAgentsError):
                        await self.reconcile()
                await asyncio.sleep(0.05)

    # -- the versioned-value write path (eventual, session, strong) ------------------------
    async def write_versioned(
        self, kv_key: str, new: Versioned, base_rev: int, base: list[Versioned]
    ) -> tuple[int, list[Versioned], int]:
        """Store ``new`` (written on top of ``base`` at ``base_rev``); on a concurrent write,
        reconcile with what is there using the resolver. Returns (revision, versions, conflicts)."""
        with self.writing(kv_key, new):
            return await self._write_versioned(kv_key, new, base_rev, base)

    async def _write_versioned(
        self, kv_key: str, new: Versioned, base_rev: int, base: list[Versioned]
    ) -> tuple[int, list[Versioned], int]:
        expected, current, conflicts = base_rev, base, 0
        for attempt in range(self.options.max_attempts):
            if any(v.op == new.op for v in current):
                return expected, current, conflicts  # an earlier attempt was stored
            outcome = reconcile_detail(current, [new], self.resolver)
            merged = outcome.versions
            if expected and merged == current:
                # nothing to write: ``new`` was dropped. Dominated means it was seen (stored by
                # an earlier attempt whose PubAck was lost, then overwritten by a writer that
                # read it); an equal clock under another op means it is lost (``collided``).
                self.stats.lost_writes += len(outcome.lost)
                return expected, current, conflicts
            doc = {"versions": [v.model_dump(mode="json") for v in merged]}
            try:
                rev = await self._cas(kv_key, doc, expected, f"{new.op}.{attempt}")
            except _Conflict:
                conflicts += 1
                self.stats.conflicts += 1
                doc, expected = await self._get(kv_key)
                current = _decode_value(doc)
                await self.backoff(attempt)
                continue
            # counted once, for the attempt that was stored: every write this one replaced
            # without having seen it (lww's losers, and equal-clock collisions) is lost
            self.stats.lost_writes += len(outcome.lost)
            return rev, merged, conflicts
        raise Unavailable(f"could not write {kv_key} after {self.options.max_attempts} attempts (contention)")

    def local_view(self, kv_key: str) -> tuple[Any, int] | None:
        """The newest copy of ``kv_key`` this process holds: the cache, or what this process
        itself last wrote or read from the server, whichever has the higher revision. A write
        based on anything older would not have seen this replica's own previous write, and its
        vector clock would collide with that write's (see ``reconcile_detail``)."""
        return self._fallback(kv_key)

    def new_version(self, value: Any, base: list[Versioned], kv_key: str | None = None) -> Versioned:
        """A version written on top of ``base``. Its clock is ``base``'s with this replica's
        entry incremented, unless another write of this replica to the key is still on its
        way and ``base`` has not seen it (two sessions, or a session or strong write racing the
        eventual propagator): then the two writes are concurrent, and this one counts under
        a fresh sub-replica entry (``<replica>~<n>``) so that the two never share a clock
        position (``reconcile`` would take them for one write) and the resolver decides."""
        clock = VectorClock()
        ts = self.clock.wall_ms()
        for v in base:
            clock = clock.merge(v.vclock)
            ts = max(ts, v.ts_ms + 1)
        writer = self.replica_id
        if kv_key is not None and any(not clock.dominates(v.vclock) for v in self._unseen_candidates(kv_key)):
            writer = f"{self.replica_id}~{next(self._ops)}"
        return Versioned(
            value=value, clock=clock.increment(writer).counters, ts_ms=ts, writer=writer, op=self.next_op()
        )

    def _unseen_candidates(self, kv_key: str) -> list[Versioned]:
        out = list(self._writing.get(kv_key, {}).values())
        queued = self.eventual._pending.get(kv_key)
        if queued is not None:
            out.append(queued[0])
        return out

    @contextlib.contextmanager
    def writing(self, kv_key: str, version: Versioned) -> Iterator[None]:
        """Mark ``version`` as on its way to the server (see :meth:`new_version`)."""
        held = self._writing.setdefault(kv_key, {})
        held[version.op] = version
        try:
            yield
        finally:
            held.pop(version.op, None)
            if not held:
                self._writing.pop(kv_key, None)


def _read_of(key: str, doc: Any, rev: int, source: Literal["server", "cache", "local"], **kw: Any) -> Read:
    versions = _decode_value(doc)
    w = _winner(versions)
    live = [v for v in versions if not v.deleted]
    return Read(
        key=key,
        value=None if w is None or w.deleted else w.value,
        revision=rev,
        source=source,
        siblings=[v.value for v in live] if len(versions) > 1 else [],
        **kw,
    )


class StrongState:
    """Linearizable per key: read from the stream leader, write with compare-and-set on the
    KV revision, retry on conflict with jittered backoff. Use an R3 bucket on a cluster."""

    def __init__(self, owner: SharedState) -> None:
        self._o = owner

    async def get(self, key: str, *, linearizable: bool | None = None) -> Read:
        """The latest value, from the stream leader.

        A plain leader read can be stale during a network split: a leader cut off from its
        peers keeps answering until Raft deposes it (seconds), while a new majority may
        already accept writes. ``linearizable=True`` (default: ``options.linearizable_reads``)
        closes that window with a read barrier committed through the bucket's Raft group
        (one replicated write per read, see ``docs/state.md`` for the cost); without a quorum
        it fails at once like a write."""
        o = self._o
        kv = o.value_key(key)
        lin = o.options.linearizable_reads if linearizable is None else linearizable
        try:
            if lin:
                doc, rev, _ = await o._linearizable_get(kv)
            else:
                doc, rev = await o._get(kv)
        except Unavailable:
            if o.options.partition is PartitionStrategy.PAUSE:
                raise o.refuse(f"strong read of {key!r}") from None
            held = o._fallback(kv)
            if held is None:
                raise o.refuse(f"strong read of {key!r} (nothing cached)") from None
            return _read_of(key, held[0], held[1], "local", stale=True)
        return _read_of(key, doc, rev, "server")

    async def update(self, key: str, fn: Callable[[Any], Any], *, default: Any = None) -> WriteResult:
        """Apply ``fn(current value)`` atomically. ``fn`` may run several times (on conflict)
        and must not have side effects. Siblings, if any, are replaced by the result."""
        o = self._o
        kv = o.value_key(key)
        conflicts = 0
        op = o.next_op()
        uncertain = False
        for attempt in range(o.options.max_attempts):
            try:
                doc, rev = await o._get(kv)
                versions = _decode_value(doc)
                if uncertain and any(v.op == op for v in versions):
                    w = _winner(versions)
                    return WriteResult(key, w.value if w else None, rev, conflicts)
                w = _winner(versions)
                current = default if w is None or w.deleted else w.value
                value = fn(current)
                new = o.new_version(value, versions, kv).model_copy(update={"op": op})
                with o.writing(kv, new):
                    rev = await o._cas(kv, {"versions": [new.model_dump(mode="json")]}, rev, f"{op}.{attempt}")
                return WriteResult(key, value, rev, conflicts)
            except _Conflict:
                conflicts += 1
                o.stats.conflicts += 1
                await o.backoff(attempt)
            except Unavailable:
                # the publish may or may not have been stored: the caller is told so
                raise o.refuse(f"strong write of {key!r}", applied="unknown") from None
        raise Unavailable(f"strong update of {key!r} gave up after {o.options.max_attempts} conflicts")

    async def put(self, key: str, value: Any) -> WriteResult:
        return await self.update(key, lambda _: value)

    async def increment(self, key: str, by: int = 1) -> WriteResult:
        return await self.update(key, lambda v: int(v or 0) + by)

    async def add(self, key: str, member: Any) -> WriteResult:
        """Add to a set stored as a sorted JSON list."""
        return await self.update(key, lambda v: _set_add(v, member))


class EventualState:
    """Writes land in this replica's memory at once and are propagated in the background;
    reads come from the watch-fed cache and say how stale it may be. Concurrent writes from
    different replicas are reconciled by the resolver (``lww`` by default, which loses one)."""

    def __init__(self, owner: SharedState) -> None:
        self._o = owner
        self._pending: dict[str, tuple[Versioned, int, list[Versioned]]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0
        self._flying: dict[str, tuple[Versioned, int, list[Versioned]]] = {}  # being propagated

    def pending(self) -> int:
        return len(self._pending) + self._inflight

    async def _stop(self) -> None:
        if self._task is not None:
            await _stop_tasks([self._task])

    async def _view(self, kv: str) -> tuple[list[Versioned], int, str]:
        """What the next local write is based on. It must include this replica's own earlier
        writes: the queued one, else the one being propagated, else the newest stored copy this
        process knows (its cache may lag behind what it wrote itself)."""
        p = self._pending.get(kv) or self._flying.get(kv)
        if p is not None:
            return [p[0]], p[1], "local"
        await self._o.cache()
        held = self._o.local_view(kv)
        if held is None:
            return [], 0, "cache"
        return _decode_value(held[0]), held[1], "cache"

    async def get(self, key: str, *, max_staleness_s: float | None = None) -> Read:
        """The local view. With ``max_staleness_s``, a cache that may be older than that is
        bypassed for a server read (if the server is reachable)."""
        o = self._o
        kv = o.value_key(key)
        cache = await o.cache()
        bound = cache.staleness_s()
        p = self._pending.get(kv)
        if p is not None:
            return _read_of(key, {"versions": [p[0].model_dump(mode="json")]}, p[1], "local", staleness_s=bound)
        if max_staleness_s is not None and (bound is None or bound > max_staleness_s):
            try:
                doc, rev = await o._get(kv)
                return _read_of(key, doc, rev, "server", staleness_s=0.0)
            except Unavailable:
                pass
        held = cache.get(kv)
        doc, rev = held if held is not None else (None, 0)
        return _read_of(key, doc, rev, "cache", staleness_s=bound, stale=o.partitioned)

    async def put(self, key: str, value: Any) -> WriteResult:
        return await self.update(key, lambda _: value)

    async def update(self, key: str, fn: Callable[[Any], Any], *, default: Any = None) -> WriteResult:
        """Apply ``fn`` to the local view and queue the result for propagation."""
        o = self._o
        if o.partitioned and o.options.partition is not PartitionStrategy.CONTINUE:
            raise o.refuse(f"eventual write of {key!r}")
        kv = o.value_key(key)
        base, base_rev, _ = await self._view(kv)
        w = _winner(base)
        value = fn(default if w is None or w.deleted else w.value)
        new = o.new_version(value, base, kv)
        prev = self._pending.get(kv)
        # a newer local write supersedes the queued one (its clock includes it)
        self._pending[kv] = (new, prev[1] if prev else base_rev, prev[2] if prev else base)
        if o.partitioned:
            o.stats.queued += 1
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._propagate(), name="state-propagate")
        return WriteResult(key, value, 0, queued=True)

    async def increment(self, key: str, by: int = 1) -> WriteResult:
        return await self.update(key, lambda v: int(v or 0) + by)

    async def add(self, key: str, member: Any) -> WriteResult:
        return await self.update(key, lambda v: _set_add(v, member))

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every local write has reached the server."""
        async with asyncio.timeout(timeout_s):
            await self._idle.wait()

    async def _propagate(self) -> None:
        o = self._o
        failures = 0
        while True:
            if not self._pending:
                self._inflight = 0
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            kv, (new, base_rev, base) = next(iter(self._pending.items()))
            del self._pending[kv]
            self._inflight = 1
            self._flying[kv] = (new, base_rev, base)
            try:
                await o.write_versioned(kv, new, base_rev, base)
                failures = 0
            except Unavailable:
                if kv not in self._pending:  # keep it unless a newer local write replaced it
                    self._pending[kv] = (new, base_rev, base)
                else:
                    newer = self._pending[kv]
                    self._pending[kv] = (newer[0], base_rev, base)
                failures += 1
                await asyncio.sleep(min(2.0, o.options.probe_interval_s * failures))
            finally:
                self._inflight = 0
                self._flying.pop(kv, None)

    async def _reconcile(self) -> int:
        n = len(self._pending)
        if n:
            self._wake.set()
            await self.flush(timeout_s=self._o.options.op_timeout_s * 10)
        return n


def _set_add(current: Any, member: Any) -> list[Any]:
    items = list(current or [])
    if member not in items:
        items.append(member)
    return sorted(items, key=canonical)


class Session:
    """Read-your-writes and monotonic reads for one holder, over the (possibly lagging)
    cache: a read is served from the cache only if the cache has reached the revision this
    session last wrote or read for the key; otherwise it waits ``wait_s`` for the cache and
    then reads from the server."""

    def __init__(self, owner: SharedState, *, wait_s: float = 0.05) -> None:
        self._o = owner
        self.wait_s = wait_s
        self.floor: dict[str, int] = {}  # kv key -> lowest revision this session may see
        self.cache_reads = 0
        self.server_reads = 0

    async def _read(self, key: str) -> tuple[Read, list[Versioned]]:
        o = self._o
        kv = o.value_key(key)
        need = self.floor.get(kv, 0)
        cache = await o.cache()
        held = cache.get(kv)
        if need and (held is None or held[1] < need) and self.wait_s > 0:
            await cache.wait_revision(kv, need, self.wait_s)
            held = cache.get(kv)
        if (held is not None and held[1] >= need) or (held is None and need == 0):
            doc, rev = held if held is not None else (None, 0)
            self.cache_reads += 1
            read = _read_of(key, doc, rev, "cache", staleness_s=cache.staleness_s())
        else:
            try:
                doc, rev = await o._get(kv)
            except Unavailable:
                raise o.refuse(f"session read of {key!r} (the cache is behind this session)") from None
            if rev < need:
                raise InternalError(f"server returned revision {rev} of {key!r}, the session saw {need}")
            self.server_reads += 1
            read = _read_of(key, doc, rev, "server", staleness_s=0.0)
        self.floor[kv] = max(need, read.revision)
        return read, _decode_value(doc)

    async def get(self, key: str) -> Read:
        return (await self._read(key))[0]

    async def put(self, key: str, value: Any) -> WriteResult:
        return await self.update(key, lambda _: value)

    async def update(self, key: str, fn: Callable[[Any], Any], *, default: Any = None) -> WriteResult:
        """Apply ``fn`` to the newest value this session may see and wait for the write."""
        o = self._o
        kv = o.value_key(key)
        current, base = await self._read(key)  # at least as new as anything this session saw
        mine = o.local_view(kv)  # and as new as this replica's own writes (other sessions')
        if mine is not None and mine[1] > current.revision:
            current = _read_of(key, mine[0], mine[1], "local")
            base = _decode_value(mine[0])
        new = o.new_version(fn(default if current.value is None else current.value), base, kv)
        try:
            rev, versions, conflicts = await o.write_versioned(kv, new, current.revision, base)
        except Unavailable:
            raise o.refuse(f"session write of {key!r}", applied="unknown") from None
        self.floor[kv] = max(self.floor.get(kv, 0), rev)
        w = _winner(versions)
        return WriteResult(key, w.value if w else None, rev, conflicts)


@dataclass(slots=True)
class _Replica:
    """This process's copy of one CRDT: ``state`` has everything known to be stored plus,
    under ``continue``, what was accepted during a partition (``unsynced``)."""

    cls: type[CRDT]
    state: CRDT
    replica: str
    loaded: bool = False
    unsynced: bool = False
    waiting: list[tuple[Callable[[Any, str, int], CRDT], asyncio.Future[CRDT]]] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None
    rotations: int = 0


class CrdtState:
    """CRDTs merged on conflict: an update never loses another writer's update.

    Counters use the server's own counters (``Nats-Incr`` on a stream with
    ``allow_msg_counter``): one publish per increment, no read, no CAS, no conflict. The other
    types are state-based: this replica applies the operation to its copy, merges with the
    stored state and writes with CAS; a conflict only means "merge again". Operations of
    concurrent callers in one process are written together (group commit).
    """

    def __init__(self, owner: SharedState) -> None:
        self._o = owner
        self._replicas: dict[str, _Replica] = {}
        self._counter_queue: dict[str, list[tuple[int, str]]] = {}
        self._counter_known: dict[str, int] = {}

    # -- server counters (Nats-Incr) -------------------------------------------------------
    def _counter_subject(self, key: str) -> str:
        return f"{self._o.subjects.root}.ctr.{validate_key(key)}"

    async def increment(self, key: str, by: int = 1) -> WriteResult:
        """Add ``by`` (may be negative) to the server counter ``key``; returns the new total.
        Under ``continue`` an increment that cannot reach the server is queued (with its own
        ``Nats-Msg-Id``, so a retry after a lost PubAck is not counted twice)."""
        o = self._o
        await o.start()
        msg_id = o.next_op()
        subject = self._counter_subject(key)
        queue = self._counter_queue.get(key)
        if queue and o.options.partition is PartitionStrategy.CONTINUE:
            queue.append((by, msg_id))  # keep order behind the queued ones
            o.stats.queued += 1
            return WriteResult(key, self._counter_known.get(key, 0) + sum(b for b, _ in queue), 0, queued=True)
        try:
            total = await self._incr(subject, by, msg_id)
        except Unavailable:
            o._unhealthy()
            if o.options.partition is PartitionStrategy.CONTINUE:
                self._counter_queue.setdefault(key, []).append((by, msg_id))
                o.stats.queued += 1
                queued = self._counter_queue[key]
                return WriteResult(key, self._counter_known.get(key, 0) + sum(b for b, _ in queued), 0, queued=True)
            raise o.refuse(f"counter increment of {key!r}", applied="unknown") from None
        o._healthy()
        self._counter_known[key] = total
        return WriteResult(key, total, 0)

    async def _incr(self, subject: str, by: int, msg_id: str) -> int:
        o = self._o
        async with _net():
            ack = await js_publish(
                o.nc, subject, b"", {"Nats-Incr": f"{by:+d}", "Nats-Msg-Id": msg_id}, o.options.op_timeout_s
            )
        o.stats.writes += 1
        if ack.get("duplicate"):
            return await self._counter_read(subject)
        return int(ack["val"])

    async def _counter_read(self, subject: str) -> int:
        o = self._o
        try:
            async with _net():
                resp = await js_api(
                    o.nc,
                    f"$JS.API.STREAM.MSG.GET.{o.counter_stream}",
                    {"last_by_subj": subject},
                    o.options.op_timeout_s,
                )
        except JSApiError as exc:
            if exc.err_code == ERR_NO_MESSAGE:
                return 0
            raise
        body = orjson.loads(base64.b64decode(resp["message"]["data"]))
        return int(body["val"])

    async def counter(self, key: str) -> Read:
        """The counter's total (from the stream leader); plus queued local increments."""
        o = self._o
        await o.start()
        queued = sum(b for b, _ in self._counter_queue.get(key, []))
        try:
            total = await self._counter_read(self._counter_subject(key))
        except Unavailable:
            o._unhealthy()
            if o.options.partition is PartitionStrategy.PAUSE:
                raise o.refuse(f"counter read of {key!r}") from None
            return Read(key, self._counter_known.get(key, 0) + queued, 0, "local", stale=True)
        o._healthy()
        self._counter_known[key] = total
        return Read(key, total + queued, 0, "server" if not queued else "local")

    # -- state-based CRDTs -----------------------------------------------------------------
    def _replica(self, key: str, cls: type[CRDT]) -> _Replica:
        kv = self._o.crdt_key(key)
        rep = self._replicas.get(kv)
        if rep is None:
            rep = self._replicas[kv] = _Replica(cls, cls(), self._o.replica_id)
        elif rep.cls is not cls:
            raise TypeError(f"state key {key!r} holds a {rep.cls.crdt_type}, not a {cls.crdt_type}")
        return rep

    async def update(self, key: str, cls: type[C], op: Callable[[C, str, int], C]) -> WriteResult:
        """Apply ``op(state, replica_id, now_ms)`` and store the merge. Returns the merged
        value; ``queued`` if it was accepted locally during a partition (``continue``)."""
        o = self._o
        rep = self._replica(key, cls)
        if o.partitioned and o.options.partition is not PartitionStrategy.CONTINUE:
            raise o.refuse(f"crdt write of {key!r}")
        fut: asyncio.Future[CRDT] = asyncio.get_running_loop().create_future()
        rep.waiting.append((op, fut))
        if rep.flusher is None or rep.flusher.done():
            rep.flusher = asyncio.create_task(self._flush(key, rep), name="state-crdt-flush")
        state = await fut
        return WriteResult(key, state.value(), 0, queued=rep.unsynced)

    async def _flush(self, key: str, rep: _Replica) -> None:
        o = self._o
        kv = o.crdt_key(key)
        while rep.waiting:
            batch, rep.waiting = rep.waiting, []
            new = rep.state
            for op, _ in batch:
                new = op(new, rep.replica, o.clock.wall_ms())
            try:
                if o.partitioned and o.options.partition is PartitionStrategy.CONTINUE:
                    raise Unavailable("partitioned")  # accept locally at once; the healer writes it
                merged = await self._store(kv, rep, new)
            except Unavailable:
                if o.options.partition is PartitionStrategy.CONTINUE:
                    rep.state, rep.unsynced = new, True
                    o.stats.queued += len(batch)
                    for _, f in batch:
                        if not f.done():
                            f.set_result(new)
                    continue
                # refused; the write may still have been stored, so never reuse this
                # replica id for new operations (its dots/counts could collide)
                self._rotate(rep)
                err = o.refuse(f"crdt write of {key!r}", applied="unknown")
                for _, f in batch:
                    if not f.done():
                        f.set_exception(err)
                continue
            except BaseException as exc:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                raise
            rep.state = merged
            for _, f in batch:
                if not f.done():
                    f.set_result(merged)

    def _rotate(self, rep: _Replica) -> None:
        rep.rotations += 1
        rep.replica = f"{self._o.replica_id}-{rep.rotations}"

    async def _store(self, kv: str, rep: _Replica, new: CRDT) -> CRDT:
        o = self._o
        op = o.next_op()
        for attempt in range(o.options.max_attempts):
            doc, rev = await o._get(kv)
            remote = decode_crdt(doc) if doc is not None else rep.cls()
            if not isinstance(remote, rep.cls):
                raise TypeError(f"{kv} holds a {remote.crdt_type}, not a {rep.cls.crdt_type}")
            merged = new.merge(remote)
            if doc is not None and merged.canonical() == remote.canonical():
                rep.loaded = True
                return merged
            try:
                await o._cas(kv, merged.to_json(), rev, f"{op}.{attempt}")
                rep.loaded = True
                return merged
            except _Conflict:
                o.stats.conflicts += 1
                await o.backoff(attempt)
        raise Unavailable(f"crdt write of {kv} gave up after {o.options.max_attempts} conflicts")

    async def get(self, key: str, cls: type[C]) -> C:
        """The merge of the stored state and this replica's copy (partition: the copy)."""
        o = self._o
        rep = self._replica(key, cls)
        kv = o.crdt_key(key)
        try:
            doc, _ = await o._get(kv)
        except Unavailable:
            if o.options.partition is PartitionStrategy.PAUSE:
                raise o.refuse(f"crdt read of {key!r}") from None
            held = o._fallback(kv)
            state = rep.state if held is None or held[0] is None else rep.state.merge(decode_crdt(held[0]))
            return state  # type: ignore[return-value]
        remote = decode_crdt(doc) if doc is not None else cls()
        rep.state = rep.state.merge(remote)
        return rep.state  # type: ignore[return-value]

    async def value(self, key: str, cls: type[CRDT]) -> Any:
        return (await self.get(key, cls)).value()

    # conveniences for the common operations
    async def add(self, key: str, element: Any) -> WriteResult:
        """Add to the add-wins OR-set ``key``."""
        return await self.update(key, ORSet, lambda s, r, _t: s.add(element, r))

    async def remove(self, key: str, element: Any) -> WriteResult:
        return await self.update(key, ORSet, lambda s, _r, _t: s.remove(element))

    async def gadd(self, key: str, element: Any) -> WriteResult:
        """Add to the grow-only set ``key``."""
        return await self.update(key, GSet, lambda s, _r, _t: s.add(element))

    async def pn_increment(self, key: str, by: int = 1) -> WriteResult:
        """State-based PN-Counter (when increments must merge across clusters without a
        counter stream sourcing them); ``increment`` is the cheaper server counter."""
        return await self.update(key, PNCounter, lambda s, r, _t: s.increment(r, by))

    async def g_increment(self, key: str, by: int = 1) -> WriteResult:
        return await self.update(key, GCounter, lambda s, r, _t: s.increment(r, by))

    async def set_register(self, key: str, value: Any) -> WriteResult:
        return await self.update(key, LWWRegister, lambda s, r, t: s.set(value, r, t))

    async def map_put(self, key: str, field: str, value: Any, *, lww: bool = False) -> WriteResult:
        """Put a field of an OR-Map (add-wins fields) or, with ``lww``, of an LWW-Map."""
        if lww:
            return await self.update(key, LWWMap, lambda s, r, t: s.put(field, value, r, t))
        return await self.update(key, ORMap, lambda s, r, t: s.put(field, value, r, t))

    async def map_remove(self, key: str, field: str, *, lww: bool = False) -> WriteResult:
        if lww:
            return await self.update(key, LWWMap, lambda s, r, t: s.remove(field, r, t))
        return await self.update(key, ORMap, lambda s, _r, _t: s.remove(field))

    # -- partitions ------------------------------------------------------------------------
    def _pending_count(self) -> int:
        return sum(len(q) for q in self._counter_queue.values()) + sum(1 for r in self._replicas.values() if r.unsynced)

    async def _reconcile(self) -> int:
        o = self._o
        n = 0
        for key, queue in list(self._counter_queue.items()):
            subject = self._counter_subject(key)
            while queue:
                by, msg_id = queue[0]
                self._counter_known[key] = await self._incr(subject, by, msg_id)  # same id: never twice
                queue.pop(0)
                n += 1
            self._counter_queue.pop(key, None)
        for kv, rep in list(self._replicas.items()):
            if rep.unsynced:
                rep.state = await self._store(kv, rep, rep.state)
                rep.unsynced = False
                n += 1
        if n:
            o._healthy()
        return n
