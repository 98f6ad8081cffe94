"""Vector clocks, versioned values and the conflict-resolution strategies (pure, no I/O).

A value that several replicas may write without coordinating (eventual and session writes,
writes accepted on both sides of a partition, two clusters of a supercluster) is stored as a
list of :class:`Versioned` entries. Normally there is one; there are several (siblings) only
when writes were concurrent and the chosen :class:`Resolver` keeps them.

>>> a = VectorClock().increment("r1")
>>> b = a.increment("r2")
>>> a.compare(b), b.compare(a)
(<Order.BEFORE: 'before'>, <Order.AFTER: 'after'>)
>>> a.increment("r1").compare(b)
<Order.CONCURRENT: 'concurrent'>
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field

from .canonical import canonical as canonical  # re-exported: _state reads it from here
from .crdt import decode_crdt


class Order(enum.Enum):
    EQUAL = "equal"
    BEFORE = "before"
    AFTER = "after"
    CONCURRENT = "concurrent"


class VectorClock:
    """An immutable version vector: replica id -> number of writes seen from it."""

    __slots__ = ("_c",)

    def __init__(self, counters: Mapping[str, int] | None = None) -> None:
        self._c: dict[str, int] = {k: int(v) for k, v in (counters or {}).items() if int(v) > 0}

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._c)

    def get(self, replica: str) -> int:
        return self._c.get(replica, 0)

    def increment(self, replica: str) -> VectorClock:
        out = dict(self._c)
        out[replica] = out.get(replica, 0) + 1
        return VectorClock(out)

    def merge(self, other: VectorClock) -> VectorClock:
        out = dict(self._c)
        for k, v in other._c.items():
            if v > out.get(k, 0):
                out[k] = v
        return VectorClock(out)

    def compare(self, other: VectorClock) -> Order:
        le = all(v <= other._c.get(k, 0) for k, v in self._c.items())
        ge = all(v <= self._c.get(k, 0) for k, v in other._c.items())
        if le and ge:
            return Order.EQUAL
        if le:
            return Order.BEFORE
        if ge:
            return Order.AFTER
        return Order.CONCURRENT

    def dominates(self, other: VectorClock) -> bool:
        return self.compare(other) in (Order.AFTER, Order.EQUAL)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VectorClock) and self._c == other._c

    def __hash__(self) -> int:
        return hash(frozenset(self._c.items()))

    def __repr__(self) -> str:
        return f"VectorClock({self._c})"


class Versioned(BaseModel):
    """One version of a value: the value, the clock of the write, wall time and writer.

    ``op`` is the id of the write that produced it (lets a writer that lost a PubAck
    recognise its own write).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: Any = None
    clock: dict[str, int] = Field(default_factory=dict)
    ts_ms: int = 0
    writer: str = ""
    op: str = ""
    deleted: bool = False

    @property
    def vclock(self) -> VectorClock:
        return VectorClock(self.clock)

    def sort_key(self) -> tuple[int, str, bytes]:
        return (self.ts_ms, self.writer, canonical(self.value))


class Resolver(Protocol):
    """Turns two or more concurrent versions into the versions to keep."""

    name: str

    def resolve(self, versions: list[Versioned]) -> list[Versioned]: ...


def _merged_clock(versions: Iterable[Versioned]) -> dict[str, int]:
    clock = VectorClock()
    for v in versions:
        clock = clock.merge(v.vclock)
    return clock.counters


class LastWriterWins:
    """Keep the version with the latest ``(ts_ms, writer)``; concurrent writes are lost."""

    name = "lww"
    lossy = True  # the versions it does not keep are lost writes (counted in stats.lost_writes)

    def resolve(self, versions: list[Versioned]) -> list[Versioned]:
        winner = max(versions, key=Versioned.sort_key)
        return [winner.model_copy(update={"clock": _merged_clock(versions)})]


class KeepSiblings:
    """Keep every concurrent version; readers see them all and the next write resolves them."""

    name = "siblings"

    def resolve(self, versions: list[Versioned]) -> list[Versioned]:
        return sorted(versions, key=lambda v: (sorted(v.clock.items()), v.sort_key()))


