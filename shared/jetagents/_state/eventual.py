"""Eventual consistency: local writes at once, propagated in the background; cached reads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.autostep import auto_step
from .._core.errors import Unavailable
from .._core.vclock import Versioned
from .options import PartitionStrategy, Read, WriteResult
from .tasks import stop_tasks
from .versions import decode_value, read_of, set_add, winner

if TYPE_CHECKING:
    from .store import SharedState

# a queued write: the new version, and the revision and versions it was written on top of
_Queued = tuple[Versioned, int, list[Versioned]]


class EventualState:
    """Writes land in this replica's memory at once and are propagated in the background;
    reads come from the watch-fed cache and say how stale it may be. Concurrent writes from
    different replicas are reconciled by the resolver (``lww`` by default, which loses one)."""

    def __init__(self, owner: SharedState) -> None:
        self._o = owner
        self._pending: dict[str, _Queued] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0
        self._flying: dict[str, _Queued] = {}  # being propagated

    def pending(self) -> int:
        return len(self._pending) + self._inflight

    def queued(self, kv: str) -> Versioned | None:
        """This replica's write of ``kv`` waiting to be propagated, if any."""
        p = self._pending.get(kv)
        return p[0] if p is not None else None

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])

    async def _view(self, kv: str) -> tuple[list[Versioned], int, str]:
        """What the next local write is based on. It must include this replica's own earlier
        writes: the queued one, else the one being propagated, else the newest stored copy this
        process knows (its cache may lag behind what it wrote itself)."""
        p = self._pending.get(kv) or self._flying.get(kv)
        if p is not None:
            return [p[0]], p[1], "local"
        await self._o.cache()
        held = self._o.versions.local_view(kv)
        if held is None:
            return [], 0, "cache"
        return decode_value(held[0]), held[1], "cache"

    async def get(self, key: str, *, max_staleness_s: float | None = None) -> Read:
        """The local view. With ``max_staleness_s``, a cache that may be older than that is
        bypassed for a server read (if the server is reachable)."""
        o = self._o
        kv = o.value_key(key)
        cache = await o.cache()
        bound = cache.staleness_s()
        p = self._pending.get(kv)
        if p is not None:
            return read_of(key, {"versions": [p[0].model_dump(mode="json")]}, p[1], "local", staleness_s=bound)
        if max_staleness_s is not None and (bound is None or bound > max_staleness_s):
            try:
                doc, rev = await o.read_doc(kv)
                return read_of(key, doc, rev, "server", staleness_s=0.0)
            except Unavailable:
                pass
        held = cache.get(kv)
        doc, rev = held if held is not None else (None, 0)
        return read_of(key, doc, rev, "cache", staleness_s=bound, stale=o.partitioned)

    async def put(self, key: str, value: Any) -> WriteResult:
        return await self.update(key, lambda _: value)

    async def update(self, key: str, fn: Callable[[Any], Any], *, default: Any = None) -> WriteResult:
        """Apply ``fn`` to the local view and queue the result for propagation (inside an
        action, a journaled step: ADR 0042 §12)."""
        return await auto_step(f"state.eventual:{key}", self._update, key, fn, default)

    async def _update(self, key: str, fn: Callable[[Any], Any], default: Any) -> WriteResult:
        o = self._o
        if o.partitioned and o.options.partition is not PartitionStrategy.CONTINUE:
            raise o.refuse(f"eventual write of {key!r}")
        kv = o.value_key(key)
        base, base_rev, _ = await self._view(kv)
        w = winner(base)
        value = fn(default if w is None or w.deleted else w.value)
        new = o.versions.new_version(value, base, kv)
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
        return await self.update(key, lambda v: set_add(v, member))

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every local write has reached the server."""
        async with asyncio.timeout(timeout_s):
            await self._idle.wait()

    async def _propagate(self) -> None:
        o = self._o
        retry = o.options.probe_retry()
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
                await o.versions.write(kv, new, base_rev, base)
                failures = 0
            except Unavailable:
                if kv not in self._pending:  # keep it unless a newer local write replaced it
                    self._pending[kv] = (new, base_rev, base)
                else:
                    newer = self._pending[kv]
                    self._pending[kv] = (newer[0], base_rev, base)
                failures += 1
                await asyncio.sleep(retry.delay(failures - 1))
            finally:
                self._inflight = 0
                self._flying.pop(kv, None)

    async def reconcile(self) -> int:
        n = len(self._pending)
        if n:
            self._wake.set()
            await self.flush(timeout_s=self._o.options.op_timeout_s * 10)
        return n
