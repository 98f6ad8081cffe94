"""How users write agents: a typed state, typed actions, events applied by pure code.

>>> from pydantic import BaseModel
>>> class CounterState(BaseModel):
...     value: int = 0
>>> class Incremented(Event):
...     by: int
>>> class Counter(Agent[CounterState]):
...     type_name = "counter"
...     state_type = CounterState
...
...     @action
...     async def increment(self, by: int = 1) -> int:
...         self.emit(Incremented(by=by))
...         return self.state.value
...
...     @applies
...     def _incremented(self, state: CounterState, event: Incremented) -> None:
...         state.value += event.by

Actions may await anything (other agents, I/O); appliers must be deterministic: no clock,
randomness or I/O, because they run again, unchanged, whenever the agent is rebuilt from
its log. Put such values into the event instead (``self.ctx.clock`` is injected).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, overload

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import to_jsonable_python

from .autostep import enter_run
from .errors import InternalError, InvalidParams, UnknownAction
from .health import HealthPolicy
from .ids import AgentId, validate_token
from .schedules import NO_REMINDERS, Reminding
from .stepping import Stepping, _check_timeout
from .upcast import Upcaster, read_event, upcasters_of
from .wire import WireEvent, validation_details

if TYPE_CHECKING:
    from .clock import Clock

S = TypeVar("S", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class Event(BaseModel):
    """Base of every event. ``event_type`` (default: the class name) is its wire name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event_type: ClassVar[str] = ""
    event_version: ClassVar[int] = 1  # the schema's version, with an @upcaster from the last (ADR 0052)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("event_type"):
            cls.event_type = cls.__name__


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    fn: Callable[..., Awaitable[Any]]
    params_model: type[BaseModel]
    param_names: tuple[str, ...]
    result_adapter: TypeAdapter[Any] | None
    read_only: bool
    strict: bool = True
    timeout_s: float | None = None  # @action(timeout_s=...); None: the type's, else the host's
    reentrant: bool | None = None  # @action(reentrant=...); None: the type's Agent.reentrant
    while_suspended: str | None = None  # @action(while_suspended=...); None: the type's (ADR 0042 §4)

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters received over the wire, validated as JSON: strictly by default
        (``"3"`` is no ``int``, ``true`` no ``int``; an ISO string is still a ``datetime``,
        a JSON array a ``tuple``), leniently for ``@action(strict=False)``."""
        if not params and not self.param_names:
            return {}  # an action without parameters, called without any (get, ...)
        try:
            # also what the commit will hold: a number orjson cannot write (an integer past
            # 64 bits) is refused here, not after the action ran
            raw = orjson.dumps(params)
        except orjson.JSONEncodeError as exc:
            raise InvalidParams(
                f"invalid parameters for action {self.name!r}: {exc}", details=[{"loc": [], "msg": str(exc)}]
            ) from None
        try:
            if self.strict:  # the model's validator itself: its wrapper only checks arguments not passed
                model = self.params_model.__pydantic_validator__.validate_json(raw, strict=True)
            else:
                model = self.params_model.model_validate(params)
        except ValidationError as exc:
            raise InvalidParams(
                f"invalid parameters for action {self.name!r}", details=validation_details(exc)
            ) from None
        return {name: getattr(model, name) for name in self.param_names}

    def dump_result(self, result: Any) -> Any:
        if self.result_adapter is not None:  # its serializer itself: dump_python only passes defaults on
            return self.result_adapter.serializer.to_python(result, mode="json")
        return to_jsonable_python(result)


@dataclass(frozen=True, slots=True)
class ApplierSpec:
    event_cls: type[Event]
    fn: Callable[[Any, Any, Any], Any]


@dataclass(slots=True)
class AgentSpec:
    """Everything the runtime needs to know about one agent class, computed once."""

    type_name: str
    cls: type[Agent[Any]]
    state_type: type[BaseModel]
    actions: dict[str, ActionSpec] = field(default_factory=dict)
    appliers: dict[str, ApplierSpec] = field(default_factory=dict)
    spawn_required: bool = False
    action_timeout_s: float | None = None  # Agent.action_timeout_s; None: the host's default
    upcasters: dict[tuple[str, int], Upcaster] = field(default_factory=dict)
    reentrant: bool = True  # Agent.reentrant (ADR 0042 section 7)
    while_suspended: str = "enqueue"  # Agent.while_suspended (ADR 0042 §4)

    def while_suspended_of(self, action: str) -> str:
        """The policy of a suspended ``action``: its own, else its type's."""
        spec = self.actions.get(action)
        return (spec.while_suspended if spec is not None else None) or self.while_suspended

    def action(self, name: str) -> ActionSpec:
        spec = self.actions.get(name)
        if spec is None:
            raise UnknownAction(
                f"agent type {self.type_name!r} has no action {name!r}",
                details={"actions": sorted(self.actions)},
            )
        return spec


