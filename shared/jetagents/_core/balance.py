"""Rebalancing partitions by measured load (pure logic, ADR 0044).

The ring (``ring.py``) balances partition *counts*. Commands are rarely spread evenly: when
80 % of them go to 10 % of the partitions, equal counts are very unequal loads. Each interval
the leader hands ``Balancer.plan`` the ring, every host's load score (``resources.load_score``),
each partition's command rate and each host's cost per command (``rates_and_costs``), and gets
back at most ``max_moves`` partition moves. The rules that keep it from flapping:

* hysteresis: a host is *hot* when its score exceeds the mean by ``threshold`` (relative) and
  ``min_gap`` (absolute, so an idle cluster's noise moves nothing); only a host hot for
  ``persist`` consecutive intervals gives partitions away;
* a move is made only when, by the load it predicts (a partition's rate times each host's
  cost per command), both hosts end below the hot one's score less ``min_gap``: a move that
  merely swaps which host is hot is never made, and since each move replaces the hot score
  and the cold one by two lower ones, the hosts' scores sorted from the top fall
  lexicographically with every move; while the loads stay what they were no partition can
  bounce back;
* what a partition costs where it runs is measured (its rate times its host's score per unit
  of rate); what it will cost elsewhere is predicted: a host's own figure while it carries a
  fair part of the traffic (remembered, so a slow host stays known as slow), otherwise at
  most the source's figure, since a nearly idle host's score per command is mostly the load
  no partition causes. The no-cycle argument below is exact when the predictions are; with
  hosts of unknown speed it is not, and the property tests bound the damage instead;
* after a move both hosts' streaks restart (the next decision waits for ``persist`` fresh
  measurements that include the move), and a moved partition stays put for ``cooldown``
  intervals;
* counts stay inside the ring's bounds (``floor(fair share)`` .. ``ceil(load_factor * fair
  share)``): when giving one partition would break them, the cold host gives back its least
  loaded partition in a swap, so the ring's own computation (which keeps every owner that is
  within the bounds) never undoes the move.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .resources import HostView, choose_host, parse_needs
from .ring import capacity_caps


@dataclass(frozen=True, slots=True)
class BalancePolicy:
    threshold: float = 0.25  # hot: score > mean * (1 + threshold) ...
    min_gap: float = 0.05  # ... and score > mean + min_gap
    persist: int = 3  # intervals a host must stay hot before it gives partitions away
    max_moves: int = 2  # partitions moved per interval (a swap moves two)
    cooldown: int = 6  # intervals a moved partition stays where it went


@dataclass(frozen=True, slots=True)
class Move:
    partition: int
    source: str
    target: str


@dataclass
class Balancer:
    """The leader's memory between intervals (lost with the leadership, which only delays
    the next move by ``persist`` intervals)."""

    policy: BalancePolicy = field(default_factory=BalancePolicy)
    interval: int = 0
    streak: dict[str, int] = field(default_factory=dict)
    moved_at: dict[int, int] = field(default_factory=dict)
    learned: dict[str, float] = field(default_factory=dict)  # host -> cost seen under real traffic

    def hot(self, scores: Mapping[str, float]) -> list[str]:
        """Hosts over the threshold now, hottest first."""
        return hot_hosts(scores, self.policy)

    def plan(
        self,
        owners: Sequence[str],
        scores: Mapping[str, float],
        rates: Mapping[int, float],
        cost: Mapping[str, float],
        *,
        weights: Mapping[str, float] | None = None,
        load_factor: float = 1.25,
    ) -> list[Move]:
        """One interval: update the streaks from ``scores`` (the live hosts that may take
        partitions) and return the moves to make now. ``rates`` are the partitions' command
        rates (missing: 0) and ``cost`` each host's score per unit of rate, so a partition
        moved from a slow host is predicted to cost less where it goes (``rates_and_costs``)."""
        if self.policy.max_moves < 2:
            raise ValueError("max_moves must be >= 2: a swap moves two partitions")
        self.interval += 1
        self._learn(owners, rates, cost)
        ranked = self.hot(scores)
        for h in list(self.streak):
            if h not in ranked:
                del self.streak[h]
        for h in ranked:
            self.streak[h] = self.streak.get(h, 0) + 1
        ready = [h for h in ranked if self.streak[h] >= self.policy.persist]
        if not ready or len(scores) < 2:
            return []
        counts = dict.fromkeys(scores, 0)
        for o in owners:
            if o in counts:
                counts[o] += 1
        n = len(owners)
        w = {h: (weights or {}).get(h, 1.0) for h in scores}
        caps = capacity_caps(n, w, load_factor)
        floors = {h: math.floor(n * w[h] / sum(w.values())) for h in scores}
        live = dict(scores)
        moves: list[Move] = []
        budget = self.policy.max_moves
        for source in ready:
            target = min(live, key=lambda h: (live[h], h))
            if target == source or budget <= 0:
                break
            owned = {h: [p for p, o in enumerate(owners) if o == h and self._movable(p)] for h in (source, target)}
            owned["all:" + target] = [p for p, o in enumerate(owners) if o == target]
            step = self._best_step(source, target, owned, live, rates, cost, counts, caps, floors, budget)
            if step is None:
                continue
            moved, after = step
            live[source], live[target] = after
            for m in moved:
                counts[m.source] -= 1
                counts[m.target] += 1
                self.moved_at[m.partition] = self.interval
            moves.extend(moved)
            budget -= len(moved)
            self.streak.pop(source, None)
            self.streak.pop(target, None)
        return moves

    def _cost_at(self, host: str, host_rate: float, partition_rate: float, measured: float, here: float) -> float:
        """What one unit of rate is predicted to cost ``host``. A host carrying less traffic
        than the partition has a score per command that is mostly the load no partition
        causes (heartbeats, timers, calls it only looks at): its figure would forbid every
        move to it. Then the cost it showed the last time it carried real traffic counts (a
        slow host stays known as slow), else at most what the partition costs where it runs."""
        if host_rate >= partition_rate:
            return measured
        known = self.learned.get(host)
        return known if known is not None else min(measured, here)

    def _learn(self, owners: Sequence[str], rates: Mapping[int, float], cost: Mapping[str, float]) -> None:
        """Remember each host's cost while it carries a fair part of the traffic."""
        per_host: dict[str, float] = {}
        for p, o in enumerate(owners):
            per_host[o] = per_host.get(o, 0.0) + rates.get(p, 0.0)
        total = sum(per_host.values())
        for h, c in cost.items():
            if total > 0 and per_host.get(h, 0.0) >= total / (2 * max(1, len(cost))):
                self.learned[h] = c

    def _movable(self, p: int) -> bool:
        at = self.moved_at.get(p)
        return at is None or self.interval - at > self.policy.cooldown

    def _best_step(
        self,
        source: str,
        target: str,
        owned: Mapping[str, list[int]],
        scores: Mapping[str, float],
        rates: Mapping[int, float],
        cost: Mapping[str, float],
        counts: Mapping[str, int],
        caps: Mapping[str, int],
        floors: Mapping[str, int],
        budget: int,
    ) -> tuple[list[Move], tuple[float, float]] | None:
        """The move (or swap) after which the hotter of the two hosts is coolest, provided
        it is cooler than ``source`` is now by ``min_gap``; None when no move helps."""
        s, t = scores[source], scores[target]
        cs = cost.get(source, 0.0)
        target_rate = sum(rates.get(p, 0.0) for p in owned["all:" + target])
        limit = s - self.policy.min_gap
        best: tuple[float, int, list[Move], tuple[float, float]] | None = None
        single_ok = counts[source] - 1 >= floors[source] and counts[target] + 1 <= caps[target]
        give_back = min(owned[target], key=lambda x: (rates.get(x, 0.0), x), default=None)
        for p in owned[source]:
            rp = rates.get(p, 0.0)
            if rp <= 0:
                continue
            ct = self._cost_at(target, target_rate, rp, cost.get(target, 0.0), cs)
            options: list[tuple[list[Move], float, float]] = []
            if single_ok:
                options.append(([Move(p, source, target)], s - rp * cs, t + rp * ct))
            if budget >= 2 and give_back is not None:
                rq = rates.get(give_back, 0.0)
                swap = [Move(p, source, target), Move(give_back, target, source)]
                options.append((swap, s - (rp - rq) * cs, t + (rp - rq) * ct))
            for step, new_s, new_t in options:
                worst = max(new_s, new_t)
                if worst <= limit and (best is None or (worst, len(step)) < (best[0], best[1])):
                    best = (worst, len(step), step, (new_s, new_t))
        return (best[2], best[3]) if best is not None else None


