"""Placement decisions per second (pure, ADR 0060) and balancer intervals per second (ADR 0044).

Prints figures and ratios against a baseline measured in the same run: a plain rendezvous
choice (highest hash, no capacity check, no bound). Run::

    .venv/bin/python loadtests/bench_placement.py [--hosts 3 10 100] [--n 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from jetagents._core.balance import BalancePolicy, Balancer, rates_and_costs
from jetagents._core.resources import HostView, choose_host
from jetagents._core.ring import compute_ring


def _plain(key: str, hosts: list[str]) -> str:
    return max(hosts, key=lambda h: hashlib.blake2b(f"{h}/{key}".encode(), digest_size=8).digest())


def _rate(n: int, fn: object, repeats: int = 3) -> float:
    """Calls per second, the best of ``repeats`` runs (the machine is shared: the best run is
    the least disturbed)."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)  # type: ignore[operator]
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _row(n_hosts: int, n: int, rnd: random.Random) -> tuple[float, float, float]:
    names = [f"h{i}" for i in range(n_hosts)]
    views = {
        h: HostView({"cpu": 16, "gpu": 4}, {"cpu": rnd.uniform(0, 12)}, rnd.randrange(100), rnd.random()) for h in names
    }
    keys = [f"t.a{i}" for i in range(n)]
    plain = _rate(n, lambda i: _plain(keys[i], names))
    bounded = _rate(n, lambda i: choose_host(keys[i], {"cpu": 0.5}, views))
    owners = compute_ring(256, dict.fromkeys(names, 1.0))
    members = {h: {"rates": {str(p): rnd.random() for p, o in enumerate(owners) if o == h}} for h in names}
    # one host far hotter than the rest: every interval looks for a move
    scores = {h: (0.9 if h == names[0] else 0.2 + 0.1 * rnd.random()) for h in names}
    rates, cost = rates_and_costs(owners, members, scores)
    b = Balancer(BalancePolicy(persist=1, cooldown=0))
    plans = _rate(50, lambda i: b.plan(owners, scores, rates, cost))
    return plain, bounded, plans


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, nargs="+", default=[3, 10, 100])
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    rnd = random.Random(7)
    print(f"{'hosts':>6} {'plain/s':>10} {'choose_host/s':>14} {'ratio':>6} {'plan/s (256 p)':>15}")
    for n_hosts in args.hosts:
        plain, bounded, plans = _row(n_hosts, args.n, rnd)
        print(f"{n_hosts:>6} {plain:>10.0f} {bounded:>14.0f} {bounded / plain:>6.2f} {plans:>15.0f}")


if __name__ == "__main__":
    main()
