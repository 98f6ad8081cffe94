"""Properties of the partition ring: bounded loads, minimal movement, determinism,
throttled convergence."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetagents._core.ring import UNOWNED, capacity_caps, compute_ring, loads, moved, step_towards

host_names = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12),
    min_size=1,
    max_size=9,
    unique=True,
)
partition_counts = st.sampled_from([1, 7, 16, 64, 128, 256])
load_factors = st.sampled_from([1.0, 1.1, 1.25, 1.5, 2.0])


@given(host_names, partition_counts, load_factors)
@settings(max_examples=80, deadline=None)
def test_every_partition_owned_and_loads_bounded(hosts: list[str], p: int, c: float) -> None:
    weights = dict.fromkeys(hosts, 1.0)
    owners = compute_ring(p, weights, load_factor=c)
    assert all(o in weights for o in owners)
    caps = capacity_caps(p, weights, c)
    for h, n in loads(owners).items():
        assert n <= caps[h]
        assert n >= math.floor(p / len(hosts)) or (n == 0 and p < len(hosts))


@given(host_names, partition_counts, st.data())
@settings(max_examples=80, deadline=None)
def test_weighted_hosts_get_their_share(hosts: list[str], p: int, data: st.DataObject) -> None:
    weights = {h: float(data.draw(st.integers(1, 4))) for h in hosts}
    owners = compute_ring(p, weights, load_factor=1.25)
    total = sum(weights.values())
    caps = capacity_caps(p, weights, 1.25)
    got = loads(owners)
    for h, w in weights.items():
        assert got.get(h, 0) <= caps[h]
        assert got.get(h, 0) >= math.floor(p * w / total)


@given(host_names, partition_counts, st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_deterministic_whatever_the_order(hosts: list[str], p: int, rnd: random.Random) -> None:
    shuffled = list(hosts)
    rnd.shuffle(shuffled)
    a = compute_ring(p, dict.fromkeys(hosts, 1.0))
    b = compute_ring(p, dict.fromkeys(shuffled, 1.0))
    assert a == b
    assert compute_ring(p, dict.fromkeys(hosts, 1.0), previous=a) == a  # stable: nothing moves


@given(host_names, st.text(alphabet="xyz", min_size=13, max_size=14), st.sampled_from([16, 64, 256]))
@settings(max_examples=80, deadline=None)
def test_adding_the_kth_host_moves_about_one_kth_and_only_to_it(hosts: list[str], new: str, p: int) -> None:
    before = compute_ring(p, dict.fromkeys(hosts, 1.0))
    k = len(hosts) + 1
    after = compute_ring(p, dict.fromkeys([*hosts, new], 1.0), previous=before)
    n = moved(before, after)
    # The newcomer takes (about) its fair share. Nothing else moves, except what the load
    # bound forces (the cap shrinks as k grows: a host above the new cap must shed) and
    # the one partition the rounding of the others' shares may shift.
    cap = capacity_caps(p, dict.fromkeys([*hosts, new], 1.0), 1.25)
    forced = sum(max(0, n_old - cap[h]) for h, n_old in loads(before).items())
    to_new = sum(1 for a, b in zip(before, after, strict=True) if a != b and b == new)
    assert to_new <= math.ceil(p / k)
    assert n >= math.floor(p / k)
    assert n - to_new <= forced + 1
    if forced == 0:
        assert n <= math.ceil(p / k) + 1


@given(host_names.filter(lambda h: len(h) >= 2), st.sampled_from([16, 64, 256]), st.data())
@settings(max_examples=80, deadline=None)
def test_removing_a_host_moves_its_partitions_and_few_others(hosts: list[str], p: int, data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(hosts))
    before = compute_ring(p, dict.fromkeys(hosts, 1.0))
    rest = [h for h in hosts if h != gone]
    after = compute_ring(p, dict.fromkeys(rest, 1.0), previous=before)
    orphans = sum(1 for h in before if h == gone)
    assert gone not in after
    # leveling may shift a few more partitions between the survivors (at most one per
    # survivor whose share rounds differently)
    assert moved(before, after) - orphans <= len(rest)


def test_no_hosts_means_nobody_owns() -> None:
    assert compute_ring(4, {}) == [UNOWNED] * 4
    assert compute_ring(4, {"a": 0.0}) == [UNOWNED] * 4
    with pytest.raises(ValueError, match="load_factor"):
        compute_ring(4, {"a": 1.0}, load_factor=0.5)


@given(host_names, host_names, st.sampled_from([16, 64]), st.integers(1, 8))
@settings(max_examples=60, deadline=None)
def test_throttled_steps_converge_and_dead_owners_move_at_once(
    old: list[str], new: list[str], p: int, budget: int
) -> None:
    current = compute_ring(p, dict.fromkeys(old, 1.0))
    alive = set(new)
    target = compute_ring(p, dict.fromkeys(new, 1.0), previous=current)
    steps = 0
    while current != target:
        nxt = step_towards(current, target, alive, max_moves=budget)
        live_moves = sum(1 for a, b in zip(current, nxt, strict=True) if a != b and a in alive)
        assert live_moves <= budget
        # a partition whose owner is dead never waits
        assert all(b == t for a, b, t in zip(current, nxt, target, strict=True) if a not in alive)
        current = nxt
        steps += 1
        assert steps <= p // budget + 2
    assert step_towards(current, target, alive, max_moves=budget, in_transit=budget) == target