def hot_hosts(scores: Mapping[str, float], policy: BalancePolicy) -> list[str]:
    """Hosts over the threshold now (``policy.threshold`` and ``policy.min_gap``), hottest first."""
    if not scores:
        return []
    mean = sum(scores.values()) / len(scores)
    over = [h for h, s in scores.items() if s > mean * (1 + policy.threshold) and s > mean + policy.min_gap]
    return sorted(over, key=lambda h: (-scores[h], h))


@dataclass(frozen=True, slots=True)
class AgentMove:
    agent: str  # "<type>.<id>"
    source: str
    target: str


@dataclass
class Shedder:
    """One host's memory between intervals, to give its placed agents (ADR 0060) away while
    it stays hot. The same limits as partitions: hot for ``persist`` intervals in a row
    (the streak restarts after a move, so the next one waits for measurements that include
    it), at most ``max_moves`` agents an interval, an agent moved less than ``cooldown``
    intervals ago stays (``movable_agents``, from its record's age: durable, so it holds
    across hosts), a target only where the agent's needs fit beside the reservations there
    (``choose_host``, rendezvous with bounded loads, among the hosts the move helps).

    Only the hottest host sheds in an interval (``ready``).

    What an agent costs is not measured per agent: it is predicted as its part of the
    host's movable score (CPU and network), shared by declared ``cpu`` (equally when an
    agent declares none). A move is made only when, so predicted, both hosts end below the
    hot score less ``min_gap``; an agent that is the whole of its host's heat never moves
    (moving it would only swap which host is hot). While the prediction is not below what
    the agent really costs (the host's load is its agents' and more, spread as declared),
    the two hosts' higher score falls at every move and nothing can cycle, as for
    partitions; otherwise the cooldown bounds how often one agent moves."""

    policy: BalancePolicy = field(default_factory=BalancePolicy)
    streak: int = 0

    def ready(self, me: str, scores: Mapping[str, float]) -> bool:
        """Count this interval: True when ``me`` has been hot ``persist`` intervals in a row
        and is the hottest host now (ties by name). One shedder at a time: hosts decide
        alone, from the same heartbeats, so two hot hosts shedding in one interval would
        both see the same cool host and fill it past where they started (then it sheds,
        and the agents cycle); with one, the hottest score falls at every move."""
        hot = hot_hosts(scores, self.policy)
        if len(scores) < 2 or me not in hot:
            self.streak = 0
            return False
        self.streak += 1
        return self.streak >= self.policy.persist and hot[0] == me

    def plan(
        self,
        me: str,
        scores: Mapping[str, float],
        movable: float,
        mine: Mapping[str, Mapping[str, float]],
        views: Mapping[str, HostView],
        *,
        eps: float = 0.25,
    ) -> list[AgentMove]:
        """After ``ready``: the agents (``mine``: movable agent -> needs) to move, and where.
        ``movable`` is the part of this host's score that follows what it runs."""
        if not mine or me not in scores:
            return []
        declared = all(n.get("cpu", 0.0) > 0 for n in mine.values())
        weight = {k: n.get("cpu", 0.0) if declared else 1.0 for k, n in mine.items()}
        total = sum(weight.values())
        cost = {k: movable * w / total for k, w in weight.items()}
        live = dict(scores)
        limit = scores[me] - self.policy.min_gap
        cool = {h: v for h, v in views.items() if h != me and h in scores}
        moves: list[AgentMove] = []
        # the costliest agents first: the most relief per move
        for key in sorted(mine, key=lambda k: (-cost[k], k)):
            if len(moves) >= self.policy.max_moves:
                break
            c, needs = cost[key], mine[key]
            if c <= 0 or live[me] - c > limit:
                continue
            helped = {h: v for h, v in cool.items() if live[h] + c <= limit}
            target = choose_host(key, needs, helped, eps=eps)
            if target is None:
                continue
            v = cool[target]
            reserved = {n: v.reserved.get(n, 0.0) + needs.get(n, 0.0) for n in {*v.reserved, *needs}}
            cool[target] = HostView(v.capacity, reserved, v.placed + 1, v.score + c)
            live[me] -= c
            live[target] += c
            moves.append(AgentMove(key, me, target))
        if moves:
            self.streak = 0
        return moves


