"""The agent model: specs, parameter validation, emit/draft/commit, replay, registry.

No ``from __future__ import annotations`` here on purpose: agent classes defined inside
test functions must have real (not string) annotations so their hints resolve.
"""

import sys
import types
from collections.abc import Coroutine
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from jetagents import Agent, AgentContext, AgentId, DomainError, Event, ManualClock, Registry, action, applies
from jetagents._core.agent import AgentSpec, spec_of
from jetagents._core.errors import InternalError, InvalidParams, UnknownAction
from jetagents._core.upcast import encode_events
from jetagents._core.wire import Commit, WireEvent
from jetagents.examples import EXAMPLE_AGENTS, Account, AccountState, Counter, CounterState
from jetagents.examples.account import Deposited, Withdrawn
from jetagents.examples.counter import Incremented


# -- helpers ------------------------------------------------------------------------------
def make(cls: type[Agent[Any]], agent_id: str = "x1", state: BaseModel | None = None) -> Any:
    ctx = AgentContext(AgentId(cls.type_name, agent_id), ManualClock())
    return cls(ctx, state)


async def run_action(agent: Agent[Any], name: str, **params: Any) -> tuple[Any, list[Event]]:
    """What the host does with one command: validate, begin, run, finish, commit."""
    spec = spec_of(type(agent)).action(name)
    kwargs = spec.validate_params(params)
    agent._begin()
    try:
        result = await spec.fn(agent, **kwargs)
    except BaseException:
        agent._finish()
        raise
    events, draft = agent._finish()
    agent._commit(draft)
    return result, events


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (the example actions await nothing)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the action suspended")


# -- agents used by several tests ---------------------------------------------------------
class BagState(BaseModel):
    items: list[str] = Field(default_factory=list)
    meta: dict[str, int] = Field(default_factory=dict)


class Added(Event):
    item: str


class Renamed(Event):
    event_type = "bag_renamed_v1"
    old: str
    new: str


class Reset(Event):
    pass


class Unhandled(Event):
    x: int = 0


class Bag(Agent[BagState]):
    type_name = "bag"
    state_type = BagState

    @action
    async def add_two(self, a: str, b: str) -> list[str]:
        seen = []
        self.emit(Added(item=a))
        seen.append(list(self.state.items))
        self.emit(Added(item=b))
        seen.append(list(self.state.items))
        return seen  # type: ignore[return-value]

    @action
    async def add_then_refuse(self, a: str) -> None:
        self.emit(Added(item=a))
        raise DomainError("refused", "changed my mind", details={"item": a})

    @action
    async def add_then_crash(self, a: str) -> None:
        self.emit(Added(item=a))
        raise ValueError("bug")

    @action
    async def rename(self, old: str, new: str) -> None:
        self.emit(Renamed(old=old, new=new))

    @action
    async def reset(self) -> int:
        self.emit(Reset())
        return len(self.state.items)

    @action
    async def emit_unhandled(self) -> None:
        self.emit(Unhandled())

    @action(read_only=True)
    async def count(self, *, prefix: str = "") -> int:
        return sum(1 for i in self.state.items if i.startswith(prefix))

    @applies
    def _added(self, state: BagState, event: Added) -> None:
        state.items.append(event.item)
        state.meta[event.item] = state.meta.get(event.item, 0) + 1

    @applies
    def _renamed(self, state: BagState, event: Renamed) -> None:
        state.items = [event.new if i == event.old else i for i in state.items]

    @applies
    def _reset(self, state: BagState, event: Reset) -> BagState:
        return BagState()  # appliers may return a new state instead of mutating


# -- the example specs --------------------------------------------------------------------
def test_counter_spec() -> None:
    spec = spec_of(Counter)
    assert isinstance(spec, AgentSpec)
    assert spec.type_name == "counter"
    assert spec.cls is Counter
    assert spec.state_type is CounterState
    assert spec.spawn_required is False
    assert set(spec.actions) == {"increment", "get"}
    assert set(spec.appliers) == {"Incremented"}
    assert spec.appliers["Incremented"].event_cls is Incremented
    assert spec.actions["increment"].read_only is False
    assert spec.actions["get"].read_only is True
    assert spec.actions["increment"].param_names == ("by",)
    assert spec.actions["get"].param_names == ()


