"""State-based CRDTs (pure, no I/O): merge is commutative, associative and idempotent.

Every type is an immutable pydantic model: an operation returns a new value, ``merge``
returns the join of two states and ``value()`` what a reader sees. ``to_json()`` gives the
stored document ``{"crdt": "<type>", "state": {...}}`` (see ``docs/state.md``).

Operations that create something new take the ``replica`` id of the writer; a replica id
must be used by one writer at a time (``SharedState`` gives every instance a fresh one and
serialises its own operations).

>>> a = ORSet().add("x", "r1")
>>> b = a.remove("x").add("y", "r2")
>>> c = a.add("x", "r3")                     # concurrent with the remove: add wins
>>> sorted(b.merge(c).value())
['x', 'y']
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

from .canonical import canonical


def _ekey(value: Any) -> str:
    return canonical(value).decode()


class CRDT(BaseModel):
    """Base of the CRDT types."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    crdt_type: ClassVar[str] = ""

    def merge(self, other: Self) -> Self:
        raise NotImplementedError

    def value(self) -> Any:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"crdt": self.crdt_type, "state": self.model_dump(mode="json")}

    def canonical(self) -> bytes:
        return canonical(self.to_json())


def _max_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        if v > out.get(k, 0):
            out[k] = v
    return dict(sorted((k, v) for k, v in out.items() if v > 0))  # zero entries are no information


class GCounter(CRDT):
    """Grow-only counter: one count per replica, the value is their sum."""

    crdt_type = "gcounter"
    counts: dict[str, int] = Field(default_factory=dict)

    def increment(self, replica: str, by: int = 1) -> GCounter:
        if by < 0:
            raise ValueError("a G-Counter only grows; use a PN-Counter")
        if by == 0:
            return self
        counts = dict(self.counts)
        counts[replica] = counts.get(replica, 0) + by
        return GCounter(counts=dict(sorted(counts.items())))

    def merge(self, other: GCounter) -> GCounter:
        return GCounter(counts=_max_counts(self.counts, other.counts))

    def value(self) -> int:
        return sum(self.counts.values())


class PNCounter(CRDT):
    """Counter that goes both ways: a G-Counter of increments and one of decrements."""

    crdt_type = "pncounter"
    p: dict[str, int] = Field(default_factory=dict)
    n: dict[str, int] = Field(default_factory=dict)

    def increment(self, replica: str, by: int = 1) -> PNCounter:
        if by == 0:
            return self
        p, n = dict(self.p), dict(self.n)
        if by > 0:
            p[replica] = p.get(replica, 0) + by
        else:
            n[replica] = n.get(replica, 0) - by
        return PNCounter(p=dict(sorted(p.items())), n=dict(sorted(n.items())))

    def merge(self, other: PNCounter) -> PNCounter:
        return PNCounter(p=_max_counts(self.p, other.p), n=_max_counts(self.n, other.n))

    def value(self) -> int:
        return sum(self.p.values()) - sum(self.n.values())


class GSet(CRDT):
    """Grow-only set of JSON values."""

    crdt_type = "gset"
    items: list[Any] = Field(default_factory=list)

    def add(self, element: Any) -> GSet:
        return self.merge(GSet(items=[element]))

    def merge(self, other: GSet) -> GSet:
        seen = {_ekey(x): x for x in self.items}
        for x in other.items:
            seen.setdefault(_ekey(x), x)
        return GSet(items=[seen[k] for k in sorted(seen)])

    def value(self) -> list[Any]:
        return list(self.items)


Dot = tuple[str, int]


def _merge_dots(
    mine: dict[str, list[Dot]],
    my_clock: dict[str, int],
    theirs: dict[str, list[Dot]],
    their_clock: dict[str, int],
) -> dict[str, list[Dot]]:
    """Optimised OR-set join: a dot present on one side only survives if the other side has
    not seen it yet (if it has, the other side removed it)."""
    out: dict[str, list[Dot]] = {}
    for key in set(mine) | set(theirs):
        a = set(mine.get(key, ()))
        b = set(theirs.get(key, ()))
        keep = (a & b) | {d for d in a - b if d[1] > their_clock.get(d[0], 0)}
        keep |= {d for d in b - a if d[1] > my_clock.get(d[0], 0)}
        if keep:
            out[key] = sorted(keep)
    return dict(sorted(out.items()))


