"""Schema evolution (ADR 0052): old events and old snapshots migrated to the current code.

An event class declares ``event_version`` (default 1) and the agent declares an
``@upcaster("EventType", from_version=n)`` for every step n -> n+1 of its history; the state
likewise (``state_version`` and ``@upcaster(STATE, from_version=n)``). Commits carry an
event's version (``"v"``, written only when it is not 1) and snapshots the state's (``"sv"``).
Replay runs the chain of upcasters on the raw JSON before validating it: pure functions of a
``dict``, applied in order. An event or state that is older than the code and has no
upcaster, or that does not validate, raises ``IncompatibleSchema`` naming the event type and
its version. When nothing changed (every version is 1, the common case) replay pays one
comparison per event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .errors import InternalError
from .wire import WireEvent

if TYPE_CHECKING:
    from .agent import Event

STATE = "$state"  # the upcaster target that names the agent's state, not an event
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class IncompatibleSchema(InternalError):
    """A stored event or snapshot cannot be read by the current code: a version without an
    upcaster, or data that does not validate. Travels as ``internal`` (nothing a caller can
    fix); the message names the event type and version, and what to declare."""


def upcast(
    upcasters: Mapping[tuple[str, int], Upcaster],
    target: str,
    version: int,
    current: int,
    data: dict[str, Any],
    where: str,
) -> dict[str, Any]:
    """``data`` of ``target`` at ``version`` raised to ``current`` by the declared chain."""
    what = "the state" if target == STATE else f"event {target!r}"
    if version > current:
        raise IncompatibleSchema(
            f"{what} version {version} in {where} is newer than this code (version {current}): "
            "run the code that wrote it, or newer"
        )
    while version < current:
        fn = upcasters.get((target, version))
        if fn is None:
            raise IncompatibleSchema(
                f"{what} version {version} in {where} has no upcaster to version {version + 1} "
                f"(declare @upcaster({target!r}, from_version={version}))"
            )
        out = fn(dict(data))
        if not isinstance(out, dict):
            raise IncompatibleSchema(f"the upcaster of {what} from version {version} returned {type(out).__name__}")
        data, version = out, version + 1
    return data


def incompatible(target: str, version: int, current: int, where: str, error: Exception) -> IncompatibleSchema:
    """The error for ``target`` data (already upcast to ``current``) that does not validate."""
    what = "the state" if target == STATE else f"event {target!r}"
    hint = ""
    if version == current:  # not migrated: the schema changed without a new version
        hint = f"; if its schema changed, declare version {current + 1} and an upcaster from {current}"
    return IncompatibleSchema(
        f"{what} version {version} in {where} does not fit the current code (version {current}){hint}: {error}"
    )


def upcasters_of(cls: type) -> dict[tuple[str, int], Upcaster]:
    """The ``@upcaster`` functions of an agent class and its bases."""
    out: dict[tuple[str, int], Upcaster] = {}
    for klass in reversed(cls.__mro__):
        for member in vars(klass).values():
            if isinstance(member, staticmethod) and hasattr(member.__func__, "__jetagents_upcaster__"):
                out[member.__func__.__jetagents_upcaster__] = member.__func__
    return out


def state_from(spec: Any, agent_id: object, data: Any, version: int) -> BaseModel:
    """A stored state (a snapshot's, at ``version``) as ``spec``'s current state model."""
    cls: type[BaseModel] = spec.state_type
    current: int = spec.cls.state_version
    upcasters: Mapping[tuple[str, int], Upcaster] = spec.upcasters
    where = f"the snapshot of {agent_id}"
    if version != current:
        data = upcast(upcasters, STATE, version, current, data, where)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise incompatible(STATE, version, current, where, exc) from None


def read_event(
    cls: type[BaseModel], wire: WireEvent, upcasters: Mapping[tuple[str, int], Upcaster], agent_id: object
) -> Any:
    """A stored event as ``cls``: validated as it is when its version is the code's (the
    common case: no copy, no lookup), else raised by the upcasters first."""
    version = wire.v or 1
    current: int = getattr(cls, "event_version", 1)
    where = f"the event log of {agent_id}"
    data = wire.data if version == current else upcast(upcasters, wire.type, version, current, wire.data, where)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise incompatible(wire.type, version, current, where, exc) from None


def upcaster(target: str, from_version: int) -> Callable[[Upcaster], Any]:
    """Mark a function ``(data: dict) -> dict`` that migrates the JSON of event type
    ``target`` (or of the state: ``target=STATE``) from ``from_version`` to the next
    (ADR 0052). Pure: it runs on every replay of old commits and every load of an old snapshot.

    >>> class Renamed(Event):  # doctest: +SKIP
    ...     event_version = 2
    ...     sku: str
    >>> @upcaster("Renamed", from_version=1)  # doctest: +SKIP
    ... def _renamed_v1(data: dict) -> dict:
    ...     return {"sku": data.pop("item"), **data}
    """
    if not (isinstance(from_version, int) and from_version >= 1):
        raise TypeError(f"from_version must be an int >= 1, not {from_version!r}")

    def mark(fn: Upcaster) -> Any:
        fn.__jetagents_upcaster__ = (target, from_version)  # type: ignore[attr-defined]
        return staticmethod(fn)

    return mark


def wire_events(events: list[Event]) -> list[dict[str, Any]]:
    """Events as the ``{"type", "data"}`` dicts of a commit (``encode_commit``), with ``"v"``
    when the event's schema is past version 1."""
    wire = []
    for e in events:
        # the model's serializer itself (``model_dump`` only passes its defaults on): one per event
        doc = {"type": e.event_type, "data": e.__pydantic_serializer__.to_python(e, mode="json")}
        if e.event_version != 1:
            doc["v"] = e.event_version
        wire.append(doc)
    return wire


def encode_events(events: list[Event]) -> list[WireEvent]:
    return [WireEvent(**e) for e in wire_events(events)]