def test_account_spec() -> None:
    spec = spec_of(Account)
    assert spec.type_name == "account"
    assert spec.state_type is AccountState
    assert set(spec.actions) == {"deposit", "withdraw", "balance"}
    assert set(spec.appliers) == {"Deposited", "Withdrawn"}
    assert spec.appliers["Deposited"].event_cls is Deposited
    assert spec.appliers["Withdrawn"].event_cls is Withdrawn
    assert {n: a.read_only for n, a in spec.actions.items()} == {
        "deposit": False,
        "withdraw": False,
        "balance": True,
    }
    assert spec.actions["deposit"].param_names == ("amount",)
    assert spec.actions["withdraw"].param_names == ("amount",)


def test_example_agents_list() -> None:
    assert [Counter, Account] == EXAMPLE_AGENTS
    assert Registry(EXAMPLE_AGENTS).types() == ["account", "counter"]


def test_unknown_action() -> None:
    with pytest.raises(UnknownAction) as info:
        spec_of(Counter).action("decrement")
    assert info.value.details == {"actions": ["get", "increment"]}
    assert "decrement" in info.value.message


def test_event_type_names() -> None:
    assert Incremented.event_type == "Incremented"
    assert Renamed.event_type == "bag_renamed_v1"
    assert set(spec_of(Bag).appliers) == {"Added", "bag_renamed_v1", "Reset"}

    class Sub(Added):
        pass

    assert Sub.event_type == "Sub"  # a subclass gets its own name, not its parent's
    assert Added.event_type == "Added"


def test_events_are_frozen_and_strict() -> None:
    e = Incremented(by=1)
    with pytest.raises(Exception):  # noqa: B017 - pydantic frozen-instance error
        e.by = 2  # type: ignore[misc]
    with pytest.raises(Exception):  # noqa: B017 - pydantic extra-forbidden error
        Incremented(by=1, extra=2)  # type: ignore[call-arg]
    assert "event_type" not in e.model_dump()


# -- parameter validation -----------------------------------------------------------------
def test_validate_params_defaults() -> None:
    assert spec_of(Counter).action("increment").validate_params({}) == {"by": 1}
    assert spec_of(Counter).action("get").validate_params({}) == {}
    assert spec_of(Bag).action("count").validate_params({}) == {"prefix": ""}


def test_validate_params_valid() -> None:
    assert spec_of(Counter).action("increment").validate_params({"by": -7}) == {"by": -7}
    assert spec_of(Account).action("deposit").validate_params({"amount": 10**15}) == {"amount": 10**15}
    assert spec_of(Bag).action("add_two").validate_params({"a": "x", "b": "y"}) == {"a": "x", "b": "y"}


@pytest.mark.parametrize(
    ("cls", "name", "params", "bad_loc"),
    [
        (Counter, "increment", {"by": "many"}, ["by"]),
        (Counter, "increment", {"by": 1.5}, ["by"]),
        (Counter, "increment", {"by": 1_000_000_001}, ["by"]),
        (Counter, "increment", {"by": -1_000_000_001}, ["by"]),
        (Counter, "increment", {"by": 1, "extra": 1}, ["extra"]),
        (Counter, "get", {"x": 1}, ["x"]),
        (Account, "deposit", {"amount": 0}, ["amount"]),
        (Account, "deposit", {"amount": -5}, ["amount"]),
        (Account, "deposit", {}, ["amount"]),
        (Account, "deposit", {"amount": 10**15 + 1}, ["amount"]),
        (Account, "withdraw", {"amount": 0}, ["amount"]),
        (Account, "withdraw", {"amount": None}, ["amount"]),
        (Bag, "add_two", {"a": "x"}, ["b"]),
        (Bag, "count", {"prefix": 3}, ["prefix"]),
    ],
)
def test_validate_params_errors(cls: type[Agent[Any]], name: str, params: dict[str, Any], bad_loc: list[str]) -> None:
    with pytest.raises(InvalidParams) as info:
        spec_of(cls).action(name).validate_params(params)
    err = info.value
    assert err.code == "invalid_params"
    assert name in err.message
    assert isinstance(err.details, list) and err.details
    assert bad_loc in [d["loc"] for d in err.details]
    orjson.dumps(err.to_wire())  # the details travel on the wire


