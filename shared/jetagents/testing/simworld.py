"""The simulation's world: one shared set of in-memory streams, buckets and cluster store,
and each host's view of them with that host's faults applied (``jetagents.testing.simulation``).

A host never touches the world directly: it gets ports (``EventStream``, ``Bucket``,
``Publisher``, ``ClusterStore``) that pass through its ``HostFaults``. A paused host's calls
wait at the gate until it resumes (it wakes holding whatever it had read before: a stale
claim, a stale log position); a crashed host's calls never complete; a cut-off host hears
``Unavailable``; a lost reply means the write landed and the host is told it failed.
Everything that lands is written to the world's history, the thing two runs of one seed
must agree on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.errors import Unavailable
from .._core.kv import Entry
from .._core.wire import H_COMMAND_ID, H_HOST, Subjects
from .._host.ports import Appended, StoredMessage
from .clock import ManualClock
from .memory import MemoryStore
from .streams import MemoryBucket, MemoryEventStream, MemoryPublisher, MemoryWorkQueue

__all__ = [
    "FaultyBucket",
    "FaultyConsumers",
    "FaultyEventStream",
    "FaultyPublisher",
    "FaultyStore",
    "HostFaults",
    "World",
]

HistoryEvent = tuple[Any, ...]
SUBJECTS = Subjects()  # the subjects of the simulated deployment (the default root)


class World:
    """Everything the hosts share, and the ordered history of what happened to it."""

    def __init__(self, clock: ManualClock, *, ack_wait_s: float, duplicate_window_s: float) -> None:
        self.clock = clock
        self.store = MemoryStore(clock)
        self.events = MemoryEventStream(clock, name="AGT_EVT", duplicate_window_s=duplicate_window_s)
        self.dead_letters = MemoryEventStream(clock, name="AGT_DLQ")
        self.commands = MemoryWorkQueue(clock, name="AGT_CMD", ack_wait_s=ack_wait_s)
        self.snapshots = MemoryBucket()
        self.meta = MemoryBucket()
        self.bus = MemoryPublisher()
        self.bus.bind("agt.dlq.>", self.dead_letters)
        self.history: list[HistoryEvent] = []
        self.schedules: Any = None  # the server's schedules (MemorySchedules), set by the simulation
        self.snapshots_written: list[tuple[str, str, bytes]] = []  # (host, key, value), checked by Invariants

    def record(self, *event: Any) -> None:
        self.history.append((round(self.clock.monotonic() - 1000.0, 6), *event))


@dataclass
class HostFaults:
    """One host's faults. ``running`` is the pause gate: cleared while the host is paused."""

    running: asyncio.Event = field(default_factory=asyncio.Event)
    crashed: bool = False
    cut_until: float = 0.0  # its link to the server is down: every call fails at once
    lost_reply_until: float = 0.0  # writes land, their replies are lost (half of them)
    lost_ack_until: float = 0.0  # its acknowledgements never reach the server (half of them)
    no_heartbeat_until: float = 0.0
    stale_ring_until: float = 0.0  # its reads of the ring answer an old one (a lagging replica)
    stale_ring: Entry | None = None
    pause_at_append_s: float = 0.0  # the next append pauses the host for this long, before it lands
    paused_until: float = 0.0
    rnd: random.Random = field(default_factory=lambda: random.Random(0))

    def __post_init__(self) -> None:
        self.running.set()


class _Faulty:
    def __init__(self, world: World, host: str, faults: HostFaults) -> None:
        self.world, self.host, self.faults = world, host, faults

    async def _enter(self) -> None:
        """The call reaches the server once the host runs; a crashed host's never does (what
        is left of it hears so, and its tasks are being cancelled anyway)."""
        f = self.faults
        if not f.running.is_set() and not f.crashed:
            await f.running.wait()
        if f.crashed:
            raise Unavailable("the host crashed")
        if self.world.clock.monotonic() < f.cut_until:
            raise Unavailable("cut off from the server")

    def _reply_lost(self) -> bool:
        f = self.faults
        return self.world.clock.monotonic() < f.lost_reply_until and f.rnd.random() < 0.5


