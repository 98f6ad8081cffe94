"""Replay cost with and without schema evolution (ADR 0052), in one process.

    python loadtests/bench_replay.py [--commits 20000] [--rounds 7]

Rebuilds an agent from ``--commits`` commits of one event each with ``jetagents._core.replay``
(the host's appliers, what activation and time travel run) in three cases: ``counter``
(events at version 1, no upcaster declared: the common case), ``shop-current`` (events
written at the current version 2: the version check only), ``shop-upcast`` (a log written at
version 1, migrated by the upcaster on every event). Cases alternate in a new random order
every round; the figure is the median over the rounds of microseconds per event, with the
ratio to ``counter``. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.golden.shop import Shop

from jetagents._core.agent import spec_of
from jetagents._core.ids import AgentId
from jetagents._core.replay import rebuild
from jetagents.examples import Counter


def _log(events: list[dict[str, object]]) -> list[tuple[int, bytes]]:
    return [
        (i + 1, orjson.dumps({"n": i + 1, "cmd": f"c{i}", "action": "x", "events": [e], "result": None}))
        for i, e in enumerate(events)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    n = args.commits
    skus = [f"s{i % 50}" for i in range(n)]
    cases = {
        "counter": (spec_of(Counter), _log([{"type": "Incremented", "data": {"by": 1}} for _ in range(n)])),
        "shop-current": (
            spec_of(Shop),
            _log([{"type": "ItemAdded", "data": {"sku": s, "qty": 1}, "v": 2} for s in skus]),
        ),
        "shop-upcast": (spec_of(Shop), _log([{"type": "ItemAdded", "data": {"item": s, "qty": 1}} for s in skus])),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    rng = random.Random(52)
    for _ in range(args.rounds):
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            spec, log = cases[name]
            t0 = time.perf_counter()
            rebuild(spec, AgentId(spec.type_name, "bench"), log)
            times[name].append((time.perf_counter() - t0) / n * 1e6)
    base = statistics.median(times["counter"])
    print(f"replay of {n} commits, median of {args.rounds} rounds (us per event)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<14} {med:7.2f} us   x{med / base:.2f} of counter")


if __name__ == "__main__":
    main()
