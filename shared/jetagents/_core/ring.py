"""The partition ring: which host owns which partition (pure logic, no I/O).

Consistent hashing with bounded loads: every host puts virtual nodes on a 64-bit ring
(more for a larger capacity); each partition hashes to a point and walks clockwise to
the first host that still has room. A host's room is ``ceil(load_factor * P * w / W)``
for its capacity weight ``w`` out of the total ``W``, so no host ever gets more than
``load_factor`` times its fair share, and adding or removing a host moves only the
partitions whose walk passed through it (about ``P/k`` for the k-th host) plus the few
the load bound pushes on.

The leader computes the *target* from the live members and moves the current ring
towards it a bounded number of partitions at a time (``step_towards``), so a large
cluster never moves everything at once. Partitions whose owner is gone move at once:
nobody serves them until they do.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence

UNOWNED = ""


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def capacity_caps(partitions: int, weights: Mapping[str, float], load_factor: float) -> dict[str, int]:
    """The most partitions each host may own under the load bound."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        return {}
    return {h: max(1, math.ceil(load_factor * partitions * w / total)) for h, w in weights.items() if w > 0}


class _Points:
    """Virtual nodes of the live hosts on a 64-bit ring."""

    def __init__(self, weights: Mapping[str, float], vnodes: int) -> None:
        mean = sum(weights.values()) / len(weights)
        points: list[tuple[int, str]] = []
        self.own: dict[str, list[int]] = {}
        for host in sorted(weights):
            n = max(1, round(vnodes * weights[host] / mean))
            mine = sorted(_h64(f"{host}#{i}") for i in range(n))
            self.own[host] = mine
            points.extend((v, host) for v in mine)
        points.sort()
        self.points = points
        self.keys = [v for v, _ in points]

    def walk(self, p: int) -> list[str]:
        """Hosts in clockwise order from partition ``p``'s point (its preference list)."""
        i = bisect.bisect_left(self.keys, _h64(f"partition-{p}"))
        seen: list[str] = []
        n = len(self.points)
        for step in range(n):
            host = self.points[(i + step) % n][1]
            if host not in seen:
                seen.append(host)
                if len(seen) == len(self.own):
                    break
        return seen

    def distance(self, p: int, host: str) -> int:
        """Clockwise distance from partition ``p`` to ``host``'s nearest virtual node."""
        hp = _h64(f"partition-{p}")
        mine = self.own[host]
        i = bisect.bisect_left(mine, hp) % len(mine)
        return (mine[i] - hp) % (1 << 64)


def compute_ring(
    partitions: int,
    weights: Mapping[str, float],
    *,
    previous: Sequence[str] | None = None,
    load_factor: float = 1.25,
    vnodes: int = 64,
) -> list[str]:
    """Owner of each partition (``UNOWNED`` when no host has a positive weight).

    Deterministic: the same members, weights and previous ring give the same result on
    every host. With ``previous`` it moves as little as the bounds allow:

    1. a partition stays with its previous owner while that owner is alive and under
       its cap (``ceil(load_factor * fair share)``);
    2. orphans (owner gone, or over the cap) walk the hash ring to the first host below
       its fair share, else to the first with room;
    3. a host below its fair share (``floor``), typically a newcomer, takes partitions
       one at a time from the host furthest above its own share, choosing the one
       whose hash point is closest to it; so adding the k-th host moves about ``P/k``
       partitions, and only to that host.
    """
    if load_factor < 1.0:
        raise ValueError("load_factor must be >= 1")
    live = {h: w for h, w in weights.items() if w > 0}
    if not live:
        return [UNOWNED] * partitions
    ring = _Points(live, vnodes)
    caps = capacity_caps(partitions, live, load_factor)
    total = sum(live.values())
    fair = {h: partitions * w / total for h, w in live.items()}
    owners = [UNOWNED] * partitions
    load = dict.fromkeys(live, 0)
    if previous is not None and len(previous) == partitions:
        for p, h in enumerate(previous):
            if h in live and load[h] < caps[h]:
                owners[p] = h
                load[h] += 1
    for p in range(partitions):
        if owners[p] == UNOWNED:
            walk = ring.walk(p)
            # first choice: the nearest host still below its fair share; else any with room
            pick = next((h for h in walk if load[h] < math.floor(fair[h])), None)
            if pick is None:
                pick = next((h for h in walk if load[h] < caps[h]), None)
            if pick is not None:
                owners[p] = pick
                load[pick] += 1
    # level up hosts below their fair share, taking from those furthest above theirs
    while True:
        needy = [h for h in sorted(live) if load[h] < math.floor(fair[h])]
        if not needy:
            break
        taker = min(needy, key=lambda h: (load[h] - fair[h], h))
        donors = [h for h in sorted(live) if h != taker and load[h] - 1 >= math.floor(fair[h])]
        if not donors:
            break
        donor = max(donors, key=lambda h: (load[h] - fair[h], h))
        p = min(
            (q for q in range(partitions) if owners[q] == donor),
            key=lambda q: (ring.distance(q, taker), q),
        )
        owners[p] = taker
        load[donor] -= 1
        load[taker] += 1
    return owners


def step_towards(
    current: Sequence[str],
    target: Sequence[str],
    alive: set[str],
    *,
    max_moves: int,
    in_transit: int = 0,
) -> list[str]:
    """The next ring on the way from ``current`` to ``target``.

    Partitions owned by nobody alive take their target owner at once. Of the others (a
    live owner hands over to another live host), at most ``max_moves - in_transit`` move
    in this step, lowest partition first, so the cluster converges in bounded steps.
    """
    nxt = list(current)
    budget = max(0, max_moves - in_transit)
    for p, (cur, tgt) in enumerate(zip(current, target, strict=True)):
        if cur == tgt:
            continue
        if cur == UNOWNED or cur not in alive:
            nxt[p] = tgt
        elif budget > 0:
            nxt[p] = tgt
            budget -= 1
    return nxt


def moved(a: Sequence[str], b: Sequence[str]) -> int:
    return sum(1 for x, y in zip(a, b, strict=True) if x != y)


def loads(owners: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in owners:
        if h != UNOWNED:
            out[h] = out.get(h, 0) + 1
    return out
