"""The four layers of an agent's state, each declared one way, as class attributes.

=============  ===========================================  ==================================
layer          declared as                                  lives in / survives
=============  ===========================================  ==================================
persistent     ``state_type = MyState`` (events + appliers)  the agent's event log; everything
local          ``seen = Local(set)``                          this activation's memory only
shared         ``stock = Shared("stock.{id}", "strong")``    the state bucket, all agents/clients
cached         ``price = Cached("price.{id}", ttl_s=5)``     a read-through copy of shared state
=============  ===========================================  ==================================

>>> class Shop(Agent[ShopState]):  # doctest: +SKIP
...     type_name = "shop"
...     state_type = ShopState                          # persistent
...     recent = Local(list)                            # local
...     stock = Shared("stock.{id}", "strong")          # shared
...     visitors = Shared("visitors", "crdt", crdt=ORSet)
...     price = Cached("price.{id}", ttl_s=5.0)         # cached
...
...     @action
...     async def sell(self) -> int:
...         self.recent.append("sold")
...         left = await self.stock.update(lambda n: (n or 0) - 1)
...         return left.value

``{id}`` and ``{type}`` in a key are the agent's own. Shared and cached layers reach the
state through ``self.ctx.client.shared()``. ``state_layers(Shop)`` lists the declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, overload

from .._core.crdt import CRDT, ORSet
from .._core.errors import JetAgentsError, Unavailable
from .options import Consistency, Read, WriteResult, validate_key
from .store import SharedState
from .versions import set_add

if TYPE_CHECKING:
    from .._core.agent import Agent

T = TypeVar("T")
Layer = Literal["persistent", "local", "shared", "cached"]


class Local(Generic[T]):
    """In-memory state of one activation: fast, lost on passivation or host restart."""

    layer: Layer = "local"

    def __init__(self, factory: Callable[[], T]) -> None:
        self.factory = factory
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Local[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> Local[T] | T:
        if obj is None:
            return self
        store: dict[str, Any] = obj.__dict__
        if self.name not in store:
            store[self.name] = self.factory()
        return store[self.name]  # type: ignore[no-any-return]

    def __set__(self, obj: object, value: T) -> None:
        obj.__dict__[self.name] = value


def _key_for(template: str, agent: Agent[Any]) -> str:
    return validate_key(template.format(id=agent.ctx.agent_id.id, type=agent.ctx.agent_id.type))


def _shared_of(agent: Agent[Any], name: str) -> SharedState:
    client = agent.ctx.client
    if client is None:
        raise JetAgentsError("this agent has no client in its context, so it cannot reach shared state")
    return client.shared(name)  # type: ignore[no-any-return]


class SharedRef:
    """Shared state bound to one key at one consistency level."""

    __slots__ = ("consistency", "crdt", "key", "state")

    def __init__(self, state: SharedState, key: str, consistency: Consistency, crdt: type[CRDT] | None) -> None:
        self.state = state
        self.key = key
        self.consistency = consistency
        self.crdt = crdt

    async def get(self) -> Read:
        if self.consistency == "strong":
            return await self.state.strong.get(self.key)
        if self.consistency == "eventual":
            return await self.state.eventual.get(self.key)
        if self.consistency == "session":
            return await self.state.session().get(self.key)
        cls = self.crdt or ORSet
        value = await self.state.crdt.value(self.key, cls)
        return Read(self.key, value, 0, "server")

    async def value(self) -> Any:
        return (await self.get()).value

    async def update(self, fn: Callable[[Any], Any]) -> WriteResult:
        """Read-modify-write at this level (``crdt``: ``fn(state, replica, now_ms)``)."""
        if self.consistency == "strong":
            return await self.state.strong.update(self.key, fn)
        if self.consistency == "eventual":
            return await self.state.eventual.update(self.key, fn)
        if self.consistency == "session":
            return await self.state.session().update(self.key, fn)
        return await self.state.crdt.update(self.key, self.crdt or ORSet, cast(Any, fn))

    async def increment(self, by: int = 1) -> WriteResult:
        if self.consistency == "crdt":
            return await self.state.crdt.increment(self.key, by)
        return await self.update(lambda v: int(v or 0) + by)

    async def add(self, member: Any) -> WriteResult:
        if self.consistency == "crdt":
            return await self.state.crdt.add(self.key, member)
        if self.consistency == "strong":
            return await self.state.strong.add(self.key, member)
        return await self.update(lambda v: set_add(v, member))


class Shared:
    """Shared state: a key template and its consistency level (``crdt`` also names the type)."""

    layer: Layer = "shared"

    def __init__(
        self,
        key: str,
        consistency: Consistency = "strong",
        *,
        crdt: type[CRDT] | None = None,
        state: str = "default",
    ) -> None:
        self.key = key
        self.consistency = consistency
        self.crdt = crdt
        self.state_name = state
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Shared: ...
    @overload
    def __get__(self, obj: Agent[Any], owner: type) -> SharedRef: ...
    def __get__(self, obj: Agent[Any] | None, owner: type) -> Shared | SharedRef:
        if obj is None:
            return self
        return SharedRef(_shared_of(obj, self.state_name), _key_for(self.key, obj), self.consistency, self.crdt)


class CachedRef:
    """A read-through copy of a shared value, kept ``ttl_s`` seconds per activation. When the
    cluster is unreachable the copy is served whatever its age (``stale=True``)."""

    __slots__ = ("_agent", "_decl", "_ref")

    def __init__(self, decl: Cached, agent: Agent[Any], ref: SharedRef) -> None:
        self._decl = decl
        self._agent = agent
        self._ref = ref

    def _slot(self) -> dict[str, Any]:
        store: dict[str, Any] = self._agent.__dict__.setdefault("__jetagents_cached__", {})
        return store

    async def get(self) -> Read:
        now = self._agent.ctx.clock.monotonic()
        held = self._slot().get(self._decl.name)
        if held is not None and now - held[0] <= self._decl.ttl_s:
            read: Read = held[1]
            return Read(read.key, read.value, read.revision, "local", staleness_s=now - held[0])
        try:
            read = await self._ref.get()
        except Unavailable:  # PartitionError included
            if held is None:
                raise
            old: Read = held[1]
            return Read(old.key, old.value, old.revision, "local", staleness_s=now - held[0], stale=True)
        self._slot()[self._decl.name] = (now, read)
        return read

    async def value(self) -> Any:
        return (await self.get()).value

    def invalidate(self) -> None:
        self._slot().pop(self._decl.name, None)


class Cached:
    """Cached state: a shared key read through a per-activation copy with a TTL."""

    layer: Layer = "cached"

    def __init__(self, key: str, *, ttl_s: float, consistency: Consistency = "strong", state: str = "default") -> None:
        self.key = key
        self.ttl_s = ttl_s
        self.consistency = consistency
        self.state_name = state
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Cached: ...
    @overload
    def __get__(self, obj: Agent[Any], owner: type) -> CachedRef: ...
    def __get__(self, obj: Agent[Any] | None, owner: type) -> Cached | CachedRef:
        if obj is None:
            return self
        ref = SharedRef(_shared_of(obj, self.state_name), _key_for(self.key, obj), self.consistency, None)
        return CachedRef(self, obj, ref)


def state_layers(agent_cls: type) -> dict[str, Layer]:
    """Which attribute of an agent class is which layer (``state`` is the persistent one).

    >>> from jetagents.examples import Counter
    >>> state_layers(Counter)
    {'state': 'persistent'}
    """
    out: dict[str, Layer] = {"state": "persistent"}
    for klass in reversed(agent_cls.__mro__):
        for name, member in vars(klass).items():
            if isinstance(member, Local | Shared | Cached):
                out[name] = member.layer
    return out
