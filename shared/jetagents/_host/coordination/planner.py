"""The leader's next ring: the ring by capacity (``_core/ring.py``), moved towards a bounded
number of partitions at a time, then, when nothing is in transit, adjusted by measured load
(``_core/balance.py``, ADR 0044) every ``balance_interval_s``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from ..._core.balance import Balancer, Move, apply, imbalance, rates_and_costs
from ..._core.membership import capacity_weights
from ..._core.resources import load_score
from ..._core.ring import UNOWNED, compute_ring, step_towards

if TYPE_CHECKING:
    from .coordinator import ClusterConfig

log = structlog.get_logger("jetagents.cluster")


class RingPlanner:
    """Owned by a coordinator; only its leader rounds call ``next_ring``."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        self.balancer = Balancer(cfg.balance) if cfg.balance is not None and cfg.balance_interval_s > 0 else None
        self._next_s = 0.0
        self.last_moves: list[Move] = []
        self.last_scores: dict[str, float] = {}

    def next_ring(
        self, current: list[str], members: Mapping[str, Mapping[str, Any]], alive: set[str], moving: int, now: float
    ) -> list[str]:
        cfg = self.cfg
        weights = capacity_weights(members)
        target = compute_ring(cfg.partitions, weights, previous=current, load_factor=cfg.load_factor)
        nxt = step_towards(current, target, alive, max_moves=cfg.max_moves, in_transit=moving)
        self.last_moves = []
        if self.balancer is None:
            return nxt
        live = {h: w for h, w in weights.items() if w > 0}
        if nxt != current or moving or len(live) < 2 or any(o == UNOWNED or o not in live for o in current):
            # Not settled (booting, a host joining, leaving or gone, a handoff under way):
            # measurements taken now describe a ring that is about to change. The streaks
            # start again and the first decision waits a whole interval after the ring
            # settles, so no move comes before ``persist`` intervals of a settled cluster.
            self.balancer.streak.clear()
            self._next_s = now + cfg.balance_interval_s
            return nxt
        if now < self._next_s:
            return nxt
        self._next_s = now + cfg.balance_interval_s
        scores = {h: load_score(members[h], cfg.load_weights) for h in live}
        movable_weights = {k: w for k, w in cfg.load_weights.items() if k != "memory"}
        movable = {h: load_score(_commands_only(members[h]), movable_weights) for h in live}
        rates, cost = rates_and_costs(current, members, movable)
        moves = self.balancer.plan(current, scores, rates, cost, weights=live, load_factor=cfg.load_factor)
        self.last_scores = scores
        if moves:
            self.last_moves = moves
            log.info(
                "rebalance",
                moves=[(m.partition, m.source, m.target) for m in moves],
                scores=scores,
                imbalance=round(imbalance(scores), 3),
            )
        return apply(current, moves)


def _commands_only(member: Mapping[str, Any]) -> dict[str, Any]:
    """A member's load with the CPU it uses without commands taken out: what its partitions
    cost, the part a move takes along."""
    load = member.get("load")
    if not isinstance(load, Mapping):
        return {}
    cpu, base = load.get("cpu", 0.0), load.get("cpu_base", 0.0)
    if isinstance(cpu, int | float) and isinstance(base, int | float):
        return {"load": {**load, "cpu": max(0.0, float(cpu) - float(base))}}
    return {"load": load}
