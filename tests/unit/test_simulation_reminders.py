"""Reminders in the deterministic simulation (ADR 0042 section 5): the server's schedules in
memory (``testing/schedules.py``) fire ``@every`` reminders into the command stream while the
real hosts crash, pause, lose acknowledgements and hand partitions over. The invariants hold
after every step (a firing acknowledged is in its agent's log; no command id twice), and at
the end every stored firing has exactly one ``fire`` commit: none lost, none doubled. A firing
that arrives while its agent's action is suspended is parked, and its run's ``end`` closes it."""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest

from jetagents.testing.simhost import HostNode
from jetagents.testing.simulation import SimConfig, Simulation

CONFIG = SimConfig(rounds=240, quiet_rounds=80, reminders=6, reminder_every_s=1)


@pytest.mark.parametrize("seed", range(4))
async def test_reminders_fire_once_each_through_faults(seed: int) -> None:
    sim = Simulation(seed, HostNode, CONFIG)
    result = await sim.run()
    fires = [orjson.loads(m.data) for m in sim.world.events.messages if b'"k":"fire"' in m.data]
    assert len(fires) == sim.fired >= CONFIG.reminders * 40  # 60 s of faults, one firing per second each
    assert len({(f["cmd"]) for f in fires}) == len(fires)
    assert sum(result.faults.values()) > 0


async def test_a_firing_parked_behind_a_suspended_action_closes_once_by_its_runs_end() -> None:
    """Reminders and suspended actions together: a firing the agent takes while its ``hold``
    waits for a signal is parked (ADR 0042 section 4) and closed by its run's ``end``, not
    by a ``fire`` commit (the end check once counted only those: seed 105 failed so)."""
    sim = Simulation(105, HostNode, SimConfig(rounds=300, quiet_rounds=240, hold_p=0.3, reminders=3))
    await sim.run()
    kinds: dict[str, list[str]] = defaultdict(list)
    for m in sim.world.events.messages:
        c = orjson.loads(m.data)
        if c["cmd"] in sim.firings:
            kinds[c["cmd"]].append((c.get("j") or {}).get("k"))
    assert set(kinds) == set(sim.firings) and len(kinds) == sim.fired > 0
    shapes = {tuple(k) for k in kinds.values()}
    assert shapes == {("fire",), ("park", "end")}, shapes  # both ways, each closed once
