"""Resources with quantities, reservations read from placement records, and the choice of a
host with bounded loads (``_core/resources.py``, ADR 0060)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetagents._core.resources import (
    HostView,
    admitted,
    choose_host,
    fits,
    host_views,
    load_score,
    parse_needs,
    reservations,
)

names = st.sampled_from(["cpu", "memory_mb", "gpu", "llm_tokens_per_min"])
quantities = st.floats(min_value=0, max_value=8, allow_nan=False).map(lambda x: round(x, 2))
needs_st = st.dictionaries(names, quantities, max_size=3)
hosts_st = st.dictionaries(
    st.sampled_from([f"h{i}" for i in range(6)]),
    st.builds(
        HostView,
        st.dictionaries(names, quantities, max_size=4),
        st.dictionaries(names, quantities, max_size=4),
        st.integers(0, 20),
        st.floats(0, 1),
    ),
    max_size=6,
)


@pytest.mark.parametrize(
    "bad", [{"cpu": -1}, {"cpu": float("nan")}, {"cpu": float("inf")}, {"cpu": True}, {"a.b": 1}, {"cpu": "1"}, [1]]
)
def test_bad_needs_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_needs(bad)


@given(needs_st, hosts_st, st.text(min_size=1, max_size=8))
@settings(max_examples=40, deadline=None)
def test_the_chosen_host_has_room_and_none_only_when_nothing_fits(
    needs: dict[str, float], hosts: dict[str, HostView], key: str
) -> None:
    pick = choose_host(f"t.{key}", needs, hosts)
    able = [h for h, v in hosts.items() if fits(needs, v.capacity, v.reserved)]
    if pick is None:
        assert able == []
    else:
        assert pick in able


@given(needs_st, hosts_st, st.text(min_size=1, max_size=8))
@settings(max_examples=20, deadline=None)
def test_the_choice_is_deterministic_and_ignores_dict_order(
    needs: dict[str, float], hosts: dict[str, HostView], key: str
) -> None:
    again = dict(reversed(list(hosts.items())))
    assert choose_host(key, needs, hosts) == choose_host(key, needs, again)


def test_bounded_loads_spread_agents_without_needs_on_equal_hosts() -> None:
    """Placing 600 agents one by one (each seeing the records so far): no host ends above
    ceil((1 + eps) * average) + 1, where plain rendezvous hashing would follow the hash."""
    hosts = {f"h{i}": HostView({"cpu": 1000.0}) for i in range(5)}
    placed = dict.fromkeys(hosts, 0)
    for i in range(600):
        views = {h: HostView(v.capacity, {"cpu": placed[h] * 0.5}, placed[h]) for h, v in hosts.items()}
        pick = choose_host(f"t.a{i}", {"cpu": 0.5}, views, eps=0.1)
        assert pick is not None
        placed[pick] += 1
    assert max(placed.values()) <= math.ceil(1.1 * 600 / 5) + 1


def test_a_loaded_host_is_passed_over_while_another_fits() -> None:
    views = {"hot": HostView({"cpu": 4}, score=0.9), "cool": HostView({"cpu": 4}, score=0.1)}
    picks = {choose_host(f"t.a{i}", {"cpu": 1}, views) for i in range(50)}
    assert picks == {"cool"}
    # the hot host still takes what fits nowhere else
    assert choose_host("t.x", {"cpu": 1}, {"hot": views["hot"], "full": HostView({"cpu": 0})}) == "hot"


def test_reservations_come_from_the_records_and_skip_released_and_damaged_ones() -> None:
    records = [
        ({"host": "h1", "needs": {"gpu": 1, "cpu": 0.5}}, 10),
        ({"host": "h1", "needs": {"cpu": 0.25}}, 12),
        ({"host": "", "needs": {"gpu": 1}}, 13),  # released
        ({"host": "h2", "needs": {"cpu": -4}}, 14),  # damaged: reserves nothing
        ({"host": "h2"}, 15),  # placed by tags or migration: reserves nothing
    ]
    assert reservations(records) == {"h1": {"gpu": 1.0, "cpu": 0.75}, "h2": {}}
    assert reservations(records, below_rev=12) == {"h1": {"gpu": 1.0, "cpu": 0.5}}


def test_of_two_placements_racing_for_the_last_gpu_only_the_older_stands() -> None:
    cap = {"gpu": 1.0}
    records = [({"host": "h1", "needs": {"gpu": 1}}, 20), ({"host": "h1", "needs": {"gpu": 1}}, 21)]
    assert admitted({"gpu": 1}, cap, reservations(records, below_rev=20).get("h1", {}))
    assert not admitted({"gpu": 1}, cap, reservations(records, below_rev=21).get("h1", {}))


def test_load_score_uses_the_seed_weights_and_clamps() -> None:
    assert load_score({"load": {"cpu": 1.0, "memory": 1.0, "network": 1.0}}) == 1.0
    assert load_score({"load": {"cpu": 3.0, "memory": -1, "network": "x"}}) == 0.4
    assert load_score({"load": {"cpu": 0.5}}, {"cpu": 1.0}) == 0.5
    assert load_score({}) == 0.0


def test_host_views_skip_draining_members_and_count_placed_agents() -> None:
    members = {
        "h1": {"resources": {"cpu": 2}, "load": {"cpu": 0.5}},
        "h2": {"resources": {"cpu": 2}, "draining": True},
        "h3": {"resources": "junk"},
    }
    records = [({"host": "h1", "needs": {"cpu": 1}}, 3)]
    views = host_views(members, records)
    assert set(views) == {"h1", "h3"}
    assert views["h1"] == HostView({"cpu": 2.0}, {"cpu": 1.0}, 1, 0.2)
    assert views["h3"].capacity == {}
