"""Golden histories (ADR 0052): logs recorded by older code (``tests/golden/*.jsonl``, written
by ``python -m tests.golden.record``) replayed against today's code. A change that cannot
read them fails here, in CI, not on a production agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from jetagents._core.agent import Agent, Event, action, applies, spec_of
from jetagents._core.ids import AgentId
from jetagents._core.replay import rebuild
from jetagents._core.upcast import IncompatibleSchema, state_from
from jetagents.examples import Account, Counter
from jetagents.examples.support import Billing, Followup, Tech, Triage
from tests.golden.shop import Shop, ShopState, ShopWithoutUpcasters

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _golden(name: str) -> tuple[dict[str, Any], list[tuple[int, bytes]]]:
    header, *lines = [orjson.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_bytes().splitlines()]
    return header, [(int(x["seq"]), x["commit"].encode()) for x in lines]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("counter", Counter),
        ("account", Account),
        # the support desk: chat state (pydantic-ai messages), journaled model and tool steps,
        # calls between its agents
        ("support_triage", Triage),
        ("support_tech", Tech),
        ("support_billing", Billing),
        ("support_followup", Followup),
    ],
)
def test_the_example_agents_replay_their_golden_logs(name: str, cls: type[Agent[Any]]) -> None:
    header, log = _golden(name)
    aid = AgentId.parse(header["agent"])
    rebuilt = rebuild(spec_of(cls), aid, log)
    assert rebuilt.state.model_dump(mode="json") == header["final_state"]
    assert (rebuilt.n, rebuilt.seq) == (len(log), log[-1][0])
    # the snapshot of that day loads as the same state
    snap = header["snapshot"]
    assert state_from(spec_of(cls), aid, snap["state"], snap.get("sv", 1)).model_dump() == header["final_state"]


def test_a_renamed_field_and_a_new_required_state_field_replay_through_upcasters() -> None:
    header, log = _golden("shop")
    assert b'"item"' in log[0][1]  # written by the old code: the field had its old name
    aid = AgentId.parse(header["agent"])
    spec = spec_of(Shop)
    expected = {**header["final_state"], "currency": "EUR"}
    assert rebuild(spec, aid, log).state.model_dump() == expected
    # replay from the old snapshot (no "sv": version 1) plus nothing after it
    snap = header["snapshot"]
    state = state_from(spec, aid, snap["state"], snap.get("sv", 1))
    assert state.model_dump() == expected
    # and from the old snapshot of an earlier point plus the rest of the log
    half = rebuild(spec_of(Shop), aid, log[:2]).state
    assert rebuild(spec, aid, log[2:], state=half, n=2).state.model_dump() == expected


def test_without_the_upcaster_replay_fails_naming_the_event_and_version() -> None:
    header, log = _golden("shop")
    aid = AgentId.parse(header["agent"])
    with pytest.raises(IncompatibleSchema, match=r"event 'ItemAdded' version 1 .* no upcaster to version 2"):
        rebuild(spec_of(ShopWithoutUpcasters), aid, log)
    with pytest.raises(IncompatibleSchema, match=r"the state version 1 .* no upcaster"):
        state_from(spec_of(ShopWithoutUpcasters), aid, header["snapshot"]["state"], 1)


class _Changed(Event):
    event_type = "ItemAdded"
    sku: str  # the field renamed, the version NOT raised
    qty: int


class _CarelessShop(Agent[Any]):
    type_name = "careless"
    state_type = ShopState

    @classmethod
    def initial_state(cls) -> Any:
        return ShopState(currency="EUR")

    @action
    async def noop(self) -> None:
        return None

    @applies
    def _added(self, state: Any, event: _Changed) -> None:
        state.items[event.sku] = event.qty


def test_a_schema_changed_without_a_new_version_fails_naming_the_event_and_version() -> None:
    _, log = _golden("shop")
    with pytest.raises(IncompatibleSchema, match=r"event 'ItemAdded' version 1 .* declare version 2"):
        rebuild(spec_of(_CarelessShop), AgentId("careless", "x"), log)


def test_a_log_newer_than_the_code_is_refused() -> None:
    body = orjson.dumps(
        {"n": 1, "cmd": "x", "action": "add", "events": [{"type": "ItemAdded", "data": {}, "v": 3}], "result": None}
    )
    with pytest.raises(IncompatibleSchema, match=r"version 3 .* newer than this code \(version 2\)"):
        rebuild(spec_of(Shop), AgentId("shop", "x"), [(1, body)])


def test_events_past_version_1_carry_it_and_version_1_stays_unmarked() -> None:
    from jetagents._core.upcast import wire_events
    from tests.golden.shop import ItemAdded

    assert wire_events([ItemAdded(sku="a", qty=1)]) == [{"type": "ItemAdded", "data": {"sku": "a", "qty": 1}, "v": 2}]
    from jetagents.examples.counter import Incremented

    assert wire_events([Incremented(by=1)]) == [{"type": "Incremented", "data": {"by": 1}}]