@pytest.mark.parametrize("by", [10**25, -(10**30), 2**64])
def test_integers_past_64_bits_are_invalid_params(by: int) -> None:
    # valid JSON and a valid Python int, but no commit could hold it (orjson writes 64 bits)
    with pytest.raises(InvalidParams):
        spec_of(Counter).action("increment").validate_params({"by": by})


def test_account_amount_must_be_positive_message() -> None:
    with pytest.raises(InvalidParams) as info:
        spec_of(Account).action("deposit").validate_params({"amount": 0})
    assert "greater than 0" in info.value.details[0]["msg"]


def test_dump_result() -> None:
    assert spec_of(Counter).action("increment").dump_result(3) == 3
    assert spec_of(Bag).action("add_two").dump_result(["a"]) == ["a"]
    assert spec_of(Bag).action("rename").dump_result(None) is None


# -- running actions ----------------------------------------------------------------------
async def test_emit_applies_to_draft_and_commit_publishes_it() -> None:
    agent = make(Counter)
    committed = agent.state
    spec = spec_of(Counter).action("increment")

    agent._begin()
    result = await spec.fn(agent, **spec.validate_params({"by": 5}))
    assert result == 5  # the action saw its own event applied
    assert agent.state.value == 5  # still the draft while the command runs
    events, draft = agent._finish()

    assert events == [Incremented(by=5)]
    assert draft is not None and draft.value == 5
    assert agent.state is committed  # untouched until _commit
    assert agent.state.value == 0
    agent._commit(draft)
    assert agent.state is draft
    assert agent.state.value == 5
    assert committed.value == 0  # the old state object was never mutated


async def test_draft_is_a_deep_copy() -> None:
    agent = make(Bag)
    before = agent.state
    agent._begin()
    seen = await spec_of(Bag).action("add_two").fn(agent, a="x", b="y")
    assert seen == [["x"], ["x", "y"]]  # each emit is visible at once
    assert before.items == []  # nested containers were copied, not shared
    assert before.meta == {}
    events, draft = agent._finish()
    assert [type(e) for e in events] == [Added, Added]
    assert draft is not None and draft.items == ["x", "y"]
    assert agent.state.items == []
    agent._commit(draft)
    assert agent.state.items == ["x", "y"]
    assert agent.state.meta == {"x": 1, "y": 1}


async def test_successive_commands() -> None:
    agent = make(Counter)
    assert (await run_action(agent, "increment", by=2))[0] == 2
    assert (await run_action(agent, "increment", by=-5))[0] == -3
    assert (await run_action(agent, "get"))[0] == -3
    assert agent.state.value == -3


async def test_read_only_action_emits_nothing() -> None:
    agent = make(Account, state=AccountState(balance=42))
    before = agent.state
    result, events = await run_action(agent, "balance")
    assert result == 42
    assert events == []
    assert agent.state is before


async def test_commit_none_keeps_state() -> None:
    agent = make(Counter, state=CounterState(value=9))
    before = agent.state
    agent._begin()
    events, draft = agent._finish()
    assert (events, draft) == ([], None)
    agent._commit(None)
    assert agent.state is before


async def test_domain_error_leaves_state_unchanged() -> None:
    agent = make(Account)
    await run_action(agent, "deposit", amount=5)
    before = agent.state.model_copy(deep=True)
    with pytest.raises(DomainError) as info:
        await run_action(agent, "withdraw", amount=10)
    assert info.value.reason == "insufficient_funds"
    assert info.value.details == {"balance": 5, "requested": 10}
    assert agent.state == before
    assert agent._pending is None and agent._draft is None


async def test_counter_zero_increment_is_a_domain_error() -> None:
    agent = make(Counter, state=CounterState(value=3))
    with pytest.raises(DomainError) as info:
        await run_action(agent, "increment", by=0)
    assert info.value.reason == "zero_increment"
    assert agent.state.value == 3


