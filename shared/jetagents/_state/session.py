"""Session consistency: read-your-writes and monotonic reads for one holder."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.autostep import auto_step
from .._core.errors import InternalError, Unavailable
from .._core.vclock import Versioned
from .options import Read, WriteResult
from .versions import decode_value, read_of, winner

if TYPE_CHECKING:
    from .store import SharedState


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
            read = read_of(key, doc, rev, "cache", staleness_s=cache.staleness_s())
        else:
            try:
                doc, rev = await o.read_doc(kv)
            except Unavailable:
                raise o.refuse(f"session read of {key!r} (the cache is behind this session)") from None
            if rev < need:
                raise InternalError(f"server returned revision {rev} of {key!r}, the session saw {need}")
            self.server_reads += 1
            read = read_of(key, doc, rev, "server", staleness_s=0.0)
        self.floor[kv] = max(need, read.revision)
        return read, decode_value(doc)

    async def get(self, key: str) -> Read:
        return (await self._read(key))[0]

    async def put(self, key: str, value: Any) -> WriteResult:
        return await self.update(key, lambda _: value)

    async def update(self, key: str, fn: Callable[[Any], Any], *, default: Any = None) -> WriteResult:
        """Apply ``fn`` to the newest value this session may see and wait for the write
        (inside an action, a journaled step: ADR 0042 §12)."""
        return await auto_step(f"state.session:{key}", self._update, key, fn, default)

    async def _update(self, key: str, fn: Callable[[Any], Any], default: Any) -> WriteResult:
        o = self._o
        kv = o.value_key(key)
        current, base = await self._read(key)  # at least as new as anything this session saw
        mine = o.versions.local_view(kv)  # and as new as this replica's own writes (other sessions')
        if mine is not None and mine[1] > current.revision:
            current = read_of(key, mine[0], mine[1], "local")
            base = decode_value(mine[0])
        new = o.versions.new_version(fn(default if current.value is None else current.value), base, kv)
        try:
            rev, versions, conflicts = await o.versions.write(kv, new, current.revision, base)
        except Unavailable:
            raise o.refuse(f"session write of {key!r}", applied="unknown") from None
        self.floor[kv] = max(self.floor.get(kv, 0), rev)
        w = winner(versions)
        return WriteResult(key, w.value if w else None, rev, conflicts)
