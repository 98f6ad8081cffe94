"""In-memory implementations of the host's ports (``jetagents._host.ports``): an event stream
with JetStream's semantics for what the host uses, a key-value bucket and a publisher.

The simulation runs the real host parts over these, so they must answer as nats-server does;
``tests/integration/test_stream_contract.py`` runs one suite against them and against the
JetStream adapter. What the server does, and so what these do (checked on nats-server 2.15):

* an append carries the subject's expected last sequence (``0``: the subject is empty); a
  mismatch is refused (``WrongLastSequence``, err 10071) **before** the duplicate check, so a
  duplicate whose expectation is stale is refused too, not answered ``duplicate``;
* with the expectation met, a ``Nats-Msg-Id`` seen within the duplicate window (on any subject
  of the stream) writes nothing and answers ``duplicate=True`` with the original sequence;
  a refused append records no id;
* sequences are stream-wide, gapless from 1; a message read back carries the headers it was
  stored with plus ``Nats-Stream``, ``Nats-Subject``, ``Nats-Sequence`` and ``Nats-Time-Stamp``
  (as a direct get returns them); reading a subject returns all of it from the start sequence
  (the adapter pages internally).

>>> from jetagents.testing import ManualClock, MemoryEventStream
>>> stream = MemoryEventStream(ManualClock())
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import orjson

from .._core.clock import Clock
from .._core.errors import PayloadTooLarge, Unavailable
from .._core.pubsub import matches as subject_matches  # NATS subject matching, written once
from .._core.wire import H_MSG_ID
from .._host.ports import Appended, StoredMessage, WrongLastSequence
from .._nats.headers import H_NATS_SEQUENCE

__all__ = [
    "MemoryBucket",
    "MemoryEventStream",
    "MemoryPublisher",
    "MemoryWorkQueue",
    "PublishedMessage",
    "QueuedCommand",
    "subject_matches",
]


def _timestamp(wall_ms: int) -> str:
    return datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.UTC).isoformat().replace("+00:00", "Z")


class MemoryEventStream:
    """A JetStream stream in memory, as the host's ``EventStream`` port uses it."""

    def __init__(
        self,
        clock: Clock,
        *,
        name: str = "EVT",
        duplicate_window_s: float = 120.0,
        max_msg_bytes: int = 1024 * 1024,
    ) -> None:
        self.clock = clock
        self.name = name
        self.duplicate_window_s = duplicate_window_s
        self.max_msg_bytes = max_msg_bytes
        self._msgs: list[StoredMessage] = []  # index = seq - 1
        self._by_subject: dict[str, list[int]] = {}
        self._ids: OrderedDict[str, tuple[int, float]] = OrderedDict()  # msg id -> (seq, stored at)

    # -- the port ----------------------------------------------------------------------------
    async def append(
        self, subject: str, body: bytes, headers: Mapping[str, str], *, expected_last_subject_seq: int
    ) -> Appended:
        return self.store(subject, body, headers, expected_last_subject_seq)

    async def read_subject(self, subject: str, start_seq: int, batch: int) -> list[StoredMessage]:
        """Every message of ``subject`` from ``start_seq`` on: the JetStream adapter pages
        through them ``batch`` at a time and returns them all, and the catalog relies on it."""
        return [self._msgs[seq - 1] for seq in self._by_subject.get(subject, ()) if seq >= start_seq]

    async def last(self, subject: str) -> StoredMessage | None:
        seqs = self._by_subject.get(subject)
        return self._msgs[seqs[-1] - 1] if seqs else None

    async def at(self, seq: int) -> StoredMessage | None:
        return self._msgs[seq - 1] if 0 < seq <= len(self._msgs) else None

    # -- synchronous access (the simulation's checks, dead letters) -----------------------------
    def store(
        self, subject: str, body: bytes, headers: Mapping[str, str], expected_last_subject_seq: int | None = None
    ) -> Appended:
        """Append now; the checks in the server's order (size, expectation, duplicate)."""
        size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        if size > self.max_msg_bytes:
            raise PayloadTooLarge(f"message of {size} bytes exceeds the stream's maximum of {self.max_msg_bytes}")
        seqs = self._by_subject.get(subject)
        last = seqs[-1] if seqs else 0
        if expected_last_subject_seq is not None and expected_last_subject_seq != last:
            raise WrongLastSequence(f"wrong last sequence: {last}")
        msg_id = headers.get(H_MSG_ID)
        if msg_id:
            self._forget_old_ids()
            seen = self._ids.get(msg_id)
            if seen is not None:
                return Appended(seen[0], True)
        seq = len(self._msgs) + 1
        stored = {
            **headers,
            "Nats-Stream": self.name,
            "Nats-Subject": subject,
            H_NATS_SEQUENCE: str(seq),
            "Nats-Time-Stamp": _timestamp(self.clock.wall_ms()),
        }
        self._msgs.append(StoredMessage(seq, subject, body, stored))
        self._by_subject.setdefault(subject, []).append(seq)
        if msg_id:
            self._ids[msg_id] = (seq, self.clock.monotonic())
        return Appended(seq, False)

    def _forget_old_ids(self) -> None:
        horizon = self.clock.monotonic() - self.duplicate_window_s
        while self._ids:
            msg_id, (_, at) = next(iter(self._ids.items()))
            if at > horizon:
                return
            del self._ids[msg_id]

    @property
    def messages(self) -> list[StoredMessage]:
        """Every message in stream order (a copy)."""
        return list(self._msgs)

    def subjects(self) -> list[str]:
        return list(self._by_subject)

    def of_subject(self, subject: str) -> list[StoredMessage]:
        return [self._msgs[seq - 1] for seq in self._by_subject.get(subject, ())]