class SemanticMerge:
    """Values are CRDT documents (``{"crdt": ..., "state": ...}``): merge them."""

    name = "semantic"

    def resolve(self, versions: list[Versioned]) -> list[Versioned]:
        merged = decode_crdt(versions[0].value)
        for v in versions[1:]:
            merged = merged.merge(decode_crdt(v.value))
        last = max(versions, key=Versioned.sort_key)
        return [
            Versioned(
                value=merged.to_json(),
                clock=_merged_clock(versions),
                ts_ms=last.ts_ms,
                writer=last.writer,
                op=last.op,
            )
        ]


class CustomResolver:
    """``fn(values) -> value``: your own rule. It should not depend on the order of ``values``
    (they are passed sorted by time) so that every replica resolves alike."""

    name = "custom"

    def __init__(self, fn: Callable[[list[Any]], Any]) -> None:
        self._fn = fn

    def resolve(self, versions: list[Versioned]) -> list[Versioned]:
        ordered = sorted(versions, key=Versioned.sort_key)
        last = ordered[-1]
        return [
            Versioned(
                value=self._fn([v.value for v in ordered]),
                clock=_merged_clock(versions),
                ts_ms=last.ts_ms,
                writer=last.writer,
                op=last.op,
            )
        ]


class Reconciled(BaseModel):
    """What :func:`reconcile_detail` did: the versions to keep, and every write it dropped
    without anything kept having seen it (a lost write)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    versions: list[Versioned]
    discarded: list[Versioned] = Field(default_factory=list)  # concurrent, dropped by a lossy resolver
    collided: list[Versioned] = Field(default_factory=list)  # another write with an equal clock was kept

    @property
    def lost(self) -> list[Versioned]:
        return self.discarded + self.collided


def reconcile_detail(a: Iterable[Versioned], b: Iterable[Versioned], resolver: Resolver) -> Reconciled:
    """Combine two replicas' versions of one value, and say which writes were lost.

    A version whose clock another version dominates is dropped (it was seen before that write).
    Versions with equal clocks are the same write when their ``op`` is the same; two different
    writes with one clock (a replica that wrote twice from the same view) cannot both be kept:
    one is kept deterministically and the other is reported in ``collided``. Two or more
    concurrent survivors go to ``resolver``; a lossy one (``lww``) reports what it dropped in
    ``discarded``.
    """
    pool = list(a) + list(b)
    by_clock: dict[VectorClock, Versioned] = {}
    collided: dict[str, Versioned] = {}
    for v in pool:
        vc = v.vclock
        cur = by_clock.get(vc)
        if cur is None:
            by_clock[vc] = v
            continue
        if cur.op == v.op and cur == v:
            continue
        keep, drop = (v, cur) if v.sort_key() > cur.sort_key() else (cur, v)
        by_clock[vc] = keep
        if drop.op != keep.op:
            collided[drop.op] = drop
    collided = {op: v for op, v in collided.items() if all(k.op != op for k in by_clock.values())}
    survivors = [
        v
        for vc, v in by_clock.items()
        if not any(other.compare(vc) is Order.AFTER for other in by_clock if other is not vc)
    ]
    if len(survivors) <= 1:
        return Reconciled(versions=survivors, collided=list(collided.values()))
    kept = resolver.resolve(survivors)
    discarded: list[Versioned] = []
    if getattr(resolver, "lossy", False):
        kept_ops = {v.op for v in kept}
        discarded = [v for v in survivors if v.op not in kept_ops]
    return Reconciled(versions=kept, discarded=discarded, collided=list(collided.values()))


def reconcile(a: Iterable[Versioned], b: Iterable[Versioned], resolver: Resolver) -> list[Versioned]:
    """Combine two replicas' versions of one value (see :func:`reconcile_detail`)."""
    return reconcile_detail(a, b, resolver).versions


RESOLVERS: dict[str, Callable[[], Resolver]] = {
    "lww": LastWriterWins,
    "siblings": KeepSiblings,
    "semantic": SemanticMerge,
}


def resolver_from(spec: Resolver | str | Callable[[list[Any]], Any]) -> Resolver:
    """``"lww"``, ``"siblings"``, ``"semantic"``, a resolver object or a plain function."""
    if isinstance(spec, str):
        factory = RESOLVERS.get(spec)
        if factory is None:
            raise ValueError(f"unknown conflict resolution {spec!r}; one of {sorted(RESOLVERS)} or a function")
        return factory()
    if hasattr(spec, "resolve"):
        return cast(Resolver, spec)
    if callable(spec):
        return CustomResolver(spec)
    raise TypeError(f"not a resolver: {spec!r}")