WHILE_SUSPENDED = ("enqueue", "reject", "interrupt")


@overload
def action(fn: F, /) -> F: ...
@overload
def action(
    *,
    read_only: bool = False,
    strict: bool | None = None,
    timeout_s: float | None = None,
    reentrant: bool | None = None,
    while_suspended: str | None = None,
) -> Callable[[F], F]: ...
def action(
    fn: F | None = None,
    /,
    *,
    read_only: bool = False,
    strict: bool | None = None,
    timeout_s: float | None = None,
    reentrant: bool | None = None,
    while_suspended: str | None = None,
) -> F | Callable[[F], F]:
    """Mark an ``async def`` method as an action callable by clients.

    ``read_only=True`` documents (and enforces) that the action emits no event.
    ``strict=False`` lets pydantic coerce its parameters (``"3"`` to ``3``); the default
    is the agent class's ``strict_params`` (True: the wire contract is strict).
    ``timeout_s`` limits one run of it (default: the type's ``action_timeout_s``, else the
    host's ``action_timeout_s``); past it the action is cancelled and nothing it emitted is kept.
    ``reentrant`` says whether a call of this action that comes back along its own call chain
    (A -> B -> A) runs at once, alongside the action waiting for it (default: the class's
    ``reentrant``); ``False`` refuses it with ``call_cycle`` (ADR 0042 section 7).
    ``while_suspended`` (``enqueue``, ``reject``, ``interrupt``): what the agent's other
    write commands do while this action is suspended (default: the type's, ADR 0042 §4).
    """
    _check_timeout(timeout_s, "timeout_s")
    _check_policy(while_suspended)

    def mark(f: F) -> F:
        if not inspect.iscoroutinefunction(cast(Any, f)):
            raise TypeError(f"action {f.__qualname__} must be declared with 'async def'")
        f.__jetagents_action__ = {  # type: ignore[attr-defined]
            "read_only": read_only,
            "strict": strict,
            "timeout_s": timeout_s,
            "reentrant": reentrant,
            "while_suspended": while_suspended,
        }
        return f

    if fn is not None:
        return mark(fn)
    return mark


def _check_policy(value: str | None) -> None:
    if value is not None and value not in WHILE_SUSPENDED:
        raise TypeError(f"while_suspended must be one of {WHILE_SUSPENDED}, not {value!r}")


