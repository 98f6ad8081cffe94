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
    holds,
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


def test_a_rewrite_keeps_the_order_of_its_reservation_and_a_hold_reserves_on_the_target() -> None:
    cap = {"gpu": 1.0}
    # an agent placed on h1 at revision 5, its record rewritten at 9 with a migration's hold on
    # h2 (``since`` keeps its order on h1); a placement written on h1 at 7 is younger than it
    moving = ({"host": "h1", "since": 5, "to": "h2", "to_until_ms": 1_000, "needs": {"gpu": 1}}, 9)
    other = ({"host": "h1", "needs": {"gpu": 1}}, 7)
    assert holds(*moving) == [("h1", 5), ("h2", 9)]
    assert not admitted({"gpu": 1}, cap, reservations([moving], below_rev=7).get("h1", {}))
    assert admitted({"gpu": 1}, cap, reservations([other], below_rev=9).get("h2", {}))  # the hold stands on h2
    assert not admitted({"gpu": 1}, cap, reservations([moving], below_rev=10).get("h2", {}))  # a later one there
    assert reservations([moving], now_ms=999) == {"h1": {"gpu": 1.0}, "h2": {"gpu": 1.0}}
    assert reservations([moving], now_ms=1_000) == {"h1": {"gpu": 1.0}}  # a lapsed hold
    assert holds({"host": "h1", "since": 12}, 9) == [("h1", 9)]  # a since after the record: damaged, ignored
    assert holds({"host": "", "to": "h2"}, 3) == [("h2", 3)] and holds({"host": "h2", "to": "h2"}, 3) == [("h2", 3)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.1, max_value=2, allow_nan=False).map(lambda x: round(x, 1)), max_size=12),
    st.floats(min_value=0, max_value=6, allow_nan=False).map(lambda x: round(x, 1)),
    st.lists(st.booleans(), max_size=12),
)
def test_placements_racing_for_one_host_never_reserve_beyond_it(
    gpus: list[float], capacity: float, saw_withdrawn: list[bool]
) -> None:
    """Placements written at once onto one host (revisions 1..n) each keep theirs only if it
    fits beside the older reservations they read; some read an older one before it withdrew
    (``saw_withdrawn``). What stands never exceeds the host, and with nothing read stale it
    is exactly the oldest that fit, in order (greedy by revision)."""
    cap = {"gpu": capacity}
    standing: list[tuple[dict[str, object], int]] = []
    withdrawn: list[tuple[dict[str, object], int]] = []
    for rev, gpu in enumerate(gpus, start=1):
        record = ({"host": "h", "needs": {"gpu": gpu}}, rev)
        stale = saw_withdrawn[rev - 1] if rev - 1 < len(saw_withdrawn) else False
        seen = standing + (withdrawn if stale else [])
        if admitted({"gpu": gpu}, cap, reservations(seen, below_rev=rev).get("h", {})):
            standing.append(record)
        else:
            withdrawn.append(record)
    total = reservations(standing).get("h", {}).get("gpu", 0.0)
    assert total <= capacity + 1e-9
    greedy, used = [], 0.0
    for gpu in gpus:
        if used + gpu <= capacity + 1e-9:
            greedy.append(gpu)
            used += gpu
    if not any(saw_withdrawn[: len(gpus)]):
        assert [r[0]["needs"]["gpu"] for r in standing] == greedy  # type: ignore[index]