@pytest.mark.parametrize(("name", "exc"), [("add_then_refuse", DomainError), ("add_then_crash", ValueError)])
async def test_events_emitted_before_a_failure_are_discarded(name: str, exc: type[Exception]) -> None:
    agent = make(Bag, state=BagState(items=["a"]))
    agent._begin()
    with pytest.raises(exc):
        await spec_of(Bag).action(name).fn(agent, a="b")
    assert agent.state.items == ["a", "b"]  # the draft, while the command is still open
    events, _draft = agent._finish()  # the runtime discards both
    assert [type(e) for e in events] == [Added]
    assert agent.state.items == ["a"]
    assert agent.state.meta == {}
    # the next command starts from the committed state
    _, events = await run_action(agent, "add_two", a="c", b="d")
    assert agent.state.items == ["a", "c", "d"]
    assert len(events) == 2


async def test_applier_returning_new_state() -> None:
    agent = make(Bag, state=BagState(items=["a", "b"]))
    result, events = await run_action(agent, "reset")
    assert result == 0
    assert events == [Reset()]
    assert agent.state == BagState()


def test_emit_outside_an_action_raises() -> None:
    agent = make(Counter)
    with pytest.raises(RuntimeError, match="while an action runs"):
        agent.emit(Incremented(by=1))
    agent._begin()
    agent._finish()
    with pytest.raises(RuntimeError):
        agent.emit(Incremented(by=1))
    assert agent.state.value == 0


async def test_emit_without_applier_raises_type_error() -> None:
    agent = make(Bag)
    agent._begin()
    with pytest.raises(TypeError, match="no @applies for Unhandled"):
        await spec_of(Bag).action("emit_unhandled").fn(agent)
    assert agent._finish() == ([], None)
    # an event of another agent type is refused the same way
    agent._begin()
    with pytest.raises(TypeError):
        agent.emit(Incremented(by=1))
    agent._finish()


def test_emit_of_a_same_named_foreign_event_class_raises() -> None:
    class Added(Event):  # same event_type as Bag's, but not Bag's class
        item: str

    agent = make(Bag)
    agent._begin()
    with pytest.raises(TypeError):
        agent.emit(Added(item="x"))
    agent._finish()


def test_agent_id_and_default_state() -> None:
    agent = make(Counter, "c9")
    assert agent.id == AgentId("counter", "c9")
    assert agent.state == CounterState()
    other = make(Counter, "c10")
    assert other.state is not agent.state  # each agent gets its own default state


# -- replay -------------------------------------------------------------------------------
async def test_replay_rebuilds_identical_state() -> None:
    live = make(Bag)
    log: list[list[WireEvent]] = []
    for name, params in [
        ("add_two", {"a": "x", "b": "y"}),
        ("rename", {"old": "x", "new": "z"}),
        ("add_two", {"a": "x", "b": "x"}),
    ]:
        _, events = await run_action(live, name, **params)
        log.append(encode_events(events))

    assert [w.type for w in log[1]] == ["bag_renamed_v1"]
    assert log[1][0].data == {"old": "x", "new": "z"}

    replayed = make(Bag)
    for events in log:
        replayed._replay(events)
    assert replayed.state == live.state
    assert replayed.state.items == ["z", "y", "x", "x"]

    at_once = make(Bag)
    at_once._replay([w for events in log for w in events])
    assert at_once.state == live.state


async def test_replay_from_a_snapshot() -> None:
    live = make(Account, state=AccountState(balance=100))
    _, e1 = await run_action(live, "withdraw", amount=30)
    _, e2 = await run_action(live, "deposit", amount=5)
    replayed = make(Account, state=AccountState(balance=100))
    replayed._replay(encode_events(e1 + e2))
    assert replayed.state.balance == live.state.balance == 75


def test_replay_of_an_empty_log_keeps_state() -> None:
    agent = make(Counter, state=CounterState(value=4))
    agent._replay([])
    assert agent.state.value == 4


