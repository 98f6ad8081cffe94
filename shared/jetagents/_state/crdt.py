"""CRDT consistency: merged on conflict, so an update never loses another writer's update."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .._core.autostep import auto_step
from .._core.crdt import CRDT, GCounter, GSet, LWWMap, LWWRegister, ORMap, ORSet, PNCounter, decode_crdt
from .._core.errors import Unavailable
from .._core.journal import effect_key
from .._nats.kv import KvConflict
from .options import PartitionStrategy, Read, WriteResult, validate_key

if TYPE_CHECKING:
    from .store import SharedState

C = TypeVar("C", bound=CRDT)


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
        ``Nats-Msg-Id``, so a retry after a lost PubAck is not counted twice). Inside an
        action, a journaled step whose key is the ``Nats-Msg-Id`` (ADR 0042 §12)."""
        return await auto_step(f"state.counter:{key}", self._increment, key, by)

    async def _increment(self, key: str, by: int) -> WriteResult:
        o = self._o
        await o.start()
        msg_id = effect_key() or o.next_op()
        subject = self._counter_subject(key)
        queue = self._counter_queue.get(key)
        if queue and o.options.partition is PartitionStrategy.CONTINUE:
            queue.append((by, msg_id))  # keep order behind the queued ones
            o.stats.queued += 1
            return WriteResult(key, self._counter_known.get(key, 0) + sum(b for b, _ in queue), 0, queued=True)
        try:
            total = await self._incr(subject, by, msg_id)
        except Unavailable:
            o.mark_unhealthy()
            if o.options.partition is PartitionStrategy.CONTINUE:
                self._counter_queue.setdefault(key, []).append((by, msg_id))
                o.stats.queued += 1
                queued = self._counter_queue[key]
                return WriteResult(key, self._counter_known.get(key, 0) + sum(b for b, _ in queued), 0, queued=True)
            raise o.refuse(f"counter increment of {key!r}", applied="unknown") from None
        o.mark_healthy()
        self._counter_known[key] = total
        return WriteResult(key, total, 0)

    async def _incr(self, subject: str, by: int, msg_id: str) -> int:
        o = self._o
        ack = await o.kv.incr(subject, by, msg_id)
        o.stats.writes += 1
        if ack.get("duplicate"):
            return await o.kv.counter_total(subject)
        return int(ack["val"])

    async def counter(self, key: str) -> Read:
        """The counter's total (from the stream leader); plus queued local increments."""
        o = self._o
        await o.start()
        queued = sum(b for b, _ in self._counter_queue.get(key, []))
        try:
            total = await o.kv.counter_total(self._counter_subject(key))
        except Unavailable:
            o.mark_unhealthy()
            if o.options.partition is PartitionStrategy.PAUSE:
                raise o.refuse(f"counter read of {key!r}") from None
            return Read(key, self._counter_known.get(key, 0) + queued, 0, "local", stale=True)
        o.mark_healthy()
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
        value; ``queued`` if it was accepted locally during a partition (``continue``).
        Inside an action, a journaled step (ADR 0042 §12)."""
        return await auto_step(f"state.crdt:{key}", self._update, key, cls, op)

    async def _update(self, key: str, cls: type[C], op: Callable[[C, str, int], C]) -> WriteResult:
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
            doc, rev = await o.read_doc(kv)
            remote = decode_crdt(doc) if doc is not None else rep.cls()
            if not isinstance(remote, rep.cls):
                raise TypeError(f"{kv} holds a {remote.crdt_type}, not a {rep.cls.crdt_type}")
            merged = new.merge(remote)
            if doc is not None and merged.canonical() == remote.canonical():
                rep.loaded = True
                return merged
            try:
                await o.cas(kv, merged.to_json(), rev, f"{op}.{attempt}")
                rep.loaded = True
                return merged
            except KvConflict:
                o.stats.conflicts += 1
                await o.backoff(attempt)
        raise Unavailable(f"crdt write of {kv} gave up after {o.options.max_attempts} conflicts")

    async def get(self, key: str, cls: type[C]) -> C:
        """The merge of the stored state and this replica's copy (partition: the copy)."""
        o = self._o
        rep = self._replica(key, cls)
        kv = o.crdt_key(key)
        try:
            doc, _ = await o.read_doc(kv)
        except Unavailable:
            if o.options.partition is PartitionStrategy.PAUSE:
                raise o.refuse(f"crdt read of {key!r}") from None
            held = o.fallback(kv)
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
    def pending(self) -> int:
        return sum(len(q) for q in self._counter_queue.values()) + sum(1 for r in self._replicas.values() if r.unsynced)

    async def reconcile(self) -> int:
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
            o.mark_healthy()
        return n
