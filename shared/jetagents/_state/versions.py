"""Plain values as versions with vector clocks: the stored document, what a read makes of it,
and the write path the strong, session and eventual levels share (reconcile on conflict)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .._core.errors import Unavailable
from .._core.vclock import VectorClock, Versioned, canonical, reconcile_detail
from .._nats.kv import KvConflict
from .options import Read

if TYPE_CHECKING:
    from .store import SharedState


class StoredValue(BaseModel):
    """The document of a plain (non-CRDT) value: one version, or siblings."""

    model_config = ConfigDict(extra="forbid")
    versions: list[Versioned]


def decode_value(doc: Any) -> list[Versioned]:
    if doc is None:
        return []
    return StoredValue.model_validate(doc).versions


def winner(versions: list[Versioned]) -> Versioned | None:
    return max(versions, key=Versioned.sort_key) if versions else None


def read_of(key: str, doc: Any, rev: int, source: Literal["server", "cache", "local"], **kw: Any) -> Read:
    versions = decode_value(doc)
    w = winner(versions)
    live = [v for v in versions if not v.deleted]
    return Read(
        key=key,
        value=None if w is None or w.deleted else w.value,
        revision=rev,
        source=source,
        siblings=[v.value for v in live] if len(versions) > 1 else [],
        **kw,
    )


def set_add(current: Any, member: Any) -> list[Any]:
    items = list(current or [])
    if member not in items:
        items.append(member)
    return sorted(items, key=canonical)


class VersionedWrites:
    """How this replica writes a plain value: which clock a new version gets, and storing it
    with CAS, reconciling with a concurrent write through the resolver."""

    def __init__(self, owner: SharedState) -> None:
        self._o = owner
        self._writing: dict[str, dict[str, Versioned]] = {}  # kv key -> op -> version being written

    async def write(
        self, kv_key: str, new: Versioned, base_rev: int, base: list[Versioned]
    ) -> tuple[int, list[Versioned], int]:
        """Store ``new`` (written on top of ``base`` at ``base_rev``); on a concurrent write,
        reconcile with what is there using the resolver. Returns (revision, versions, conflicts)."""
        with self.writing(kv_key, new):
            return await self._write(kv_key, new, base_rev, base)

    async def _write(
        self, kv_key: str, new: Versioned, base_rev: int, base: list[Versioned]
    ) -> tuple[int, list[Versioned], int]:
        o = self._o
        expected, current, conflicts = base_rev, base, 0
        for attempt in range(o.options.max_attempts):
            if any(v.op == new.op for v in current):
                return expected, current, conflicts  # an earlier attempt was stored
            outcome = reconcile_detail(current, [new], o.resolver)
            merged = outcome.versions
            if expected and merged == current:
                # nothing to write: ``new`` was dropped. Dominated means it was seen (stored by
                # an earlier attempt whose PubAck was lost, then overwritten by a writer that
                # read it); an equal clock under another op means it is lost (``collided``).
                o.stats.lost_writes += len(outcome.lost)
                return expected, current, conflicts
            doc = {"versions": [v.model_dump(mode="json") for v in merged]}
            try:
                rev = await o.cas(kv_key, doc, expected, f"{new.op}.{attempt}")
            except KvConflict:
                conflicts += 1
                o.stats.conflicts += 1
                doc, expected = await o.read_doc(kv_key)
                current = decode_value(doc)
                await o.backoff(attempt)
                continue
            # counted once, for the attempt that was stored: every write this one replaced
            # without having seen it (lww's losers, and equal-clock collisions) is lost
            o.stats.lost_writes += len(outcome.lost)
            return rev, merged, conflicts
        raise Unavailable(f"could not write {kv_key} after {o.options.max_attempts} attempts (contention)")

    def local_view(self, kv_key: str) -> tuple[Any, int] | None:
        """The newest copy of ``kv_key`` this process holds: the cache, or what this process
        itself last wrote or read from the server, whichever has the higher revision. A write
        based on anything older would not have seen this replica's own previous write, and its
        vector clock would collide with that write's (see ``reconcile_detail``)."""
        return self._o.fallback(kv_key)

    def new_version(self, value: Any, base: list[Versioned], kv_key: str | None = None) -> Versioned:
        """A version written on top of ``base``. Its clock is ``base``'s with this replica's
        entry incremented, unless another write of this replica to the key is still on its
        way and ``base`` has not seen it (two sessions, or a session or strong write racing the
        eventual propagator): then the two writes are concurrent, and this one counts under
        a fresh sub-replica entry (``<replica>~<n>``) so that the two never share a clock
        position (``reconcile`` would take them for one write) and the resolver decides."""
        o = self._o
        clock = VectorClock()
        ts = o.clock.wall_ms()
        for v in base:
            clock = clock.merge(v.vclock)
            ts = max(ts, v.ts_ms + 1)
        writer = o.replica_id
        if kv_key is not None and any(not clock.dominates(v.vclock) for v in self._unseen_candidates(kv_key)):
            writer = f"{o.replica_id}~{o.next_seq()}"
        return Versioned(value=value, clock=clock.increment(writer).counters, ts_ms=ts, writer=writer, op=o.next_op())

    def _unseen_candidates(self, kv_key: str) -> list[Versioned]:
        out = list(self._writing.get(kv_key, {}).values())
        queued = self._o.eventual.queued(kv_key)
        if queued is not None:
            out.append(queued)
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
