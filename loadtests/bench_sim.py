"""Steps per second of the deterministic simulation running the real host.

    python loadtests/bench_sim.py [--seeds 4] [--rounds 300]

A step is one coordinator round, one delivery, one send or one fault, each followed by the
invariant checks (``jetagents.testing.simulation``). Prints steps, seconds and steps/s per
seed and the median; the baseline in the same run is the bare in-memory event stream's
appends per second (what the memory ports cost without the host), so the ratio says how much
of a step is the host's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from jetagents._obs.logging import configure_logging
from jetagents.testing import HostNode, ManualClock, SimConfig, Simulation
from jetagents.testing.streams import MemoryEventStream


async def baseline_appends_per_s(n: int = 20_000) -> float:
    stream = MemoryEventStream(ManualClock())
    t0 = time.perf_counter()
    for i in range(n):
        stream.store(f"agt.evt.t.a{i % 64}", b"{}", {})
    return n / (time.perf_counter() - t0)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--rounds", type=int, default=300)
    args = p.parse_args()
    configure_logging("console", "CRITICAL")
    rates = []
    for seed in range(100, 100 + args.seeds):
        t0 = time.perf_counter()
        result = await Simulation(seed, HostNode, SimConfig(rounds=args.rounds, quiet_rounds=60)).run()
        spent = time.perf_counter() - t0
        rates.append(result.steps / spent)
        print(f"seed {seed}: {result.steps} steps in {spent:.2f} s = {rates[-1]:.0f} steps/s")
    base = await baseline_appends_per_s()
    med = statistics.median(rates)
    print(f"median {med:.0f} steps/s; bare memory appends {base:.0f}/s; ratio {med / base:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