class ORSet(CRDT):
    """Observed-remove set, add wins over a concurrent remove (no tombstones).

    Each add is tagged with a unique dot ``(replica, n)``; a remove drops the dots it has
    seen; ``clock`` records every dot seen, which is how a merge tells "removed" from
    "not yet seen".
    """

    crdt_type = "orset"
    elements: dict[str, Any] = Field(default_factory=dict)  # element key -> element
    dots: dict[str, list[Dot]] = Field(default_factory=dict)  # element key -> live dots
    clock: dict[str, int] = Field(default_factory=dict)

    def add(self, element: Any, replica: str) -> ORSet:
        key = _ekey(element)
        n = self.clock.get(replica, 0) + 1
        clock = dict(sorted({**self.clock, replica: n}.items()))
        dots = dict(self.dots)
        dots[key] = sorted([*dots.get(key, []), (replica, n)])
        elements = dict(self.elements)
        elements[key] = element
        return ORSet(elements=dict(sorted(elements.items())), dots=dict(sorted(dots.items())), clock=clock)

    def remove(self, element: Any) -> ORSet:
        key = _ekey(element)
        if key not in self.dots:
            return self
        dots = {k: v for k, v in self.dots.items() if k != key}
        elements = {k: v for k, v in self.elements.items() if k in dots}
        return ORSet(elements=elements, dots=dots, clock=self.clock)

    def merge(self, other: ORSet) -> ORSet:
        dots = _merge_dots(self.dots, self.clock, other.dots, other.clock)
        pool = {**other.elements, **self.elements}
        return ORSet(
            elements={k: pool[k] for k in dots},
            dots=dots,
            clock=_max_counts(self.clock, other.clock),
        )

    def __contains__(self, element: object) -> bool:
        return _ekey(element) in self.dots

    def value(self) -> list[Any]:
        return [self.elements[k] for k in self.dots]


class LWWRegister(CRDT):
    """Last-writer-wins register: the write with the highest ``(ts_ms, replica)`` wins."""

    crdt_type = "lwwregister"
    val: Any = None
    ts_ms: int = 0
    replica: str = ""

    def set(self, value: Any, replica: str, ts_ms: int) -> LWWRegister:
        # never behind what this replica has already seen, even if its clock is
        ts = max(ts_ms, self.ts_ms + 1)
        return LWWRegister(val=value, ts_ms=ts, replica=replica)

    def _key(self) -> tuple[int, str, bytes]:
        return (self.ts_ms, self.replica, canonical(self.val))

    def merge(self, other: LWWRegister) -> LWWRegister:
        return self if self._key() >= other._key() else other

    def value(self) -> Any:
        return self.val


class _Slot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    val: Any = None
    ts_ms: int = 0
    replica: str = ""
    deleted: bool = False

    def key(self) -> tuple[int, str, bool, bytes]:
        return (self.ts_ms, self.replica, self.deleted, canonical(self.val))


class LWWMap(CRDT):
    """Map whose every field is a last-writer-wins register (a remove is a timestamped
    tombstone, so a later put brings the field back)."""

    crdt_type = "lwwmap"
    fields: dict[str, _Slot] = Field(default_factory=dict)

    def _with(self, field: str, slot: _Slot) -> LWWMap:
        fields = dict(self.fields)
        fields[field] = slot
        return LWWMap(fields=dict(sorted(fields.items())))

    def _next_ts(self, field: str, ts_ms: int) -> int:
        cur = self.fields.get(field)
        return max(ts_ms, cur.ts_ms + 1) if cur else ts_ms

    def put(self, field: str, value: Any, replica: str, ts_ms: int) -> LWWMap:
        return self._with(field, _Slot(val=value, ts_ms=self._next_ts(field, ts_ms), replica=replica))

    def remove(self, field: str, replica: str, ts_ms: int) -> LWWMap:
        return self._with(field, _Slot(ts_ms=self._next_ts(field, ts_ms), replica=replica, deleted=True))

    def merge(self, other: LWWMap) -> LWWMap:
        fields = dict(self.fields)
        for k, s in other.fields.items():
            cur = fields.get(k)
            if cur is None or s.key() > cur.key():
                fields[k] = s
        return LWWMap(fields=dict(sorted(fields.items())))

    def value(self) -> dict[str, Any]:
        return {k: s.val for k, s in self.fields.items() if not s.deleted}


class ORMap(CRDT):
    """Map with add-wins fields: which fields exist is an OR-set (a put concurrent with a
    remove keeps the field); each field's value is a last-writer-wins register."""

    crdt_type = "ormap"
    keys: ORSet = Field(default_factory=ORSet)
    vals: dict[str, LWWRegister] = Field(default_factory=dict)

    def put(self, field: str, value: Any, replica: str, ts_ms: int) -> ORMap:
        reg = self.vals.get(field, LWWRegister()).set(value, replica, ts_ms)
        vals = dict(self.vals)
        vals[field] = reg
        return ORMap(keys=self.keys.add(field, replica), vals=dict(sorted(vals.items())))

    def remove(self, field: str) -> ORMap:
        return ORMap(keys=self.keys.remove(field), vals=self.vals)

    def merge(self, other: ORMap) -> ORMap:
        vals = dict(self.vals)
        for k, r in other.vals.items():
            vals[k] = vals[k].merge(r) if k in vals else r
        return ORMap(keys=self.keys.merge(other.keys), vals=dict(sorted(vals.items())))

    def value(self) -> dict[str, Any]:
        return {f: self.vals[f].val for f in sorted(self.keys.value()) if f in self.vals}


CRDT_TYPES: dict[str, type[CRDT]] = {
    cls.crdt_type: cls for cls in (GCounter, PNCounter, GSet, ORSet, LWWRegister, LWWMap, ORMap)
}


def decode_crdt(doc: Any) -> CRDT:
    """The CRDT in a stored document ``{"crdt": type, "state": {...}}``."""
    if not isinstance(doc, dict) or doc.get("crdt") not in CRDT_TYPES:
        raise ValueError(f"not a CRDT document: {str(doc)[:200]}")
    return CRDT_TYPES[doc["crdt"]].model_validate(doc.get("state") or {})
