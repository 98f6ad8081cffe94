"""Reminders in the deterministic simulation (ADR 0042 section 5): the server's schedules in
memory (``testing/schedules.py``) fire ``@every`` reminders into the command stream while the
real hosts crash, pause, lose acknowledgements and hand partitions over. The invariants hold
after every step (a firing acknowledged is in its agent's log; no command id twice), and at
the end every stored firing has exactly one ``fire`` commit: none lost, none doubled."""

from __future__ import annotations

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