def test_replay_unknown_event_type_raises_internal_error() -> None:
    agent = make(Counter)
    with pytest.raises(InternalError) as info:
        agent._replay([WireEvent(type="Decremented", data={"by": 1})])
    assert "Decremented" in info.value.message
    assert info.value.code == "internal"


def test_replay_of_another_agents_event_raises_internal_error() -> None:
    agent = make(Counter)
    with pytest.raises(InternalError):
        agent._replay(encode_events([Deposited(amount=1)]))


def test_encode_events() -> None:
    wire = encode_events([Incremented(by=2), Renamed(old="a", new="b"), Reset()])
    assert [w.model_dump() for w in wire] == [
        {"type": "Incremented", "data": {"by": 2}},
        {"type": "bag_renamed_v1", "data": {"old": "a", "new": "b"}},
        {"type": "Reset", "data": {}},
    ]


ops = st.lists(
    st.tuples(st.sampled_from(["deposit", "withdraw", "balance"]), st.integers(min_value=1, max_value=1000)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_account_replay_is_deterministic(sequence: list[tuple[str, int]]) -> None:
    live = make(Account)
    expected = 0
    log: list[bytes] = []  # commits as they would be stored in the event stream
    for n, (name, amount) in enumerate(sequence, start=1):
        params = {} if name == "balance" else {"amount": amount}
        try:
            result, events = drive(run_action(live, name, **params))
        except DomainError as err:
            assert name == "withdraw" and amount > expected
            assert err.reason == "insufficient_funds"
            continue
        if name == "deposit":
            expected += amount
        elif name == "withdraw":
            expected -= amount
        assert result == expected
        if events:
            commit = Commit(n=n, cmd=f"cmd-{n}", action=name, events=encode_events(events), result=result)
            log.append(commit.model_dump_json().encode())
    assert live.state.balance == expected >= 0

    replayed = make(Account)
    for raw in log:
        replayed._replay(Commit.model_validate_json(raw).events)
    assert replayed.state == live.state
    assert replayed.state.model_dump() == {"balance": expected}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=-1_000_000_000, max_value=1_000_000_000), max_size=30))
def test_counter_replay_is_deterministic(increments: list[int]) -> None:
    live = make(Counter)
    wire: list[WireEvent] = []
    for by in increments:
        try:
            _, events = drive(run_action(live, "increment", by=by))
        except DomainError:
            assert by == 0
            continue
        wire.extend(encode_events(events))
    assert live.state.value == sum(increments)
    replayed = make(Counter)
    replayed._replay(wire)
    assert replayed.state == live.state


# -- class-definition errors --------------------------------------------------------------
def test_action_must_be_async() -> None:
    with pytest.raises(TypeError, match="async def"):

        class Bad(Agent[CounterState]):
            type_name = "bad_sync"
            state_type = CounterState

            @action
            def get(self) -> int:  # type: ignore[type-var]
                return 0

    with pytest.raises(TypeError, match="async def"):

        @action(read_only=True)
        def also_bad(self: Any) -> int:  # type: ignore[type-var]
            return 0


def test_applier_needs_an_event_annotation() -> None:
    with pytest.raises(TypeError, match="Event subclass"):

        class Bad(Agent[CounterState]):
            type_name = "bad_applier"
            state_type = CounterState

            @applies
            def _x(self, state, event):  # type: ignore[no-untyped-def]
                pass


def test_applier_annotated_with_a_plain_model_is_rejected() -> None:
    with pytest.raises(TypeError, match="Event subclass"):

        class Bad(Agent[CounterState]):
            type_name = "bad_applier2"
            state_type = CounterState

            @applies
            def _x(self, state: CounterState, event: CounterState) -> None:
                pass


def test_applier_must_take_three_parameters() -> None:
    with pytest.raises(TypeError, match=r"\(self, state, event\)"):

        class Bad(Agent[CounterState]):
            type_name = "bad_applier3"
            state_type = CounterState

            @applies
            def _x(self, event: Incremented) -> None:  # type: ignore[type-var]
                pass


def test_state_type_is_required() -> None:
    with pytest.raises(TypeError, match="state_type"):

        class Bad(Agent[Any]):
            type_name = "bad_state"


