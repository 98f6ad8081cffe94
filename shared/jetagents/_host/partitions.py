"""The partitions a host serves: one durable consumer each, and the credit loop pulling from it.

``Partitions`` starts and stops serving a partition (the coordinator's hooks go through the
host to here), keeps one ``Puller`` per partition served, and looks after the consumers: it
recreates one the server forgot (a restarted server keeps consumers in memory only), unpins
one that feeds another host, and revives one whose pulls vanish unanswered. The JetStream
calls themselves are the adapter's (``jetagents._nats.consumers``), behind the
``PullConsumers`` port, which the simulation implements in memory.

Each partition has two consumers, so two pullers: the normal lane's and the high-priority
lane's (ADR 0058). The high lane pulls with its own credit and into room the normal lane
cannot take (``high_lane_reserve``), so a backlog of normal commands held by the server
(``max_ack_pending``, the pull batch) or by the host (``max_inflight``) does not hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._core.clock import Clock
from .._core.errors import JetAgentsError, Unavailable
from .._nats.api import Topology
from .._obs.metrics import Metrics
from .._settings import HostSettings
from .ports import PullConsumers
from .supervisor import Supervisor

PRIORITY_GROUP = "jetagents"


@dataclass(slots=True)
class _PullRequest:
    remaining: int
    sent_at: float


class Puller:
    """Credit loop for one partition's consumer."""

    def __init__(self, parts: Partitions, partition: int, high: bool = False) -> None:
        self.parts = parts
        self.partition = partition
        self.high = high  # the high-priority lane's puller (ADR 0058)
        self.requests: dict[str, _PullRequest] = {}
        self.out = 0  # messages asked for and not yet received (sum of requests' remaining)
        self.pin_id: str | None = None
        self.wake = asyncio.Event()
        self.backoff_until = 0.0
        self.ids = itertools.count(1)
        self.stopped = False
        self.last_unpin = 0.0
        self.last_recreate = 0.0
        self.recreate_failures = 0  # recreations in a row that failed (an existing consumer without a leader)
        self.recreating = False  # one recreation at a time: each may wait out an election (seconds)
        self.silent = 0  # requests in a row the server never answered (no message, no status)
        self.reviving = False

    def outstanding(self) -> int:
        return self.out

    def add_request(self, token: str, n: int, now: float) -> None:
        self.requests[token] = _PullRequest(n, now)
        self.out += n

    def drop_request(self, token: str) -> None:
        req = self.requests.pop(token, None)
        if req is not None:
            self.out -= req.remaining

    def clear_requests(self) -> None:
        self.requests.clear()
        self.out = 0

    def received(self) -> None:
        """One message arrived: the server fills requests in the order they were sent."""
        self.silent = 0
        for req in self.requests.values():  # the first request only: no (token, request) pair made per message
            req.remaining -= 1
            self.out -= 1
            if req.remaining <= 0:
                del self.requests[next(iter(self.requests))]  # this one, the first
                self.wake.set()
            break

    def close_request(self, token: str) -> None:
        """The server ended this request (expired, pinned elsewhere, no more messages)."""
        self.silent = 0
        self.drop_request(token)
        self.wake.set()

    async def run(self) -> None:
        parts = self.parts
        s = parts.settings
        consumers = parts.consumers
        high = self.high
        reply_prefix = f"{parts.pull_prefix}.{'h' if high else ''}{self.partition}."
        while not parts.supervisor.stopping and not self.stopped:
            now = parts.clock.monotonic()
            # forget requests the server can no longer answer (lost across a reconnect)
            for token, req in list(self.requests.items()):
                if now - req.sent_at > s.pull_expires_s + 2.0:
                    self.drop_request(token)
                    self.silent += 1
            if self.silent >= 2 and not self.reviving and consumers.connected:
                # Two requests in a row expired without a word from the server (a live
                # consumer ends each with a message or a status, a missing one gets "no
                # responders"): whatever receives our pulls is not a working consumer.
                self.reviving = True
                parts.supervisor.spawn("side", self.revive())
            want = s.pull_batch - self.outstanding()
            room = parts.room(high)
            if high and room <= 0:
                parts.high_starved = True
            if now >= self.backoff_until and want >= max(1, s.pull_batch // 2) and room > 0 and consumers.connected:
                n = min(want, room)
                token = str(next(self.ids))
                self.add_request(token, n, now)
                try:
                    await consumers.pull(
                        self.partition,
                        reply_prefix + token,
                        batch=n,
                        expires_s=s.pull_expires_s,
                        group=PRIORITY_GROUP,
                        pin_id=self.pin_id,
                        high=high,
                    )
                except Exception as exc:  # noqa: BLE001 - connection trouble: retry later
                    self.drop_request(token)
                    self.backoff_until = now + 0.5
                    parts.log.debug("pull_publish_failed", partition=self.partition, error=str(exc))
                continue
            self.wake.clear()
            delay = 1.0
            if self.backoff_until > now:
                delay = min(delay, self.backoff_until - now)
            await parts.clock.wait(self.wake, delay)  # the host's clock: the simulation's is manual

    async def revive(self) -> None:
        """Our pulls vanish unanswered: recreate the consumer (same config).

        Seen after NATS node faults: a deleted consumer whose pull subject something still
        receives (a stale leader, a consumer being stopped), a consumer whose raft group
        lost its leader. Creating it again is enough when it is missing; otherwise delete
        and create, which gives it a new raft group (the stream keeps every command not
        acknowledged, and the new consumer delivers them again). A delete whose reply is
        lost may still have been applied: create anyway."""
        parts = self.parts
        consumers = parts.consumers
        high = self.high
        try:
            try:
                missing = not await consumers.exists(self.partition, high=high)
            except Unavailable:
                missing = False  # no leader answers for it
            if not missing:
                with contextlib.suppress(Unavailable):  # applied even when its reply is lost
                    await consumers.delete(self.partition, high=high)
            await consumers.ensure(self.partition, parts.consumer_config(self.partition, high), high=high)
        except JetAgentsError as exc:
            parts.log.debug("consumer_revive_failed", partition=self.partition, error=str(exc))
            return
        finally:
            self.reviving = False
        if self.stopped or parts.supervisor.stopping:
            return
        self.silent = 0
        self.pin_id = None
        parts.metrics.inc("consumers_recreated")
        parts.log.warning("consumer_revived", partition=self.partition, was_missing=missing, high=high)
        self.wake.set()


class Partitions:
    """The partitions this host pulls from, one ``Puller`` each."""

    def __init__(
        self,
        settings: HostSettings,
        topology: Topology,
        clock: Clock,
        supervisor: Supervisor,
        metrics: Metrics,
        log: Any,
        room: Callable[[bool], int],
        *,
        claims: bool,
    ) -> None:
        self.settings = settings
        self._half_batch = settings.pull_batch // 2  # wake_low's bar, read for every command done
        self.topology = topology
        self.clock = clock
        self.supervisor = supervisor
        self.metrics = metrics
        self.log = log
        # how many more commands the host can take in now (0: wait for room), for a lane
        self.room = room
        # a high-lane puller found no room: wake the high pullers when room frees up anywhere
        self.high_starved = False
        # ring membership: this host holds a claim on each partition it serves (static: none)
        self.claims = claims
        self._pullers: dict[int, Puller] = {}
        self._high: dict[int, Puller] = {}  # the high-priority lane's (ADR 0058)
        # the partitions served (commands taken), as a sorted list and as a set for intake
        self.owned: list[int] = []
        self.owned_set: frozenset[int] = frozenset()
        self.consumers: PullConsumers = None  # type: ignore[assignment]  # set by bind()
        self.pull_prefix = ""
        self._start_sem = asyncio.Semaphore(32)

    def bind(self, consumers: PullConsumers, pull_prefix: str) -> None:
        """Connected: the consumers' adapter, and the inbox prefix the pulled messages come to."""
        self.consumers = consumers
        self.pull_prefix = pull_prefix

    def get(self, partition: int, high: bool = False) -> Puller | None:
        return (self._high if high else self._pullers).get(partition)

    def pullers(self) -> Iterable[Puller]:
        return [*self._pullers.values(), *self._high.values()]

    def consumer_config(self, partition: int, high: bool = False) -> dict[str, Any]:
        s = self.settings
        return self.topology.consumer_config(
            partition, ack_wait_s=s.ack_wait_s, max_deliver=-1, max_ack_pending=s.max_ack_pending, high=high
        )

    async def start(self, partition: int, *, rewind: bool = False) -> None:
        """Start serving ``partition``: recreate its consumer, then pull."""
        # A new owner makes whatever the previous owner left unacknowledged come again at
        # once and in stream order (a redelivery after ack_wait would arrive behind newer
        # commands of the same agent), and makes the server feed only itself: it rewinds
        # the consumer in place and unpins it when the previous owner is gone (fast: the
        # failover path), and recreates it when the previous owner is alive (its pull
        # requests still wait at the server and die only with the consumer).
        # Both lanes' consumers, the high one first: its backlog is the one that must not wait.
        for high in (True, False):
            cfg = self.consumer_config(partition, high)
            async with self._start_sem:  # a few at a time: each is a raft group on a replicated stream
                if rewind:
                    await self.consumers.rewind(partition, cfg, high=high)
                else:
                    await self.consumers.ensure(partition, cfg, reset=True, high=high)
        for high in (True, False):
            puller = Puller(self, partition, high)
            (self._high if high else self._pullers)[partition] = puller
            self.supervisor.spawn("pullers", puller.run(), key=("h", partition) if high else partition)
        self.mark(partition, owned=True)

    def mark(self, partition: int, *, owned: bool) -> None:
        """Record that this host serves ``partition`` (or no longer does); the simulation,
        which has no pullers, marks its partitions with it too."""
        if owned:
            self.owned = sorted({*self.owned, partition})
        else:
            self.owned = [p for p in self.owned if p != partition]
        self.owned_set = frozenset(self.owned)

    async def stop(self, partition: int) -> None:
        """Stop serving ``partition``: take no more of its commands, stop pulling (its
        consumer stays, for the next owner)."""
        self.mark(partition, owned=False)
        for pullers in (self._pullers, self._high):
            puller = pullers.pop(partition, None)
            if puller is not None:
                puller.stopped = True
                puller.wake.set()
        await self.supervisor.cancel_key("pullers", partition)
        await self.supervisor.cancel_key("pullers", ("h", partition))

    def wake_all(self) -> None:
        for puller in self.pullers():
            puller.wake.set()

    def wake_low(self, partition: int | None) -> None:
        """Room freed up: wake the puller of ``partition`` (every puller when None) if it
        has less than half its credit out."""
        half = self._half_batch
        if partition is None:
            for puller in self.pullers():
                if puller.out < half:
                    puller.wake.set()
            return
        own = self._pullers.get(partition)
        if own is not None and own.out < half:
            own.wake.set()
        if self.high_starved:  # rare: only after a high puller found the host full
            self.high_starved = False
            for puller in self._high.values():
                puller.wake.set()
        else:
            high = self._high.get(partition)
            if high is not None and high.out < half:
                high.wake.set()

    def reconnected(self) -> None:
        """Requests sent before a reconnect are lost with the old connection: ask again."""
        for puller in self.pullers():
            puller.clear_requests()
            puller.wake.set()

    def on_pull_status(self, subject: str, headers: Mapping[str, str] | None) -> None:
        """A status the server sent about one of our pull requests, to its inbox
        (``<pull prefix>.<partition>.<request token>``, ``h<partition>`` for the high lane)."""
        tokens = subject.rsplit(".", 2)
        lane = tokens[1]
        high = lane[:1] == "h"
        if high:
            lane = lane[1:]
        puller = (self._high if high else self._pullers).get(int(lane)) if lane.isdigit() else None
        if puller is not None:
            self.on_status(puller, tokens[2], (headers or {}).get("Status", ""))

    def on_status(self, puller: Puller, token: str, status: str) -> None:
        """A status the server sent about one of our pull requests (to its inbox)."""
        if status == "100":
            return
        if status == "503":
            # Nobody serves the consumer: it is gone. Its state lives in server memory,
            # so a restarted server forgets it; the stream still holds every command not
            # acknowledged, and a recreated consumer delivers them again.
            now = self.clock.monotonic()
            puller.backoff_until = now + 0.25
            if now - puller.last_recreate > 1.0 and not puller.recreating:
                puller.last_recreate = now
                puller.recreating = True
                self.supervisor.spawn("side", self._recreate(puller))
        if status == "423":  # pinned to another host
            puller.pin_id = None
            now = self.clock.monotonic()
            puller.backoff_until = now + 0.25
            if self.claims and now - puller.last_unpin > 1.0:
                # We hold the claim: whoever the server still feeds (a previous owner's
                # request left waiting, a paused host) must not be. Unpin it.
                puller.last_unpin = now
                self.supervisor.spawn("side", self._unpin(puller.partition, puller.high))
        puller.close_request(token)

    async def _recreate(self, puller: Puller) -> None:
        """Create the consumer of a partition we serve if it is missing (same config)."""
        partition, high = puller.partition, puller.high
        if puller.stopped or self.supervisor.stopping:
            puller.recreating = False
            return
        # "No responders" and a create that keeps failing: the consumer exists (the create
        # is an update, answered by its leader) but its raft group has no leader, not even
        # after the adapter waited out an election. Delete it and create it afresh (a new
        # raft group).
        reset = puller.recreate_failures >= 2
        try:
            await self.consumers.ensure(partition, self.consumer_config(partition, high), reset=reset, high=high)
        except Exception as exc:  # noqa: BLE001 - the next "no responders" tries again
            puller.recreate_failures += 1
            self.log.debug("consumer_recreate_failed", partition=partition, error=str(exc), reset=reset)
            return
        finally:
            puller.recreating = False
        puller.recreate_failures = 0
        self.metrics.inc("consumers_recreated")
        self.log.warning("consumer_recreated", partition=partition, high=high)

    async def _unpin(self, partition: int, high: bool = False) -> None:
        with contextlib.suppress(JetAgentsError):
            await self.consumers.unpin(partition, PRIORITY_GROUP, high=high)
