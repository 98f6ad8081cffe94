"""What the host's parts need from the outside world, as protocols (ADR 0040 section 6).

A part of the host takes a port, never a nats-py object. ``jetagents._nats`` implements the
ports over NATS JetStream; ``jetagents.testing`` implements them in memory, so the deterministic
simulation drives the real host code (pipeline, fence, outcomes, catalog) over them.

The ports are deliberately dumb: they move bytes and report what the server said. Every
decision (is a wrong last sequence our own earlier append, or a newer writer? is a dead letter
worth another try?) is the host's, so the simulation exercises the real decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .._core.schedules import Pattern, format_at


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from a stream: its stream sequence, subject, body and headers."""

    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str]


class Received(Protocol):
    """A message as a subscription hands it to the host (a nats-py ``Msg`` is one): a call or
    a pulled command at the intake, a host-to-host message at placement."""

    @property
    def subject(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str] | None: ...

    @property
    def data(self) -> bytes: ...

    @property
    def reply(self) -> str: ...


class Appended(NamedTuple):
    """The server's answer to an append (a PubAck): the stream sequence, and whether the
    message id was already in the duplicate window (then nothing was written). A tuple: one
    is made per durable command, and a frozen dataclass costs a setattr per field."""

    seq: int
    duplicate: bool


class WrongLastSequence(Exception):
    """The append's expected last subject sequence did not match: someone appended to the
    subject since (the fence). The caller decides whether that someone was itself."""


class EventStream(Protocol):
    """The agents' event log (the ``AGT_EVT`` stream), as the host uses it."""

    async def append(
        self, subject: str, body: bytes, headers: Mapping[str, str], *, expected_last_subject_seq: int
    ) -> Appended:
        """Append with the fence; raises ``WrongLastSequence``, ``Unavailable`` (transient),
        ``PayloadTooLarge``."""
        ...

    async def read_subject(self, subject: str, start_seq: int, batch: int) -> list[StoredMessage]:
        """Up to ``batch`` messages of ``subject`` from ``start_seq`` on, in order (all of them
        when the adapter pages internally)."""
        ...

    async def last(self, subject: str) -> StoredMessage | None: ...

    async def at(self, seq: int) -> StoredMessage | None: ...


class PullConsumers(Protocol):
    """The command stream's partition consumers, as ``Partitions`` pulls from them: one per
    partition and lane (``high``), in a priority group whose pinned client alone is fed."""

    @property
    def connected(self) -> bool: ...

    async def pull(
        self,
        partition: int,
        reply: str,
        *,
        batch: int,
        expires_s: float,
        group: str,
        pin_id: str | None,
        high: bool = False,
    ) -> None:
        """Ask for up to ``batch`` messages, delivered (with statuses about the request:
        ``408`` expired, ``423`` pinned elsewhere, ``503`` no consumer) to ``reply``."""
        ...

    async def ensure(self, partition: int, cfg: dict[str, Any], *, reset: bool = False, high: bool = False) -> None:
        """Create the consumer (``reset``: delete it first) unless it exists with ``cfg``."""
        ...

    async def rewind(self, partition: int, cfg: dict[str, Any], *, high: bool = False) -> str:
        """Make whatever is unacknowledged come again at once, in stream order; how."""
        ...

    async def exists(self, partition: int, *, high: bool = False) -> bool: ...

    async def delete(self, partition: int, *, high: bool = False) -> None: ...

    async def unpin(self, partition: int, group: str, *, high: bool = False) -> None:
        """Let the server pin the group to whoever asks next."""
        ...


class Bucket(Protocol):
    """A key-value bucket (snapshots, agent metadata) as the host uses it."""

    async def get(self, key: str) -> bytes | None:
        """The value, or ``None`` when the key is absent or deleted."""
        ...

    async def put(self, key: str, value: bytes) -> int:
        """Store ``value``; the new revision."""
        ...


class Refused(Exception):
    """The server refused a message for good (a JetStream API error): another try gets the
    same answer."""


class Publisher(Protocol):
    """Plain (core) messages: replies, acknowledgements to the server, forwarded commands."""

    async def publish(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> None: ...

    async def persist(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> Appended:
        """Publish to a stream and wait for its PubAck (dead letters); raises ``Refused``,
        ``PayloadTooLarge`` (for good) or anything else (may pass)."""
        ...


class OutStream(Protocol):
    """Streamed output (the ``AGT_OUT`` stream, ADR 0042 section 6), as the host uses it."""

    async def publish(self, subject: str, body: bytes, headers: Mapping[str, str]) -> Appended:
        """Publish and wait for the PubAck; raises ``Refused``, ``PayloadTooLarge`` (for good)
        or ``Unavailable`` (try again, same ``Nats-Msg-Id``)."""
        ...

    async def last(self, subject: str) -> StoredMessage | None:
        """The subject's last message as the stream's leader has it (None: none)."""
        ...


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule the server holds (ADR 0042 section 5): its subject, ``Nats-Schedule``
    pattern, time zone, target subject, body and the other headers it will copy."""

    subject: str
    pattern: str
    target: str
    body: bytes
    headers: Mapping[str, str]
    seq: int
    tz: str | None = None


class Schedules(Protocol):
    """Durable timers and reminders, held by the server in the command stream.

    ``subject`` is a schedule subject (``<root>.rem.<type>.<id>.<name>``, see
    ``Subjects.rem``); ``target`` the command subject it fires on (``<root>.cmd.<type>.<id>``).
    Publishing on a subject that holds a schedule replaces it; ``msg_id`` makes a repeated
    publish (a re-run) a no-op within the duplicate window. All raise ``InvalidParams`` for
    what the server refuses as input, ``Unavailable`` when it cannot be reached or the
    command stream has no schedules enabled.

    An adapter subclasses it to inherit ``schedule_at``, written once over ``schedule``.
    """

    __slots__ = ()

    async def schedule(
        self,
        subject: str,
        pattern: Pattern,
        target: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> Appended:
        """Store (or replace) the schedule ``pattern`` (``_core.schedules.pattern_of``)."""
        ...

    async def schedule_at(
        self,
        subject: str,
        at_ms: int,
        target: str,
        body: bytes,
        msg_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Appended:
        """A one-shot schedule firing once at unix ms ``at_ms`` (at once if past)."""
        return await self.schedule(subject, Pattern(format_at(at_ms)), target, body, headers=headers, msg_id=msg_id)

    async def cancel(self, subject: str) -> None:
        """Remove the schedule on ``subject`` (nothing if there is none); idempotent."""
        ...

    async def get(self, subject: str) -> Schedule | None:
        """The schedule on ``subject``, or None."""
        ...

    async def list(self, subject_filter: str) -> list[Schedule]:
        """The schedules on the subjects ``subject_filter`` matches (bounded by the adapter)."""
        ...
