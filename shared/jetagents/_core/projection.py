"""Projections (ADR 0057): read models built from agents' events.

A projection declares handlers per (agent type, event type) with ``@on``; each handler
reads and writes rows of its read model through a ``ProjectionView`` (``await view.get(key)``,
``view.put(key, value)``, ``view.delete(key)``). The runner (``jetagents._client.projection``)
feeds it the commits of the subscribed types in stream order and writes the rows it changed
together with its position, so a crash neither skips nor applies an event twice.

>>> class Totals(Projection):  # doctest: +SKIP
...     name = "totals"
...     @on("counter", "Incremented")
...     async def incremented(self, view: ProjectionView, commit: LogCommit, event: LogEvent) -> None:
...         row = await view.get(commit.agent.id, {"total": 0, "events": 0})
...         view.put(commit.agent.id, {"total": row["total"] + event.data["by"], "events": row["events"] + 1})

Pure: the view's reads go through the loader it is given.
"""

from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python

from .agent import Agent
from .errors import InvalidParams
from .ids import validate_token
from .logtail import LogCommit, LogEvent

__all__ = ["DELETED", "Position", "Projection", "ProjectionView", "on", "validate_row_key"]

H = TypeVar("H", bound=Callable[..., Any])
Handler = Callable[["ProjectionView", LogCommit, LogEvent], Awaitable[None]]  # a bound @on method

_ROW_KEY = re.compile(r"[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*")
MAX_ROW_KEY = 200
DELETED: Any = object()  # a row deleted since the last write of the view


def validate_row_key(key: str) -> str:
    """A read model's row key: dot-separated tokens of ``[A-Za-z0-9_=-]`` (a KV key)."""
    if not isinstance(key, str) or len(key) > MAX_ROW_KEY or not _ROW_KEY.fullmatch(key):
        raise InvalidParams(f"invalid row key {key!r}: dot-separated tokens of [A-Za-z0-9_=-], {MAX_ROW_KEY} at most")
    return key


def on(agent_type: str, event_type: str) -> Callable[[H], H]:
    """Mark an ``async def handler(self, view, commit, event)`` of a :class:`Projection` as
    the handler of ``event_type`` events of ``agent_type`` agents."""
    validate_token(agent_type, "agent type")

    def mark(fn: H) -> H:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@on handler {fn.__name__} must be an async def")
        fn.__jetagents_on__ = (agent_type, event_type)  # type: ignore[attr-defined]
        return fn

    return mark


class Projection:
    """Base class of a read model; see the module docstring. ``name`` (a token) names its
    position and rows in the projections bucket; ``agents`` are agent classes whose events
    handlers receive as models (upcast), others come as dicts."""

    name: ClassVar[str] = ""
    agents: ClassVar[tuple[type[Agent[Any]], ...]] = ()
    _handlers: ClassVar[dict[tuple[str, str], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[tuple[str, str], str] = {}
        for klass in reversed(cls.__mro__):
            for attr, member in vars(klass).items():
                target = getattr(member, "__jetagents_on__", None)
                if target is not None:
                    handlers[target] = attr
        cls._handlers = handlers

    @classmethod
    def checked_name(cls) -> str:
        return validate_token(cls.name, "projection name")

    @classmethod
    def agent_types(cls) -> frozenset[str]:
        return frozenset(t for t, _ in cls._handlers)

    def handler(self, agent_type: str, event_type: str) -> Handler | None:
        attr = self._handlers.get((agent_type, event_type))
        return None if attr is None else getattr(self, attr)


class Position(BaseModel):
    """The projection's position, stored with its rows: ``seq`` the last event-stream
    sequence applied, ``gen`` the generation of rows being written (a rebuild starts the next
    one from sequence 0), ``events`` how many events its handlers applied in this generation."""

    model_config = ConfigDict(extra="forbid")

    seq: int = 0
    gen: int = 1
    events: int = 0
    ts_ms: int = 0


class ProjectionView:
    """The rows a projection's handlers read and write: writes stay in memory (``dirty``)
    until the runner stores them with the position; reads come from them, then from a
    bounded cache of rows read or written before, then from the store (``load``). The runner
    is the only writer of the rows of its generation (its position's revision fences it), so
    the cache stays true while it leads."""

    def __init__(self, load: Callable[[str], Awaitable[Any]], max_cached: int = 100_000) -> None:
        self._load = load
        self._max_cached = max_cached
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self.dirty: dict[str, Any] = {}

    async def get(self, key: str, default: Any = None) -> Any:
        """The row at ``key`` (a JSON value), or ``default`` when there is none."""
        if key in self.dirty:
            value = self.dirty[key]
        elif key in self._cache:
            self._cache.move_to_end(key)
            value = self._cache[key]
        else:
            loaded = await self._load(validate_row_key(key))
            value = DELETED if loaded is None else loaded
            self._remember(key, value)
        return default if value is DELETED else value

    def put(self, key: str, value: Any) -> None:
        """Set the row at ``key`` to ``value`` (JSON: dicts, lists, numbers, strings, models)."""
        self.dirty[validate_row_key(key)] = to_jsonable_python(value)

    def delete(self, key: str) -> None:
        self.dirty[validate_row_key(key)] = DELETED

    def written(self) -> dict[str, Any]:
        """The dirty rows, now stored: they move to the cache."""
        rows, self.dirty = self.dirty, {}
        for key, value in rows.items():
            self._remember(key, value)
        return rows

    def _remember(self, key: str, value: Any) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
