"""``jetagents.testing.schedules.MemorySchedules``: the server's schedules in memory, on the
ManualClock, as the simulation uses them (the facts it models are pinned against nats-server
by ``tests/integration/test_server_features.py``)."""

from __future__ import annotations

import pytest

from jetagents._core.errors import Unavailable
from jetagents._core.schedules import pattern_of
from jetagents.testing import ManualClock
from jetagents.testing.schedules import MemorySchedules


class Fired:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, target: str, body: bytes, headers: dict[str, str]) -> None:
        self.got.append((target, body, headers))


async def test_at_fires_once_then_is_gone() -> None:
    clock, fired = ManualClock(), Fired()
    sch = MemorySchedules(clock, fired)
    at_ms = clock.wall_ms() + 2_000
    await sch.schedule_at("agt.rem.t.a._w1", at_ms, "agt.cmd.t.a", b"{}", headers={"Agt-Reminder": "x"})
    clock.advance(1.0)
    assert sch.fire_due() == 0
    clock.advance(1.5)
    assert sch.fire_due() == 1 and sch.fire_due() == 0
    assert fired.got == [
        (
            "agt.cmd.t.a",
            b"{}",
            {"Agt-Reminder": "x", "Nats-Scheduler": "agt.rem.t.a._w1", "Nats-Schedule-Next": "purge"},
        )
    ]
    assert await sch.get("agt.rem.t.a._w1") is None


async def test_every_fires_each_interval_merges_missed_ones_and_is_replaced_or_cancelled() -> None:
    clock, fired = ManualClock(), Fired()
    sch = MemorySchedules(clock, fired)
    await sch.schedule("agt.rem.t.a.tick", pattern_of(every=1), "agt.cmd.t.a", b"v1")
    for _ in range(3):
        clock.advance(1.0)
        sch.fire_due()
    assert [b for _, b, _ in fired.got] == [b"v1"] * 3
    nexts = [h["Nats-Schedule-Next"] for _, _, h in fired.got]
    assert len(set(nexts)) == 3 and all(n.endswith("Z") for n in nexts)
    clock.advance(10.0)  # nothing fired meanwhile (a server outage): one firing, not ten
    assert sch.fire_due() == 1
    await sch.schedule("agt.rem.t.a.tick", pattern_of(every=1), "agt.cmd.t.a", b"v2")  # replaces
    clock.advance(1.0)
    sch.fire_due()
    assert fired.got[-1][1] == b"v2" and [s.body for s in await sch.list("agt.rem.t.a.*")] == [b"v2"]
    await sch.cancel("agt.rem.t.a.tick")
    clock.advance(5.0)
    assert sch.fire_due() == 0 and await sch.list("agt.rem.>") == []


async def test_a_message_id_deduplicates_the_publish_and_cron_is_not_modelled() -> None:
    clock, fired = ManualClock(), Fired()
    sch = MemorySchedules(clock, fired)
    first = await sch.schedule("agt.rem.t.a.r", pattern_of(every=5), "agt.cmd.t.a", b"", msg_id="m#1")
    again = await sch.schedule("agt.rem.t.a.r", pattern_of(every=1), "agt.cmd.t.a", b"", msg_id="m#1")
    assert again.duplicate and again.seq == first.seq
    assert (await sch.get("agt.rem.t.a.r")) is not None
    assert (await sch.get("agt.rem.t.a.r")).pattern == "@every 5s"  # type: ignore[union-attr]
    with pytest.raises(Unavailable):
        await sch.schedule("agt.rem.t.a.c", pattern_of(cron="* * * * *"), "agt.cmd.t.a", b"")
