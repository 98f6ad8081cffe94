"""Strong consistency: linearizable per key, compare-and-set on the KV revision."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.autostep import auto_step
from .._core.errors import Unavailable
from .._core.journal import effect_key
from .._nats.kv import KvConflict
from .options import PartitionStrategy, Read, WriteResult
from .versions import decode_value, read_of, set_add, winner

if TYPE_CHECKING:
    from .store import SharedState


class StrongState:
    """Linearizable per key: read from the stream leader, write with compare-and-set on the
    KV revision, retry on conflict with jittered backoff. Use an R3 bucket on a cluster."""

    def __init__(self, owner: SharedState) -> None:
        self._o = owner
        self._lin_locks: dict[str, asyncio.Lock] = {}  # linearizable-read rounds per kv key
        self._lin_started: dict[str, int] = {}
        self._lin_done: dict[str, tuple[int, Any, int]] = {}  # kv key -> (round, doc, revision)

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
                doc, rev, _ = await self.linearizable_read(kv)
            else:
                doc, rev = await o.read_doc(kv)
        except Unavailable:
            if o.options.partition is PartitionStrategy.PAUSE:
                raise o.refuse(f"strong read of {key!r}") from None
            held = o.fallback(kv)
            if held is None:
                raise o.refuse(f"strong read of {key!r} (nothing cached)") from None
            return read_of(key, held[0], held[1], "local", stale=True)
        return read_of(key, doc, rev, "server")

    async def linearizable_read(self, kv_key: str) -> tuple[Any, int, int]:
        """A read linearizable across a network split: leader read, then a read barrier.
        Returns (doc, revision, re-reads needed).

        Concurrent barriers on one key refuse each other on a clustered leader (10164 while
        another is in flight), so concurrent linearizable reads of a key in this process share
        rounds: a caller may take the result of any round that *started* after it began (then
        the round's read and barrier both happened inside the caller's call); otherwise it runs
        the next round, which everyone queued behind it shares."""
        o = self._o
        ticket = self._lin_started.get(kv_key, 0)  # rounds started before this call
        lock = self._lin_locks.setdefault(kv_key, asyncio.Lock())
        async with lock:
            done = self._lin_done.get(kv_key)
            if done is not None and done[0] > ticket:
                return done[1], done[2], 0
            round_no = self._lin_started[kv_key] = self._lin_started.get(kv_key, 0) + 1
            for attempt in range(o.options.max_attempts):
                doc, rev = await o.read_doc(kv_key)
                o.stats.read_barriers += 1
                if await o.barrier(kv_key, rev):
                    self._lin_done[kv_key] = (round_no, doc, rev)
                    return doc, rev, attempt
                o.stats.conflicts += 1
                await o.backoff(attempt)
        raise Unavailable(f"linearizable read of {kv_key} gave up after {o.options.max_attempts} re-reads")

    async def update(self, key: str, fn: Callable[[Any], Any], *, default: Any = None) -> WriteResult:
        """Apply ``fn(current value)`` atomically. ``fn`` may run several times (on conflict)
        and must not have side effects. Siblings, if any, are replaced by the result.
        Inside an action, a journaled step (ADR 0042 §12)."""
        return await auto_step(f"state.strong:{key}", self._update, key, fn, default)

    async def _update(self, key: str, fn: Callable[[Any], Any], default: Any) -> WriteResult:
        o = self._o
        kv = o.value_key(key)
        conflicts = 0
        # inside a step the write is tagged with the step's key: a re-run of a step whose
        # host died after the write (before its journal entry) finds it and does not redo it
        step = effect_key()
        op = step or o.next_op()
        uncertain = step is not None
        for attempt in range(o.options.max_attempts):
            try:
                doc, rev = await o.read_doc(kv)
                versions = decode_value(doc)
                if uncertain and any(v.op == op for v in versions):
                    w = winner(versions)
                    return WriteResult(key, w.value if w else None, rev, conflicts)
                w = winner(versions)
                current = default if w is None or w.deleted else w.value
                value = fn(current)
                new = o.versions.new_version(value, versions, kv).model_copy(update={"op": op})
                with o.versions.writing(kv, new):
                    rev = await o.cas(kv, {"versions": [new.model_dump(mode="json")]}, rev, f"{op}.{attempt}")
                return WriteResult(key, value, rev, conflicts)
            except KvConflict:
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
        return await self.update(key, lambda v: set_add(v, member))