def applies(fn: Callable[[Any, Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """Mark ``def name(self, state, event: SomeEvent)`` as the applier of ``SomeEvent``.

    It mutates ``state`` in place (or returns a new state). It must be deterministic.
    """
    fn.__jetagents_applies__ = True  # type: ignore[attr-defined]
    return fn


@dataclass(slots=True)
class AgentContext:
    """What the runtime hands an agent: its address, a clock and the current command."""

    agent_id: AgentId
    clock: Clock
    client: Any = None
    command_id: str = ""
    correlation_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    action: str = ""  # the running action's name
    # the host's journal for this agent (ADR 0042): ``await steps.step(agent, i, name, fn,
    # args, kwargs)``; None outside a host (an action called directly runs steps plainly)
    steps: Any = None
    # the running command's output (``_host/outbox.py``) when its caller streams it, else None
    out: Any = None
    # the running command's parameters (as received) and reply subject, for its journal
    command: Any = None
    reminders: Any = NO_REMINDERS  # the host's reminders of this agent (ADR 0042 §5)


_IMMUTABLE = (int, float, str, bool, bytes, type(None))


def _draft_of(state: S) -> S:
    """A copy the action's events may change without touching ``state`` (all or none).

    A state made only of immutable scalars needs no deep copy (the common case, and a
    deep copy costs more than the rest of the command's bookkeeping).
    """
    if all(type(v) in _IMMUTABLE for v in state.__dict__.values()):
        return state.model_copy()
    return state.model_copy(deep=True)


class Agent(Reminding, Stepping, Generic[S]):
    """Base class of agents. Subclasses set ``type_name`` and ``state_type``."""

    type_name: ClassVar[str] = ""
    state_type: ClassVar[type[BaseModel]]
    spawn_required: ClassVar[bool] = False
    # parameters received over the wire are validated strictly (no "3" for an int); an
    # action may opt out with @action(strict=False), a whole class with strict_params = False
    strict_params: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset()  # tags a host must offer, else placed elsewhere (ADR 0008)
    resources: ClassVar[dict[str, float]] = {}  # what one agent reserves, {"cpu": 0.5, "gpu": 1} (ADR 0060)
    health: ClassVar[HealthPolicy | None] = None  # CPU and memory limits (HostSettings.health wins; ADR 0059)
    # one action run's time limit (None: HostSettings.action_timeout_s); @action(timeout_s=...) wins
    action_timeout_s: ClassVar[float | None] = None
    state_version: ClassVar[int] = 1  # with @upcaster(STATE, ...); retention: keep_snapshots = N (ADR 0052)
    # a call back along its own chain (A -> B -> A) runs at once; False: call_cycle (ADR 0042 §7)
    reentrant: ClassVar[bool] = True
    # what this type's other write commands do while one of its actions is suspended on a
    # wait (ADR 0042 §4): "enqueue" (parked, run after it), "reject" (agent_suspended) or
    # "interrupt" (the suspended action is cancelled); read-only actions always run
    while_suspended: ClassVar[str] = "enqueue"
    __jetagents_spec__: ClassVar[AgentSpec]

    __slots__ = ("_cursor", "_draft", "_pending", "_state", "ctx")

    def __init__(self, ctx: AgentContext, state: S | None = None) -> None:
        self.ctx = ctx
        self._state: S = state if state is not None else cast(S, type(self).initial_state())
        self._draft: S | None = None
        self._pending: list[Event] | None = None
        self._cursor = 0  # the next step's position in this run (ADR 0042)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("type_name"):
            cls.__jetagents_spec__ = _build_spec(cls)

    @classmethod
    def initial_state(cls) -> BaseModel:  # a new agent's state; override it for required fields
        return cls.state_type()

    # -- what actions use ----------------------------------------------------------------
    @property
    def state(self) -> S:
        """The state as the current action sees it (including events it emitted)."""
        return self._draft if self._draft is not None else self._state

    @property
    def id(self) -> AgentId:
        return self.ctx.agent_id

    def emit(self, event: Event) -> None:
        """Record ``event``; it is applied to ``self.state`` at once and persisted with
        the other events of this command, all or none, before the caller gets a reply."""
        if self._pending is None:
            raise RuntimeError("emit() may only be called while an action runs")
        spec = type(self).__jetagents_spec__
        applier = spec.appliers.get(type(event).event_type)
        if applier is None or not isinstance(event, applier.event_cls):
            raise TypeError(f"{type(self).__name__} has no @applies for {type(event).__name__}")
        if self._draft is None:
            self._draft = _draft_of(self._state)
        self._draft = _apply(applier, self, self._draft, event)
        self._pending.append(event)

    # -- what the runtime uses -----------------------------------------------------------
    def _begin(self) -> None:
        self._draft = None
        self._pending = []
        self._cursor = 0
        enter_run(self, self._pending)  # its plain calls and shared writes become steps (ADR 0042 §12)

    def _advance(self) -> int:
        """The next step's position in this run (taken: the cursor moves on)."""
        i = self._cursor
        self._cursor = i + 1
        return i

    def _finish(self) -> tuple[list[Event], S | None]:
        pending, draft = self._pending or [], self._draft
        self._pending = None
        self._draft = None
        return pending, draft

    def _commit(self, draft: S | None) -> None:
        if draft is not None:
            self._state = draft

    def _replay(self, events: list[WireEvent]) -> None:
        spec = type(self).__jetagents_spec__
        state = self._state
        for wire in events:
            applier = spec.appliers.get(wire.type)
            if applier is None:
                raise InternalError(
                    f"event log of {self.ctx.agent_id} holds event type {wire.type!r} (version {wire.v or 1}) "
                    f"that {type(self).__name__} cannot apply"
                )
            event = read_event(applier.event_cls, wire, spec.upcasters, self.ctx.agent_id)  # ADR 0052
            state = _apply(applier, self, state, event)
        self._state = state


def _apply(applier: ApplierSpec, agent: Agent[Any], state: Any, event: Event) -> Any:
    out = applier.fn(agent, state, event)
    return out if isinstance(out, BaseModel) else state


def _build_spec(cls: type[Agent[Any]]) -> AgentSpec:
    validate_token(cls.type_name, "agent type")
    state_type = getattr(cls, "state_type", None)
    if not (isinstance(state_type, type) and issubclass(state_type, BaseModel)):
        raise TypeError(f"{cls.__name__}.state_type must be a pydantic BaseModel subclass")
    spec = AgentSpec(
        type_name=cls.type_name,
        cls=cls,
        state_type=state_type,
        spawn_required=cls.spawn_required,
        action_timeout_s=cls.action_timeout_s,
        reentrant=cls.reentrant,
        while_suspended=cls.while_suspended,
    )
    spec.upcasters = upcasters_of(cls)  # ADR 0052
    _check_timeout(cls.action_timeout_s, f"{cls.__name__}.action_timeout_s")
    _check_policy(cls.while_suspended)
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            marker = getattr(member, "__jetagents_action__", None)
            if marker is not None:
                strict = marker.get("strict")
                strict = cls.strict_params if strict is None else strict
                spec.actions[name] = _action_spec(
                    cls,
                    name,
                    member,
                    marker["read_only"],
                    strict,
                    marker.get("timeout_s"),
                    while_suspended=marker.get("while_suspended"),
                    reentrant=marker.get("reentrant"),
                )
            elif getattr(member, "__jetagents_applies__", False):
                event_cls = _applier_event(cls, member)
                spec.appliers[event_cls.event_type] = ApplierSpec(event_cls, member)
    return spec


def _action_spec(
    cls: type,
    name: str,
    fn: Callable[..., Any],
    read_only: bool,
    strict: bool = True,
    timeout_s: float | None = None,
    reentrant: bool | None = None,
    while_suspended: str | None = None,
) -> ActionSpec:
    # the method's own module: an inherited action resolves names where it was written
    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    fields: dict[str, Any] = {}
    names: list[str] = []
    for pname, param in list(sig.parameters.items())[1:]:
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(f"action {cls.__name__}.{name}: *args/**kwargs are not supported")
        annotation = hints.get(pname, Any)
        default = ... if param.default is param.empty else param.default
        fields[pname] = (annotation, default)
        names.append(pname)
    params_model = create_model(
        f"{cls.__name__}_{name}_params",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    ret = hints.get("return")
    adapter = TypeAdapter(ret) if ret is not None else None
    return ActionSpec(
        name,
        fn,
        params_model,
        tuple(names),
        adapter,
        read_only,
        strict,
        timeout_s,
        reentrant=reentrant,
        while_suspended=while_suspended,
    )


def _applier_event(cls: type, fn: Callable[..., Any]) -> type[Event]:
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 3:
        raise TypeError(f"@applies {fn.__qualname__} must take (self, state, event)")
    event_cls = hints.get(params[2])
    if not (isinstance(event_cls, type) and issubclass(event_cls, Event)):
        raise TypeError(f"@applies {fn.__qualname__}: annotate the event parameter with an Event subclass")
    return event_cls


class Registry:
    """The agent types a host may activate, by ``type_name``.

    >>> from jetagents.examples import Counter
    >>> Registry([Counter]).get("counter").type_name
    'counter'
    """

    def __init__(self, agent_classes: list[type[Agent[Any]]] | None = None) -> None:
        self._specs: dict[str, AgentSpec] = {}
        for cls in agent_classes or []:
            self.register(cls)

    def register(self, cls: type[Agent[Any]]) -> None:
        spec = getattr(cls, "__jetagents_spec__", None)
        if spec is None or spec.cls is not cls:
            raise TypeError(f"{cls.__name__} is not an agent class (set type_name and state_type)")
        if spec.type_name in self._specs and self._specs[spec.type_name].cls is not cls:
            raise ValueError(f"agent type {spec.type_name!r} registered twice")
        self._specs[spec.type_name] = spec

    def get(self, type_name: str) -> AgentSpec | None:
        return self._specs.get(type_name)

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._specs

    def types(self) -> list[str]:
        return sorted(self._specs)


def spec_of(cls: type[Agent[Any]]) -> AgentSpec:
    spec = getattr(cls, "__jetagents_spec__", None)
    if spec is None:
        raise TypeError(f"{cls.__name__} is not an agent class")
    return cast(AgentSpec, spec)
