"""Resources with quantities and placement by measured load (pure logic, ADR 0060).

An agent type declares what one of its agents needs (``resources = {"cpu": 0.5,
"memory_mb": 200, "gpu": 1}``); a host advertises what it has (``HostSettings.resources``,
cpu and memory defaulting to the machine's). A *reservation* is not a counter anywhere: it is
read from the durable placement records (``place.<type>.<id>`` = ``{"host", "needs"}``), so
a host that crashes and restarts, or a leader that changes, sees exactly the reservations the
records say. Placing writes the record (CAS), then checks it against the reservations older
than it (``admitted``): the store's revisions order concurrent placements, so two owners that
picked the same host at once cannot both have it; the younger one withdraws. A migration
reserves the same way on its target before the agent leaves its host (``holds``).

Choosing a host (``choose_host``): among the live hosts where the needs fit, in the agent's
rendezvous order (consistent hashing: a host that joins or leaves moves only the agents that
would pick it), the first whose placed agents stay under ``ceil((1 + eps) * average)`` and
whose measured load score stays under ``(1 + eps)`` times the mean score (Mirrokni, Thorup and
Zadimoghaddam, consistent hashing with bounded loads). When the bounds exclude every host that
fits, the least loaded one that fits takes it: capacity, not balance, decides refusal.

The load score is the seed's ``cpu * 0.4 + memory * 0.4 + network * 0.2`` over the fractions a
host advertises (``load_score``), the weights tunable (``HostSettings.load_weights``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .ids import is_valid_token

DEFAULT_WEIGHTS: Mapping[str, float] = {"cpu": 0.4, "memory": 0.4, "network": 0.2}
# a reservation this close to the capacity still fits: 0.1 + 0.2 must fit in 0.3
_SLACK = 1e-9


def parse_needs(value: Any) -> dict[str, float]:
    """A mapping of resource name to a finite quantity >= 0 (what a type declares, what a
    host advertises, what a placement record carries); raises ``ValueError`` otherwise.

    >>> parse_needs({"cpu": 0.5, "gpu": 1})
    {'cpu': 0.5, 'gpu': 1.0}
    >>> parse_needs({"cpu": -1})
    Traceback (most recent call last):
    ...
    ValueError: resource 'cpu' must be a finite number >= 0, not -1
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"resources are a mapping of name to quantity, not {type(value).__name__}")
    out: dict[str, float] = {}
    for name, qty in value.items():
        if not isinstance(name, str) or not is_valid_token(name):
            raise ValueError(f"resource name {name!r} is not a token")
        if isinstance(qty, bool) or not isinstance(qty, int | float) or not math.isfinite(qty) or qty < 0:
            raise ValueError(f"resource {name!r} must be a finite number >= 0, not {qty!r}")
        out[name] = float(qty)
    return out


def _needs_of(value: Mapping[str, Any]) -> dict[str, float]:
    """The needs a placement record carries; a record someone damaged reserves nothing
    rather than stopping every placement."""
    try:
        return parse_needs(value.get("needs") or {})
    except ValueError:
        return {}


def holds(value: Mapping[str, Any], rev: int, now_ms: int | None = None) -> list[tuple[str, int]]:
    """The hosts a placement record (its value, revision) reserves its needs on, each with
    the reservation's *order*: the revision that began it. A record rewritten keeping its host
    (a migration's hold marked on it, or taken off) keeps its order in ``since``, so a rewrite
    never makes an old reservation look younger than one admitted beside it. A migration's
    hold on its target (``to``, until ``to_until_ms``; ``now_ms`` None: counted) is ordered
    by the record's revision: it reserves on the target while the agent still holds its place.

    >>> holds({"host": "a", "since": 3, "to": "b", "to_until_ms": 10**13}, 7)
    [('a', 3), ('b', 7)]
    """
    out: list[tuple[str, int]] = []
    host = value.get("host")
    if isinstance(host, str) and host:
        since = value.get("since")
        kept = isinstance(since, int) and not isinstance(since, bool) and 0 < since <= rev
        out.append((host, since if kept and isinstance(since, int) else rev))
    to, until = value.get("to"), value.get("to_until_ms")
    if isinstance(to, str) and to and to != host and (now_ms is None or (isinstance(until, int) and now_ms < until)):
        out.append((to, rev))
    return out


