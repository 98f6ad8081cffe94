"""The call-chain rules (ADR 0042 section 7) as pure functions: header parsing as hostile
input, the re-entrancy and deadlock decisions, and their agreement with a wait-for graph."""

from __future__ import annotations

import contextvars

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetagents import CallCycle, CallTooDeep, Deadlock, MalformedCommand
from jetagents._core.callchain import (
    FRAME,
    PATH_HARD_MAX,
    CallChain,
    Frame,
    Verdict,
    current_frame,
    decide,
    parse,
    refusal,
)


def test_parse_reads_a_chain_and_its_path() -> None:
    assert parse("m1", "a.x b.y", 16) == CallChain("m1", ("a.x", "b.y"))
    assert parse("m1", None, 16) == CallChain("m1", ())
    assert parse(None, None, 16) is None


@pytest.mark.parametrize(
    ("chain", "path"),
    [
        (None, "a.x"),  # a path without a chain
        ("", None),
        ("has space", None),
        ("x" * 257, None),
        ("ü", None),
        ("m", "a.x  b.y"),  # an empty key
        ("m", "a.x b"),  # no type.id
        ("m", "a.x b.y.z"),
        ("m", "a.x b.*"),
        ("m", "a.x\tb.y"),
        ("m", "a." + "x" * 129),
    ],
)
def test_parse_refuses_what_is_no_chain(chain: str | None, path: str | None) -> None:
    with pytest.raises(MalformedCommand):
        parse(chain, path, 16)


def test_parse_bounds_the_path_before_splitting_it() -> None:
    with pytest.raises(CallTooDeep) as info:
        parse("m", " ".join(f"a.x{i}" for i in range(5)), 4)
    assert info.value.details["max"] == 4 and len(info.value.details["path"]) == 5
    with pytest.raises(CallTooDeep):
        parse("m", "a.x " * 100_000, 16)  # refused on its length alone
    with pytest.raises(CallTooDeep):  # the setting cannot lift the hard bound
        parse("m", " ".join(f"a.x{i}" for i in range(PATH_HARD_MAX + 1)), 10_000)


def test_outgoing_headers_name_the_path_and_stop_at_the_limit() -> None:
    f = Frame("root", ("a.x",), "b.y", path_max=3)
    assert f.outgoing("c.z") == {"Agt-Call-Chain": "root", "Agt-Call-Path": "a.x b.y"}
    assert f.outgoing("c.z", waits=False) == {"Agt-Call-Chain": "root"}  # nobody waits on a send
    deep = Frame("root", ("a.1", "a.2", "a.3"), "b.y", path_max=3)
    with pytest.raises(CallTooDeep):
        deep.outgoing("c.z")


def test_waiting_counts_concurrent_calls_to_the_same_agent() -> None:
    f = Frame("r", (), "a.x")
    f.wait("b.y")
    f.wait("b.y")
    f.done("b.y")
    assert f.waiting == {"b.y": 1}
    f.done("b.y")
    f.done("b.y")  # one too many is harmless
    assert f.waiting == {}


def test_decisions() -> None:
    a = Frame("m1", (), "p.a")
    a.wait("p.b")
    # back along its own chain: at once, or call_cycle when not re-entrant
    assert decide(CallChain("m1", ("p.a", "p.b")), "p.a", [a]) == (Verdict.REENTER, None)
    assert decide(CallChain("m1", ("p.a", "p.b")), "p.a", [a], reentrant=False) == (Verdict.CYCLE, None)
    # another chain through the agent it waits on: deadlock
    assert decide(CallChain("m2", ("p.b",)), "p.a", [a]) == (Verdict.DEADLOCK, "p.b")
    # a forged path naming the agent, under another chain and through nobody it waits on: queued
    assert decide(CallChain("m9", ("p.a", "p.q")), "p.a", [a]) == (Verdict.QUEUE, None)
    # not waiting: everything queues
    idle = Frame("m1", (), "p.a")
    assert decide(CallChain("m1", ("p.a", "p.b")), "p.a", [idle]) == (Verdict.QUEUE, None)
    assert decide(None, "p.a", [a]) == (Verdict.QUEUE, None)
    assert decide(CallChain("m2", ()), "p.a", [a]) == (Verdict.QUEUE, None)  # a send: nobody waits


