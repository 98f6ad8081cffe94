"""Steps per second of the deterministic simulation (``jetagents.testing.simulation``) with
the real host (``testing.simhost.HostNode``), over a range of seeds; the tree it runs from is
the one measured, so run it from two checkouts back to back to compare them.

    python loadtests/sim_speed.py --seeds 200:240

Every run must pass its invariants (a violation stops the script with the replay line)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import structlog

from jetagents.testing import HostNode, SimConfig, Simulation


async def main(first: int, last: int, hold_p: float, reminders: int) -> None:
    steps = 0
    t0 = time.perf_counter()
    for seed in range(first, last):
        cfg = SimConfig(rounds=300, quiet_rounds=240, hold_p=hold_p if seed % 2 else 0.0, reminders=reminders)
        steps += (await Simulation(seed, HostNode, cfg).run()).steps
    dt = time.perf_counter() - t0
    print(f"{last - first} seeds: {steps:,} steps in {dt:.1f} s = {steps / dt:,.0f} steps/s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="200:240", help="first:last (last excluded)")
    p.add_argument("--hold-p", type=float, default=0.3, help="suspending commands, on odd seeds")
    p.add_argument("--reminders", type=int, default=0)
    a = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    lo, hi = (int(x) for x in a.seeds.split(":"))
    asyncio.run(main(lo, hi, a.hold_p, a.reminders))
