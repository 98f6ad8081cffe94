"""Quarantine and reset commits in the catalog (ADR 0053), over the memory ports: the count
of failed activations, the record that refuses later activations, the reset commit that
replaces an unreadable log tail and that a later replay honours."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from jetagents._core.errors import AgentQuarantined, InternalError
from jetagents.testing.streams import MemoryBucket
from tests.unit.test_catalog import AID, SUBJECTS, World


async def test_the_nth_failed_activation_in_a_row_quarantines_the_agent() -> None:
    w = World(quarantine_after=3)
    quarantine = MemoryBucket()
    events: list[tuple[str, dict[str, Any]]] = []

    async def event(kind: str, data: dict[str, Any]) -> None:
        events.append((kind, data))

    w.catalog.bind_quarantine(quarantine, event)
    w.commit(AID, 1, 2)
    w.commit(AID, 3, 5)  # a gap: the log cannot be applied, however often it is tried
    for _ in range(2):
        with pytest.raises(InternalError, match="gap"):
            await w.catalog.activate(w.act(AID))
    assert await quarantine.get(AID.key) is None
    with pytest.raises(AgentQuarantined) as caught:
        await w.catalog.activate(w.act(AID))
    record = orjson.loads(await quarantine.get(AID.key) or b"")
    assert record["failures"] == 3 and record["code"] == "internal" and "gap" in record["reason"]
    assert caught.value.details == record
    assert w.metrics.stats["quarantines"] == 1
    # refused: no activation counted, no second record
    with pytest.raises(AgentQuarantined):
        await w.catalog.activate(w.act(AID))
    assert w.metrics.stats["quarantines"] == 1 and w.metrics.stats["activations"] == 0
    # one operator event, when the record is written, with the record's fields
    fields = {k: record[k] for k in ("agent", "reason", "code", "failures", "ts_ms")}
    assert events == [("agent.quarantined", fields)]
    # released: tried again, and counted from zero
    await quarantine.delete(AID.key)
    with pytest.raises(InternalError):
        await w.catalog.activate(w.act(AID))
    assert await quarantine.get(AID.key) is None


async def test_a_success_resets_the_count_and_zero_never_quarantines() -> None:
    w = World(quarantine_after=0)
    quarantine = MemoryBucket()
    w.catalog.bind_quarantine(quarantine)
    w.commit(AID, 2, 1)  # starts with a gap
    for _ in range(5):
        with pytest.raises(InternalError):
            await w.catalog.activate(w.act(AID))
    assert quarantine.keys() == []


async def test_an_unreadable_tail_is_replaced_by_a_reset_commit_that_replay_honours() -> None:
    w = World()
    w.commit(AID, 1, 2)
    good = w.commit(AID, 2, 3)
    subject = SUBJECTS.evt(AID.type, AID.id)
    bad = w.events.store(subject, b"\xff not a commit", {}).seq
    w.events.store(subject, b'{"n": 3}', {})  # parses as JSON, not as a commit: lost too
    act = w.act(AID)
    await w.catalog.activate(act)
    assert act.agent is not None and act.agent.state.value == 5 and act.n == 3
    assert w.metrics.stats["restores"] == 1
    reset = orjson.loads((await w.events.last(subject)).data)  # type: ignore[union-attr]
    assert reset["n"] == 3 and reset["action"] == "_reset"
    assert reset["reset"]["seq"] == good and reset["reset"]["unreadable_from"] == bad
    assert act.last_seq == (await w.events.last(subject)).seq  # type: ignore[union-attr]
    # later commits follow the reset; a replay skips the unreadable messages to it
    w.commit(AID, 4, 10)
    again = w.act(AID)
    await w.catalog.activate(again)
    assert again.agent is not None and again.agent.state.value == 15 and again.n == 4
    assert w.metrics.stats["restores"] == 1  # nothing to restore the second time
