"""The pure side of event-log tails and projections (ADR 0057): commits parsed and their events
upcast by the agent classes a reader knows (raw otherwise), filters, and the projection view."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from jetagents import InvalidParams, LogCommit, LogEvent, Projection, ProjectionView, on
from jetagents._core.ids import AgentId
from jetagents._core.logtail import Decoders, log_filter, parse_commit
from jetagents._core.upcast import IncompatibleSchema
from tests.golden.shop import ItemAdded, Shop


def _body(events: list[dict[str, Any]], n: int = 1) -> bytes:
    return orjson.dumps({"n": n, "cmd": f"m{n}", "action": "add", "events": events, "result": None})


def test_events_of_a_known_class_are_upcast_and_others_stay_raw() -> None:
    old = {"type": "ItemAdded", "data": {"item": "apple", "qty": 2}}  # version 1: "item"
    c = parse_commit(7, "agt.evt.shop.s1", _body([old]), Decoders([Shop]), "agt.evt")
    assert c is not None and (c.seq, c.agent, c.n) == (7, AgentId("shop", "s1"), 1)
    assert c.events[0].data == ItemAdded(sku="apple", qty=2)
    raw = parse_commit(8, "agt.evt.shop.s1", _body([old]), Decoders(), "agt.evt")
    assert raw is not None and raw.events[0].data == {"item": "apple", "qty": 2}
    added = _body([{"type": "Added", "data": {"x": 1}}])
    other = parse_commit(9, "agt.evt.cart.c1", added, Decoders([Shop]), "agt.evt")
    assert other is not None and other.events[0].data == {"x": 1}


def test_an_event_newer_than_the_code_is_an_error_not_a_guess() -> None:
    newer = {"type": "ItemAdded", "data": {"sku": "a", "qty": 1}, "v": 3}
    with pytest.raises(IncompatibleSchema):
        parse_commit(1, "agt.evt.shop.s1", _body([newer]), Decoders([Shop]), "agt.evt")


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("agt.evt.shop.s1", b"not json"),
        ("agt.evt.shop.s1", b"[1, 2]"),
        ("agt.evt.shop.s1", b'{"n": 1}'),
        ("agt.other.shop.s1", _body([])),
        ("agt.evt.shop", _body([])),
    ],
)
def test_what_is_not_a_commit_is_skipped(subject: str, body: bytes) -> None:
    assert parse_commit(1, subject, body, Decoders([Shop]), "agt.evt") is None


def test_filters() -> None:
    assert log_filter("agt.evt", None, None) == "agt.evt.*.*"
    assert log_filter("agt.evt", "counter", None) == "agt.evt.counter.*"
    assert log_filter("agt.evt", "counter", "c1") == "agt.evt.counter.c1"
    for bad in (("counter", "a.b"), ("co*", None), (None, "c1")):
        with pytest.raises((InvalidParams, ValueError)):
            log_filter("agt.evt", *bad)


class _Count(Projection):
    name = "count"

    @on("shop", "ItemAdded")
    async def added(self, view: ProjectionView, commit: LogCommit, event: LogEvent) -> None:
        view.put(commit.agent.id, (await view.get(commit.agent.id, 0)) + 1)


def test_a_projection_knows_its_handlers_and_types() -> None:
    p = _Count()
    assert _Count.agent_types() == frozenset({"shop"})
    assert p.handler("shop", "ItemAdded") is not None and p.handler("shop", "Other") is None
    with pytest.raises(TypeError):
        on("shop", "X")(lambda self, v, c, e: None)  # a handler must be async


async def test_the_view_reads_its_writes_then_its_cache_then_the_store() -> None:
    loads: list[str] = []

    async def load(key: str) -> Any:
        loads.append(key)
        return {"a": 1}.get(key)

    view = ProjectionView(load, max_cached=2)
    assert await view.get("a") == 1 and await view.get("b", "none") == "none"
    assert await view.get("a") == 1 and loads == ["a", "b"]  # cached, a missing row too
    view.put("a", 5)
    view.delete("b")
    assert await view.get("a") == 5 and await view.get("b", "gone") == "gone"
    assert set(view.written()) == {"a", "b"} and view.dirty == {}
    assert await view.get("a") == 5 and loads == ["a", "b"]
    with pytest.raises(InvalidParams):
        view.put("bad key", 1)