class FaultyEventStream(_Faulty):
    """The event log as one host sees it (an ``EventStream``)."""

    async def append(
        self, subject: str, body: bytes, headers: Mapping[str, str], *, expected_last_subject_seq: int
    ) -> Appended:
        f = self.faults
        if f.pause_at_append_s:  # caught between computing a commit and writing it
            f.paused_until = self.world.clock.monotonic() + f.pause_at_append_s
            f.pause_at_append_s = 0.0
            f.running.clear()
            self.world.record("paused_at_append", self.host, subject, round(f.paused_until - 1000.0, 6))
        await self._enter()
        try:
            done = self.world.events.store(subject, body, headers, expected_last_subject_seq)
        except Exception as exc:
            self.world.record("append_refused", self.host, subject, expected_last_subject_seq, type(exc).__name__)
            raise
        self.world.record("append", self.host, subject, done.seq, done.duplicate, headers.get(H_COMMAND_ID))
        if self._reply_lost():
            self.world.record("append_reply_lost", self.host, subject, done.seq)
            raise Unavailable("the PubAck was lost (the append landed)")
        return done

    async def read_subject(self, subject: str, start_seq: int, batch: int) -> list[StoredMessage]:
        await self._enter()
        return await self.world.events.read_subject(subject, start_seq, batch)

    async def last(self, subject: str) -> StoredMessage | None:
        await self._enter()
        return await self.world.events.last(subject)

    async def at(self, seq: int) -> StoredMessage | None:
        await self._enter()
        return await self.world.events.at(seq)


class FaultyBucket(_Faulty):
    """A bucket (snapshots, metadata) as one host sees it."""

    def __init__(self, world: World, host: str, faults: HostFaults, bucket: MemoryBucket) -> None:
        super().__init__(world, host, faults)
        self.bucket = bucket

    async def get(self, key: str) -> bytes | None:
        await self._enter()
        return await self.bucket.get(key)

    async def put(self, key: str, value: bytes) -> int:
        await self._enter()
        rev = await self.bucket.put(key, value)
        if self.bucket is self.world.snapshots:
            self.world.record("snapshot", self.host, key, rev)
            self.world.snapshots_written.append((self.host, key, value))
        if self._reply_lost():
            raise Unavailable("the put's reply was lost (it landed)")
        return rev