class MemoryBucket:
    """A key-value bucket in memory, as the host's ``Bucket`` port uses it; revisions are
    bucket-wide and increase with every put (a KV bucket is one stream)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[bytes, int]] = {}
        self._rev = 0

    async def get(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        return entry[0] if entry else None

    async def put(self, key: str, value: bytes) -> int:
        self._rev += 1
        self._values[key] = (value, self._rev)
        return self._rev

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    def revision(self, key: str) -> int | None:
        entry = self._values.get(key)
        return entry[1] if entry else None

    def keys(self) -> list[str]:
        return sorted(self._values)


@dataclass(frozen=True, slots=True)
class PublishedMessage:
    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[PublishedMessage], Awaitable[None]]


class MemoryPublisher:
    """Core messages and stream publishes in memory, as the host's ``Publisher`` port uses it.

    Every core message is kept in ``published`` (in order) and handed to the subscribers whose
    pattern matches; ``persist`` stores into the stream bound to the subject (dead letters).
    """

    def __init__(self) -> None:
        self.published: list[PublishedMessage] = []
        self._subs: list[tuple[str, Handler]] = []
        self._streams: list[tuple[str, MemoryEventStream]] = []

    def bind(self, pattern: str, stream: MemoryEventStream) -> None:
        """Messages ``persist``-ed to subjects matching ``pattern`` go to ``stream``."""
        self._streams.append((pattern, stream))

    def subscribe(self, pattern: str, handler: Handler) -> None:
        self._subs.append((pattern, handler))

    async def publish(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        msg = PublishedMessage(subject, body, dict(headers or {}))
        self.published.append(msg)
        for pattern, handler in list(self._subs):
            if subject_matches(pattern, subject):
                await handler(msg)

    async def persist(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> Appended:
        for pattern, stream in self._streams:
            if subject_matches(pattern, subject):
                return stream.store(subject, body, headers or {})
        # as the server: a publish no stream listens to has no responders
        raise Unavailable(f"no stream accepted {subject}")


@dataclass(slots=True)
class QueuedCommand:
    """A command in the work queue: stored until acknowledged or terminated."""

    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str]
    partition: int
    deliveries: int = 0
    due: float = 0.0  # when it may be delivered (again)


class MemoryWorkQueue:
    """The command stream (work-queue retention) with an explicit-ack consumer per partition,
    as the host sees it: a delivery carries a JetStream ack subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>``), and what the
    host publishes there (``+ACK``, ``-NAK`` with an optional delay, ``+TERM``, ``+WPI``) acts
    on the command. A delivery not answered within ``ack_wait_s`` comes again."""

    def __init__(self, clock: Clock, *, name: str = "CMD", ack_wait_s: float = 30.0) -> None:
        self.clock = clock
        self.name = name
        self.ack_wait_s = ack_wait_s
        self._queued: dict[int, QueuedCommand] = {}
        self._seq = 0
        self._dseq = 0

    def publish(self, subject: str, data: bytes, headers: Mapping[str, str], partition: int) -> int:
        self._seq += 1
        self._queued[self._seq] = QueuedCommand(self._seq, subject, data, dict(headers), partition)
        return self._seq

    def ready(self) -> list[QueuedCommand]:
        """The commands that may be delivered now, in stream order."""
        now = self.clock.monotonic()
        return [c for c in self._queued.values() if c.due <= now]

    def pending(self) -> list[QueuedCommand]:
        return list(self._queued.values())

    def rewind(self, partition: int) -> None:
        """What a new owner's consumer rewind does: ``partition``'s commands handed out and not
        yet acknowledged are due again at once."""
        now = self.clock.monotonic()
        for cmd in self._queued.values():
            if cmd.partition == partition and cmd.deliveries and cmd.due > now:
                cmd.due = now

    def deliver(self, cmd: QueuedCommand) -> str:
        """Hand ``cmd`` out once more; the subject its answer goes to."""
        cmd.deliveries += 1
        cmd.due = self.clock.monotonic() + self.ack_wait_s
        self._dseq += 1
        left = len(self._queued) - 1
        ts = self.clock.wall_ms() * 1_000_000
        return f"$JS.ACK.{self.name}.p{cmd.partition}.{cmd.deliveries}.{cmd.seq}.{self._dseq}.{ts}.{left}"

    def answer(self, ack_subject: str, body: bytes) -> str:
        """Apply an answer published to an ack subject; what it did (``ack``, ``term``, ``nak``,
        ``progress``, or ``gone``: the command was already acknowledged)."""
        seq = int(ack_subject.split(".")[5])
        cmd = self._queued.get(seq)
        if cmd is None:
            return "gone"
        now = self.clock.monotonic()
        if body.startswith(b"+ACK"):
            del self._queued[seq]
            return "ack"
        if body.startswith(b"+TERM"):
            del self._queued[seq]
            return "term"
        if body.startswith(b"+WPI"):
            cmd.due = now + self.ack_wait_s
            return "progress"
        if body.startswith(b"-NAK"):
            delay_s = 0.0
            rest = body[4:].strip()
            if rest:
                delay_s = orjson.loads(rest).get("delay", 0) / 1e9
            cmd.due = now + delay_s
            return "nak"
        return "unknown"

    async def on_answer(self, msg: PublishedMessage) -> None:
        """A ``MemoryPublisher`` subscriber for ``$JS.ACK.>``."""
        self.answer(msg.subject, msg.data)