def reservations(
    records: Iterable[tuple[Mapping[str, Any], int]], *, below_rev: int | None = None, now_ms: int | None = None
) -> dict[str, dict[str, float]]:
    """What the placement records reserve on each host: (record value, revision) pairs;
    with ``below_rev``, only the reservations older than that (by ``holds``' order) count.

    >>> reservations([({"host": "h1", "needs": {"gpu": 1}}, 3), ({"host": "h1", "needs": {"gpu": 1}}, 5)], below_rev=5)
    {'h1': {'gpu': 1.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for value, rev in records:
        for host, order in holds(value, rev, now_ms):
            if below_rev is not None and order >= below_rev:
                continue
            mine = out.setdefault(host, {})
            for name, qty in _needs_of(value).items():
                mine[name] = mine.get(name, 0.0) + qty
    return out


def fits(needs: Mapping[str, float], capacity: Mapping[str, float], used: Mapping[str, float]) -> bool:
    """Whether ``needs`` fit in what ``capacity`` leaves after ``used``; a resource the host
    does not advertise has capacity 0 (a type needing a gpu never lands on a host without).

    >>> fits({"cpu": 0.5}, {"cpu": 1.0}, {"cpu": 0.5}), fits({"gpu": 1}, {"cpu": 4}, {})
    (True, False)
    """
    return all(qty <= 0 or used.get(name, 0.0) + qty <= capacity.get(name, 0.0) + _SLACK for name, qty in needs.items())


def admitted(needs: Mapping[str, float], capacity: Mapping[str, float], older: Mapping[str, float]) -> bool:
    """A placement just written stands when it fits beside the reservations of the records
    older than it on the same host (``reservations(..., below_rev=its revision)``)."""
    return fits(needs, capacity, older)


def load_score(member: Mapping[str, Any], weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> float:
    """A host's load from the fractions it advertises (each clamped to 0..1): the seed's
    ``cpu * 0.4 + memory * 0.4 + network * 0.2`` with the default weights.

    >>> load_score({"load": {"cpu": 0.5, "memory": 0.25, "network": 1.0}})
    0.5
    """
    load = member.get("load")
    if not isinstance(load, Mapping):
        return 0.0
    total = 0.0
    for name, w in weights.items():
        x = load.get(name, 0.0)
        if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
            total += w * min(1.0, max(0.0, float(x)))
    return round(total, 6)


def _rank(key: str, host: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{host}/{key}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class HostView:
    """What placement knows of one live host: its capacity, what the records reserve on it,
    how many agents they place there, and its measured load score."""

    capacity: Mapping[str, float]
    reserved: Mapping[str, float] = field(default_factory=dict)
    placed: int = 0
    score: float = 0.0


def choose_host(
    key: str, needs: Mapping[str, float], hosts: Mapping[str, HostView], *, eps: float = 0.25
) -> str | None:
    """The host to place agent ``key`` on, or None when its needs fit nowhere.

    >>> hosts = {"a": HostView({"gpu": 1}, {"gpu": 1}), "b": HostView({"gpu": 2})}
    >>> choose_host("t.x", {"gpu": 1}, hosts), choose_host("t.x", {"gpu": 3}, hosts)
    ('b', None)
    """
    if eps < 0:
        raise ValueError("eps must be >= 0")
    able = [h for h, v in hosts.items() if fits(needs, v.capacity, v.reserved)]
    if not able:
        return None
    order = sorted(able, key=lambda h: (-_rank(key, h), h))
    placed_cap = math.ceil((1 + eps) * (sum(hosts[h].placed for h in able) + 1) / len(able))
    mean_score = sum(hosts[h].score for h in able) / len(able)
    for h in order:
        v = hosts[h]
        if v.placed + 1 <= placed_cap and v.score <= (1 + eps) * mean_score + _SLACK:
            return h
    return min(order, key=lambda h: (hosts[h].score, hosts[h].placed))


def host_views(
    members: Mapping[str, Mapping[str, Any]],
    records: Iterable[tuple[Mapping[str, Any], int]],
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    now_ms: int | None = None,
) -> dict[str, HostView]:
    """The live, non-draining members as placement sees them (capacity from their
    ``resources``, reservations and counts from the placement records, score from ``load``;
    ``now_ms``: migrations' holds past their time reserve nothing)."""
    records = list(records)
    reserved = reservations(records, now_ms=now_ms)
    placed: dict[str, int] = {}
    for value, _ in records:
        host = value.get("host")
        if isinstance(host, str) and host and _needs_of(value):
            placed[host] = placed.get(host, 0) + 1
    out: dict[str, HostView] = {}
    for h, m in members.items():
        if m.get("draining"):
            continue
        try:
            capacity = parse_needs(m.get("resources") or {})
        except ValueError:
            capacity = {}
        out[h] = HostView(capacity, reserved.get(h, {}), placed.get(h, 0), load_score(m, weights))
    return out