class FaultyPublisher(_Faulty):
    """Replies, acknowledgements and dead letters as one host sends them (a ``Publisher``).
    An acknowledgement to the command stream may be lost: the command comes again."""

    async def publish(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        await self._enter()
        f = self.faults
        if subject.startswith("$JS.ACK."):
            seq = int(subject.split(".")[5])
            if self.world.clock.monotonic() < f.lost_ack_until and f.rnd.random() < 0.5:
                self.world.record("ack_lost", self.host, seq, bytes(body[:5]))
                return
            self.world.record("ack", self.host, seq, bytes(body[:5]), self.world.commands.answer(subject, body))
            return
        self.world.record("publish", self.host, subject)
        await self.world.bus.publish(subject, body, headers)

    async def persist(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> Appended:
        await self._enter()
        done = await self.world.bus.persist(subject, body, {**(headers or {}), H_HOST: self.host})
        self.world.record("dead_letter", self.host, subject, done.seq, done.duplicate)
        if self._reply_lost():
            raise Unavailable("the PubAck was lost (the dead letter landed)")
        return done


class FaultyStore(_Faulty):
    """The cluster store (a ``ClusterStore``) as one host's coordinator sees it."""

    @property
    def store(self) -> MemoryStore:
        return self.world.store

    def _landed(self) -> None:
        if self._reply_lost():
            raise Unavailable("the write's reply was lost (it landed)")

    async def get(self, key: str) -> Entry | None:
        await self._enter()
        if key == "ring" and self.world.clock.monotonic() < self.faults.stale_ring_until:
            return self.faults.stale_ring
        return await self.store.get(key)

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        await self._enter()
        rev = await self.store.create(key, value, ttl_s)
        self._landed()
        return rev

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int:
        await self._enter()
        new = await self.store.update(key, value, rev, ttl_s)
        self._landed()
        return new

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        await self._enter()
        if key.startswith("member.") and self.world.clock.monotonic() < self.faults.no_heartbeat_until:
            raise Unavailable("heartbeat lost")
        rev = await self.store.put(key, value, ttl_s)
        self._landed()
        return rev

    async def remove(self, key: str) -> None:
        await self._enter()
        await self.store.remove(key)

    async def scan(self, prefix: str, *, after_rev: int = 0) -> dict[str, Entry]:
        await self._enter()
        return await self.store.scan(prefix, after_rev=after_rev)


@dataclass(slots=True)
class PullRequest:
    """A pull request the command stream's consumer holds for a host (what it asked for)."""

    reply: str
    remaining: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class PullStatus:
    """A status the consumer sends about a pull request, to its reply subject (a ``Received``)."""

    subject: str
    headers: Mapping[str, str]
    data: bytes = b""
    reply: str = ""


class FaultyConsumers(_Faulty):
    """The command stream's partition consumers as one host reaches them (a ``PullConsumers``):
    the host's real ``Partitions`` pullers ask here, and the driver hands a command only to a
    host holding an open request for its partition, one message of its credit each.

    What the server does that matters to the host is here: a request that expires unfilled
    gets a ``408`` status on its reply subject (the puller asks again); ``rewind`` and a
    ``reset`` make the partition's unacknowledged commands due at once. What it does not
    model: pinning (every host with an open request may be fed, where the server feeds the
    pinned one: harsher, a stale owner's request is fed too and the fence must hold), and the
    consumers' own existence (they always exist). A crashed host's requests die with its
    connection."""

    def __init__(self, world: World, host: str, faults: HostFaults) -> None:
        super().__init__(world, host, faults)
        self._open: dict[tuple[int, bool], list[PullRequest]] = {}
        self._timers: set[asyncio.Task[None]] = set()
        # the host's pull inbox (its intake's on_pull_msg), where statuses go; set by the node
        self.on_status: Callable[[PullStatus], Awaitable[None]] | None = None

    @property
    def connected(self) -> bool:
        f = self.faults
        return not f.crashed and self.world.clock.monotonic() >= f.cut_until

    def takes(self, partition: int) -> bool:
        """Whether the host holds credit for ``partition`` (the normal lane's)."""
        return bool(self._open.get((partition, False)))

    def take(self, partition: int) -> None:
        """One message of the oldest open request's credit is used (the server fills requests
        in the order they came)."""
        queue = self._open[(partition, False)]
        queue[0].remaining -= 1
        if queue[0].remaining <= 0:
            queue.pop(0)

    def crash(self) -> None:
        self._open.clear()
        for timer in self._timers:
            timer.cancel()

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
        await self._enter()
        request = PullRequest(reply, batch, self.world.clock.monotonic() + expires_s)
        self._open.setdefault((partition, high), []).append(request)
        timer = asyncio.get_running_loop().create_task(self._expire((partition, high), request, expires_s))
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _expire(self, lane: tuple[int, bool], request: PullRequest, expires_s: float) -> None:
        await self.world.clock.sleep(expires_s)
        queue = self._open.get(lane) or []
        if request in queue:
            queue.remove(request)
            if self.on_status is not None and not self.faults.crashed:
                await self.on_status(PullStatus(request.reply, {"Status": "408"}))

    async def ensure(self, partition: int, cfg: dict[str, Any], *, reset: bool = False, high: bool = False) -> None:
        await self._enter()
        if reset:
            self.world.commands.rewind(partition)

    async def rewind(self, partition: int, cfg: dict[str, Any], *, high: bool = False) -> str:
        await self._enter()
        self.world.commands.rewind(partition)
        return "rewound"

    async def exists(self, partition: int, *, high: bool = False) -> bool:
        await self._enter()
        return True

    async def delete(self, partition: int, *, high: bool = False) -> None:
        await self._enter()

    async def unpin(self, partition: int, group: str, *, high: bool = False) -> None:
        await self._enter()