@pytest.mark.parametrize("state_type", [dict, int, "CounterState", None, CounterState()])
def test_state_type_must_be_a_pydantic_model(state_type: Any) -> None:
    with pytest.raises(TypeError, match="state_type"):
        types.new_class(
            "Bad",
            (Agent,),
            exec_body=lambda ns: ns.update({"type_name": "bad_state2", "state_type": state_type}),
        )


def test_variadic_action_parameters_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"\*args"):

        class BadArgs(Agent[CounterState]):
            type_name = "bad_args"
            state_type = CounterState

            @action
            async def a(self, *args: int) -> None:
                pass

    with pytest.raises(TypeError, match=r"\*\*kwargs"):

        class BadKwargs(Agent[CounterState]):
            type_name = "bad_kwargs"
            state_type = CounterState

            @action
            async def a(self, **kwargs: int) -> None:
                pass


@pytest.mark.parametrize("type_name", ["bad.type", "bad type", "a*", ">"])
def test_type_name_must_be_a_token(type_name: str) -> None:
    with pytest.raises(ValueError):
        types.new_class(
            "Bad",
            (Agent,),
            exec_body=lambda ns: ns.update({"type_name": type_name, "state_type": CounterState}),
        )


def test_inherited_actions_and_appliers() -> None:
    class Base(Agent[CounterState]):  # no type_name: an abstract base, no spec of its own
        state_type = CounterState

        @action
        async def bump(self) -> int:
            self.emit(Incremented(by=1))
            return self.state.value

        @applies
        def _inc(self, state: CounterState, event: Incremented) -> None:
            state.value += event.by

    class Concrete(Base):
        type_name = "concrete"

        @action(read_only=True)
        async def get(self) -> int:
            return self.state.value

    assert "__jetagents_spec__" not in vars(Base)
    spec = spec_of(Concrete)
    assert set(spec.actions) == {"bump", "get"}
    assert set(spec.appliers) == {"Incremented"}
    agent = make(Concrete)
    assert drive(run_action(agent, "bump"))[0] == 1
    with pytest.raises(TypeError):
        spec_of(Base)


def test_subclass_of_an_agent_from_another_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Extending an example agent from user code, where the example's annotation names
    (``CounterState``, ``Incremented``) are not in scope, must build a working spec."""
    mod = types.ModuleType("jetagents_unit_user_agents")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    exec(
        "from jetagents.examples import Counter\nclass LabelledCounter(Counter):\n    type_name = 'labelled_counter'\n",
        mod.__dict__,
    )
    cls = mod.LabelledCounter
    spec = spec_of(cls)
    assert spec.cls is cls
    assert set(spec.actions) == {"increment", "get"}
    assert set(spec.appliers) == {"Incremented"}
    agent = make(cls)
    assert drive(run_action(agent, "increment", by=4))[0] == 4


# -- registry -----------------------------------------------------------------------------
def test_registry_basics() -> None:
    reg = Registry([Counter, Account])
    assert reg.types() == ["account", "counter"]
    assert "counter" in reg
    assert "nope" not in reg
    assert 5 not in reg
    assert reg.get("counter") is spec_of(Counter)
    assert reg.get("nope") is None
    reg.register(Counter)  # the same class again is fine
    assert reg.types() == ["account", "counter"]
    assert Registry().types() == []
    assert Registry(None).types() == []


def test_registry_rejects_non_agent_classes() -> None:
    class Plain:
        pass

    class Abstract(Agent[CounterState]):
        state_type = CounterState

    class SubWithoutTypeName(Counter):  # inherits Counter's spec, which is not its own
        pass

    for cls in (Plain, Abstract, SubWithoutTypeName, CounterState):
        with pytest.raises(TypeError, match="not an agent class"):
            Registry([cls])  # type: ignore[list-item]


def test_registry_rejects_duplicate_type_names() -> None:
    class OtherCounter(Agent[CounterState]):
        type_name = "counter"
        state_type = CounterState

    reg = Registry([Counter])
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(OtherCounter)
    assert reg.get("counter") is spec_of(Counter)
    with pytest.raises(ValueError):
        Registry([OtherCounter, Counter])
