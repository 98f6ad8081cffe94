"""Property tests of the CRDTs: merge is a join (commutative, associative, idempotent) and
replicas that exchange their states in any order converge.

States are produced by executions (three replicas applying random operations and merging
from each other at random points), never drawn independently: an OR-set dot, for example,
is unique only because a replica creates it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetagents._core.crdt import CRDT, GCounter, GSet, LWWMap, LWWRegister, ORMap, ORSet, PNCounter, decode_crdt

REPLICAS = ("r0", "r1", "r2")
ELEMS = st.one_of(st.integers(0, 5), st.sampled_from(["a", "b", "c"]), st.just({"k": [1, 2]}))
FIELDS = st.sampled_from(["f1", "f2", "f3"])

Op = tuple[str, Any, Any]


def apply_op(state: CRDT, op: Op, replica: str, ts: int) -> CRDT:
    kind, x, y = op
    if isinstance(state, GCounter):
        return state.increment(replica, x)
    if isinstance(state, PNCounter):
        return state.increment(replica, x)
    if isinstance(state, GSet):
        return state.add(x)
    if isinstance(state, ORSet):
        return state.add(x, replica) if kind == "add" else state.remove(x)
    if isinstance(state, LWWRegister):
        return state.set(x, replica, ts)
    if isinstance(state, LWWMap):
        return state.put(x, y, replica, ts) if kind == "add" else state.remove(x, replica, ts)
    if isinstance(state, ORMap):
        return state.put(x, y, replica, ts) if kind == "add" else state.remove(x)
    raise AssertionError(state)


def ops_for(cls: type[CRDT]) -> st.SearchStrategy[Op]:
    kind = st.sampled_from(["add", "add", "remove"])
    if cls is GCounter:
        return st.tuples(st.just("add"), st.integers(0, 10), st.none())
    if cls is PNCounter:
        return st.tuples(st.just("add"), st.integers(-10, 10), st.none())
    if cls in (GSet, ORSet, LWWRegister):
        return st.tuples(kind, ELEMS, st.none())
    return st.tuples(kind, FIELDS, ELEMS)


# a step: (replica index, operation) or (replica index, merge from replica index)
def steps_for(cls: type[CRDT]) -> st.SearchStrategy[list[tuple[int, Op | int]]]:
    step = st.tuples(st.integers(0, 2), st.one_of(ops_for(cls), st.integers(0, 2)))
    return st.lists(step, max_size=25)


def run(cls: type[CRDT], steps: list[tuple[int, Op | int]], ts_values: list[int]) -> list[CRDT]:
    """Execute the steps; return every state any replica passed through."""
    states: list[CRDT] = [cls() for _ in REPLICAS]
    seen: list[CRDT] = list(states)
    for i, (r, what) in enumerate(steps):
        if isinstance(what, int):
            states[r] = states[r].merge(states[what])
        else:
            ts = ts_values[i % len(ts_values)] if ts_values else 0
            states[r] = apply_op(states[r], what, REPLICAS[r], ts)
        seen.append(states[r])
    return seen + states


TYPES = [GCounter, PNCounter, GSet, ORSet, LWWRegister, LWWMap, ORMap]
TS = st.lists(st.integers(0, 20), max_size=6)  # few distinct values: ties happen


def same(a: CRDT, b: CRDT) -> bool:
    return a.canonical() == b.canonical()


def law_test(cls: type[CRDT]) -> Callable[..., None]:
    @settings(max_examples=60, deadline=None)
    @given(steps=steps_for(cls), ts_values=TS, data=st.data())
    def check(steps: list[tuple[int, Op | int]], ts_values: list[int], data: st.DataObject) -> None:
        pool = run(cls, steps, ts_values)
        a, b, c = (data.draw(st.sampled_from(pool)) for _ in range(3))
        assert same(a.merge(b), b.merge(a)), "commutative"
        assert same(a.merge(b).merge(c), a.merge(b.merge(c))), "associative"
        assert same(a.merge(a), a), "idempotent"
        assert same(decode_crdt(a.to_json()), a), "stored form round-trips"

    return check


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.crdt_type)
def test_merge_is_a_join(cls: type[CRDT]) -> None:
    law_test(cls)()


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.crdt_type)
def test_replicas_converge_in_any_exchange_order(cls: type[CRDT]) -> None:
    @settings(max_examples=40, deadline=None)
    @given(steps=steps_for(cls), ts_values=TS, data=st.data())
    def check(steps: list[tuple[int, Op | int]], ts_values: list[int], data: st.DataObject) -> None:
        finals = run(cls, steps, ts_values)[-3:]
        results = []
        for i in range(3):
            order = data.draw(st.permutations([j for j in range(3) if j != i]))
            s = finals[i]
            for j in order:
                s = s.merge(finals[j])
            results.append(s)
        assert same(results[0], results[1]) and same(results[1], results[2])

    check()


# -- what each type means ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(-20, 20)), max_size=30))
def test_pn_counter_counts_every_increment_once(incs: list[tuple[int, int]]) -> None:
    replicas = [PNCounter() for _ in REPLICAS]
    for r, by in incs:
        replicas[r] = replicas[r].increment(REPLICAS[r], by)
    merged = replicas[0].merge(replicas[1]).merge(replicas[2])
    assert merged.value() == sum(by for _, by in incs)
    assert merged.merge(replicas[1]).value() == merged.value()  # re-delivery does not double count


def test_g_counter_refuses_to_shrink() -> None:
    with pytest.raises(ValueError):
        GCounter().increment("r0", -1)


def test_or_set_add_wins_over_concurrent_remove() -> None:
    base = ORSet().add("x", "r0")
    removed = base.remove("x")
    re_added = base.add("x", "r1")
    assert "x" in removed.merge(re_added)
    assert "x" in re_added.merge(removed)
    # a remove that has seen the add removes it for good
    seen_then_removed = base.merge(re_added).remove("x")
    assert "x" not in seen_then_removed.merge(re_added).merge(base)


def test_lww_register_and_map() -> None:
    a = LWWRegister().set("old", "r0", 10)
    b = LWWRegister().set("new", "r1", 20)
    assert a.merge(b).value() == "new" == b.merge(a).value()
    m1 = LWWMap().put("f", 1, "r0", 10)
    m2 = m1.remove("f", "r1", 11)
    assert m1.merge(m2).value() == {}
    assert m2.put("f", 3, "r0", 5).value() == {"f": 3}, "own later write wins even with a clock behind"


def test_or_map_put_wins_over_concurrent_remove() -> None:
    base = ORMap().put("f", 1, "r0", 10)
    assert base.remove("f").merge(base.put("f", 2, "r1", 11)).value() == {"f": 2}
    assert base.remove("f").merge(base).value() == {}