def movable_agents(
    records: Iterable[tuple[str, Mapping[str, object]]], me: str, now_ms: int, hold_ms: float
) -> dict[str, dict[str, float]]:
    """The agents placed on ``me`` with needs (``records``: agent key -> placement record)
    whose record is older than ``hold_ms`` (a moved agent stays put for the cooldown).

    >>> movable_agents([("t.a", {"host": "h", "needs": {"gpu": 1}, "ts_ms": 0})], "h", 10_000, 5_000)
    {'t.a': {'gpu': 1.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for key, value in records:
        ts = value.get("ts_ms")
        if value.get("host") != me or not isinstance(ts, int | float) or now_ms - ts < hold_ms:
            continue
        try:
            needs = parse_needs(value.get("needs") or {})
        except ValueError:
            continue
        if needs:
            out[key] = needs
    return out


def apply(owners: Sequence[str], moves: Sequence[Move]) -> list[str]:
    out = list(owners)
    for m in moves:
        if out[m.partition] == m.source:
            out[m.partition] = m.target
    return out


def rates_and_costs(
    owners: Sequence[str], members: Mapping[str, Mapping[str, object]], scores: Mapping[str, float]
) -> tuple[dict[int, float], dict[str, float]]:
    """The command rate of each partition (what its owner advertises in ``rates``: {p: per s})
    and each host's cost: the part of its score that follows its partitions (``scores``: CPU
    and network, not the process's memory) per unit of rate. A host that reports no rate
    costs what the others cost on average.

    >>> rates_and_costs(["a", "a", "b"], {"a": {"rates": {"0": 3.0, "1": 1.0}}}, {"a": 0.8, "b": 0.1})
    ({0: 3.0, 1: 1.0}, {'a': 0.2, 'b': 0.2})
    """
    rates: dict[int, float] = {}
    cost: dict[str, float] = {}
    for host, m in members.items():
        advertised = m.get("rates")
        if not isinstance(advertised, Mapping) or host not in scores:
            continue
        mine: dict[int, float] = {}
        for k, v in advertised.items():
            try:
                p = int(k)
            except (TypeError, ValueError):
                continue
            if 0 <= p < len(owners) and owners[p] == host and isinstance(v, int | float) and v > 0:
                mine[p] = float(v)
        if mine:
            rates.update(mine)
            cost[host] = scores[host] / sum(mine.values())
    mean = sum(cost.values()) / len(cost) if cost else 0.0
    return rates, {h: round(cost.get(h, mean), 12) for h in scores}


def imbalance(scores: Mapping[str, float]) -> float:
    """The hottest host's score over the mean (1.0: perfectly even; 0 hosts or idle: 1.0)."""
    if not scores:
        return 1.0
    mean = sum(scores.values()) / len(scores)
    return max(scores.values()) / mean if mean > 0 else 1.0


__all__ = [
    "AgentMove",
    "BalancePolicy",
    "Balancer",
    "Move",
    "Shedder",
    "apply",
    "hot_hosts",
    "imbalance",
    "movable_agents",
    "rates_and_costs",
]
