"""Vector clocks and conflict resolution (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetagents._core.crdt import GSet, ORSet
from jetagents._core.vclock import (
    CustomResolver,
    KeepSiblings,
    LastWriterWins,
    Order,
    SemanticMerge,
    VectorClock,
    Versioned,
    reconcile,
    reconcile_detail,
    resolver_from,
)

clocks = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 4)).map(VectorClock)


@settings(max_examples=200, deadline=None)
@given(clocks, clocks, clocks)
def test_clock_order_is_a_partial_order_and_merge_is_the_join(x: VectorClock, y: VectorClock, z: VectorClock) -> None:
    flip = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}
    c = x.compare(y)
    assert y.compare(x) is flip.get(c, c)
    assert x.merge(y) == y.merge(x)
    assert x.merge(y).merge(z) == x.merge(y.merge(z))
    assert x.merge(x) == x
    assert x.merge(y).dominates(x) and x.merge(y).dominates(y)
    assert x.increment("a").compare(x) is Order.AFTER


def histories() -> st.SearchStrategy[list[list[Versioned]]]:
    """Three replicas writing and syncing; each write bumps its own clock entry."""
    step = st.tuples(st.integers(0, 2), st.one_of(st.integers(0, 9), st.none()), st.integers(0, 2))

    def build(steps: list[tuple[int, int | None, int]]) -> list[list[Versioned]]:
        reps: list[list[Versioned]] = [[], [], []]
        names = ["a", "b", "c"]
        out: list[list[Versioned]] = [[]]
        for t, (r, value, src) in enumerate(steps):
            if value is None:  # sync from src, keeping siblings
                reps[r] = reconcile(reps[r], reps[src], KeepSiblings())
            else:
                clock = VectorClock()
                for v in reps[r]:
                    clock = clock.merge(v.vclock)
                reps[r] = [Versioned(value=value, clock=clock.increment(names[r]).counters, ts_ms=t, writer=names[r])]
            out.append(list(reps[r]))
        return out + reps

    return st.lists(step, max_size=20).map(build)


def canon(vs: list[Versioned]) -> list[Any]:
    return sorted((sorted(v.clock.items()), v.ts_ms, v.writer, v.value) for v in vs)


@pytest.mark.parametrize("resolver", [LastWriterWins(), KeepSiblings()], ids=lambda r: r.name)
def test_reconcile_is_commutative_associative_idempotent(resolver: Any) -> None:
    @settings(max_examples=80, deadline=None)
    @given(histories(), st.data())
    def check(pool: list[list[Versioned]], data: st.DataObject) -> None:
        a, b, c = (data.draw(st.sampled_from(pool)) for _ in range(3))
        assert canon(reconcile(a, b, resolver)) == canon(reconcile(b, a, resolver))
        assert canon(reconcile(reconcile(a, b, resolver), c, resolver)) == canon(
            reconcile(a, reconcile(b, c, resolver), resolver)
        )
        a1 = reconcile(a, [], resolver)
        assert canon(reconcile(a1, a1, resolver)) == canon(a1)

    check()


def test_dominated_version_is_dropped_without_asking_the_resolver() -> None:
    old = Versioned(value=1, clock={"a": 1}, ts_ms=100, writer="a")
    new = Versioned(value=2, clock={"a": 1, "b": 1}, ts_ms=1, writer="b")  # older wall clock, but it saw `old`
    assert reconcile([old], [new], LastWriterWins()) == [new]


def test_concurrent_versions_per_strategy() -> None:
    x = Versioned(value=["x"], clock={"a": 1}, ts_ms=5, writer="a")
    y = Versioned(value=["y"], clock={"b": 1}, ts_ms=7, writer="b")
    lww = reconcile([x], [y], LastWriterWins())
    assert [v.value for v in lww] == [["y"]] and lww[0].clock == {"a": 1, "b": 1}
    sib = reconcile([x], [y], KeepSiblings())
    assert sorted(v.value[0] for v in sib) == ["x", "y"]
    custom = reconcile([x], [y], CustomResolver(lambda vals: sorted(x for v in vals for x in v)))
    assert custom[0].value == ["x", "y"] and custom[0].clock == {"a": 1, "b": 1}
    # a write that has seen both siblings replaces them
    resolved = Versioned(value=["z"], clock={"a": 1, "b": 1, "c": 1}, ts_ms=1, writer="c")
    assert reconcile(sib, [resolved], KeepSiblings()) == [resolved]


def test_semantic_merge_merges_crdt_values() -> None:
    s1 = ORSet().add("x", "a")
    s2 = ORSet().add("y", "b")
    x = Versioned(value=s1.to_json(), clock={"a": 1}, ts_ms=1, writer="a")
    y = Versioned(value=s2.to_json(), clock={"b": 1}, ts_ms=2, writer="b")
    out = reconcile([x], [y], SemanticMerge())
    assert len(out) == 1 and sorted(ORSet.model_validate(out[0].value["state"]).value()) == ["x", "y"]
    with pytest.raises(ValueError):
        SemanticMerge().resolve([x, Versioned(value=5, clock={"c": 1})])
    assert GSet().add(1).to_json()["crdt"] == "gset"


def test_resolver_from() -> None:
    assert resolver_from("lww").name == "lww"
    assert resolver_from(lambda vals: vals[-1]).name == "custom"
    with pytest.raises(ValueError):
        resolver_from("nope")


versions = st.builds(
    lambda clock, ts, writer, value, op: Versioned(
        value=value, clock=clock.counters, ts_ms=ts, writer=writer, op=f"{writer}.{op}"
    ),
    clocks,
    st.integers(0, 3),
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 3),
    st.integers(0, 3),
)


@pytest.mark.parametrize("resolver", [LastWriterWins(), KeepSiblings()], ids=lambda r: r.name)
@settings(max_examples=300, deadline=None)
@given(a=st.lists(versions, max_size=4), b=st.lists(versions, max_size=4))
def test_no_write_disappears_unreported(resolver: Any, a: list[Versioned], b: list[Versioned]) -> None:
    """Every input write is kept, or was seen by a kept one (its clock is dominated, with a
    different clock or the same op), or is reported lost: nothing vanishes silently. This is
    what makes ``stats.lost_writes`` complete (the flake of the eventual counter test)."""
    # an op names one write: make them unique, except for a retry (the same version twice)
    a = [v.model_copy(update={"op": f"x{i}"}) for i, v in enumerate(a)]
    b = [v.model_copy(update={"op": f"y{i}"}) for i, v in enumerate(b)] + a[:1]
    out = reconcile_detail(a, b, resolver)
    kept_ops = {v.op for v in out.versions}
    lost_ops = {v.op for v in out.lost}
    for v in a + b:
        seen = any(k.vclock.compare(v.vclock) is Order.AFTER for k in out.versions)
        assert v.op in kept_ops or seen or v.op in lost_ops, (v, out)
    assert not kept_ops & lost_ops
    if resolver.name == "siblings":
        assert not out.discarded


def test_two_writes_with_one_clock_are_not_taken_for_one() -> None:
    """A replica that wrote twice from the same (stale) view produced two versions with one
    clock: only one can be kept, the other is reported, not deduplicated away."""
    first = Versioned(value=1, clock={"a": 1}, ts_ms=1, writer="a", op="a.1")
    second = Versioned(value=1, clock={"a": 1}, ts_ms=2, writer="a", op="a.2")
    out = reconcile_detail([first], [second], LastWriterWins())
    assert out.versions == [second] and out.collided == [first] and out.lost == [first]
    # the same write seen twice (a retry) is one write, nothing lost
    again = reconcile_detail([first], [first], LastWriterWins())
    assert again.versions == [first] and again.lost == []


def test_lww_reports_what_it_discarded_and_merging_resolvers_do_not() -> None:
    x = Versioned(value=["x"], clock={"a": 1}, ts_ms=5, writer="a", op="a.1")
    y = Versioned(value=["y"], clock={"b": 1}, ts_ms=7, writer="b", op="b.1")
    assert reconcile_detail([x], [y], LastWriterWins()).discarded == [x]
    assert reconcile_detail([x], [y], KeepSiblings()).lost == []
    assert reconcile_detail([x], [y], CustomResolver(lambda vals: vals[0] + vals[1])).lost == []