def test_refusals_are_typed_not_retryable_and_name_the_path() -> None:
    chain = CallChain("m2", ("p.b",))
    err = refusal(Verdict.DEADLOCK, chain, "p.a", "p.b")
    assert isinstance(err, Deadlock) and not err.retryable and err.code == "deadlock"
    assert err.details == {"chain": "m2", "path": ["p.b", "p.a"], "waiting_on": "p.b"}
    cyc = refusal(Verdict.CYCLE, chain, "p.a", None)
    assert isinstance(cyc, CallCycle) and cyc.code == "call_cycle" and not cyc.retryable


# -- the decision against a wait-for graph -------------------------------------------------
# Agents 0..n-1, each running one action of its own chain (chain i) that waits on at most one
# agent. A call of chain c arrives at agent x from the agents in ``path`` (each waiting on the
# next, the last one on x). Queueing it makes x's action wait on... nothing new: the call
# waits on x's running action, so the wait-for graph gains the edges path[-1] -> x (already
# there) and the call completes only if x's action does. A deadlock is a cycle through x.

agents = st.integers(min_value=0, max_value=5)


@settings(max_examples=400, deadline=None)
@given(
    waits=st.lists(st.one_of(st.none(), agents), min_size=6, max_size=6),
    path=st.lists(agents, min_size=1, max_size=5, unique=True),
    x=agents,
)
def test_deadlock_means_a_cycle_in_the_wait_for_graph(waits: list[int | None], path: list[int], x: int) -> None:
    # a genuine path: each agent on it waits on the next, the last on x, all under chain c
    if x in path:
        return  # re-entrancy, tested above
    frames = []
    for i, target in enumerate(waits):
        if i in path:
            nxt = path[path.index(i) + 1] if path.index(i) + 1 < len(path) else x
            target = nxt
            waits[i] = nxt
        f = Frame(f"chain{i}", (), f"p.{i}")
        if target is not None:
            f.wait(f"p.{target}")
        frames.append(f)
    incoming = CallChain("c", tuple(f"p.{i}" for i in path))
    verdict, waited = decide(incoming, f"p.{x}", [frames[x]])
    # x's running action, if it waits, waits on waits[x]; the call sits behind it: a cycle
    # exactly when x waits on an agent of the path (which waits, along it, on this call)
    cycle = waits[x] is not None and waits[x] in path
    assert (verdict is Verdict.DEADLOCK) == cycle
    if cycle:
        assert waited == f"p.{waits[x]}"


def test_a_frame_is_listed_on_its_owner_only_while_it_waits() -> None:
    class Owner:
        frames: list[Frame] | None = None

    owner = Owner()
    f = Frame("r", (), "a.x", owner=owner)
    assert owner.frames is None  # a command that calls nobody costs no list
    f.wait("b.y")
    f.wait("c.z")
    assert owner.frames == [f]
    f.done("b.y")
    assert owner.frames == [f]
    f.done("c.z")
    assert owner.frames is None


def test_a_frame_without_a_chain_id_is_named_once_when_first_asked() -> None:
    names = iter(["h~1", "h~2"])
    f = Frame("", (), "a.x", name=lambda: next(names))
    assert f.chain == "h~1" and f.chain == "h~1"  # named once, kept
    assert f.outgoing("b.y") == {"Agt-Call-Chain": "h~1", "Agt-Call-Path": "a.x"}
    unasked = Frame("", (), "a.x", name=lambda: next(names))
    assert next(names) == "h~2"  # a frame nobody asks costs no name
    assert unasked._chain == ""


def test_a_frame_with_a_chain_id_never_asks_for_a_name() -> None:
    def never() -> str:
        raise AssertionError("named although it had a chain id")

    f = Frame("cmd-1", (), "a.x", name=never)
    assert f.chain == "cmd-1"
    assert f.outgoing("b.y", waits=False) == {"Agt-Call-Chain": "cmd-1"}


def test_an_actions_frame_is_made_once_when_first_asked_for_and_shared_by_its_tasks() -> None:
    made: list[Frame] = []

    def make(chain: str, me: str) -> Frame:
        made.append(Frame(chain, (), me))
        return made[-1]

    assert current_frame() is None
    token = FRAME.set([None, make, "m1", "a.x"])
    try:
        assert made == []  # nothing made until a call asks
        in_a_task = contextvars.copy_context().run(current_frame)  # a task the action started
        assert in_a_task is not None and in_a_task.chain == "m1" and in_a_task.me == "a.x"
        assert current_frame() is in_a_task
        assert made == [in_a_task]
    finally:
        FRAME.reset(token)
    assert current_frame() is None
