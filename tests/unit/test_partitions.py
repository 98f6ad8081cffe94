"""The partition lifecycle against a recording stand-in for the consumer adapter (our own
``PartitionConsumers`` interface, not nats-py): pull credit, statuses, recreation, unpinning
and revival decisions, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from jetagents._core.errors import Unavailable
from jetagents._core.wire import Subjects
from jetagents._host.partitions import Partitions, Puller
from jetagents._host.supervisor import Supervisor
from jetagents._nats.api import JSApiError, Topology
from jetagents._obs.metrics import Metrics
from jetagents._obs.telemetry import HostTelemetry
from jetagents._settings import HostSettings
from jetagents.testing.clock import ManualClock


class _Host:
    supervisor = Supervisor()
    owned: list[int] = []


class Consumers:
    """Records every call (the high lane's apart, ADR 0058); ``exists``/``ensure`` answer as told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.high_calls: list[tuple[Any, ...]] = []
        self.connected = True
        self.exists_answer: bool | Exception = True
        self.ensure_fails = 0
        self.ensure_gate: asyncio.Event | None = None  # set: ensure waits for it (an election)
        self.pulled = asyncio.Event()

    def _log(self, high: bool) -> list[tuple[Any, ...]]:
        return self.high_calls if high else self.calls

    async def ensure(self, partition: int, cfg: dict[str, Any], *, reset: bool = False, high: bool = False) -> None:
        self._log(high).append(
            ("ensure", partition, reset, cfg["filter_subject"]) if high else ("ensure", partition, reset)
        )
        if high:
            return
        if self.ensure_gate is not None:
            await self.ensure_gate.wait()
        if self.ensure_fails:
            self.ensure_fails -= 1
            raise Unavailable("no responders")

    async def rewind(self, partition: int, cfg: dict[str, Any], *, high: bool = False) -> str:
        self._log(high).append(("rewind", partition))
        return "rewound"

    async def exists(self, partition: int, *, high: bool = False) -> bool:
        self._log(high).append(("exists", partition))
        if isinstance(self.exists_answer, Exception):
            raise self.exists_answer
        return self.exists_answer

    async def delete(self, partition: int, *, high: bool = False) -> None:
        self._log(high).append(("delete", partition))

    async def unpin(self, partition: int, group: str, *, high: bool = False) -> None:
        self._log(high).append(("unpin", partition, group))

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
        self._log(high).append(("pull", partition, reply, batch, pin_id))
        if not high:
            self.pulled.set()


def _parts(
    *, claims: bool = True, room: int = 1000, high_room: int | None = None
) -> tuple[Partitions, Consumers, ManualClock, Supervisor]:
    clock = ManualClock()
    settings = HostSettings(partitions=4, pull_batch=10)
    supervisor = Supervisor()
    parts = Partitions(
        settings,
        Topology(subjects=Subjects("agt"), partitions=4),
        clock,
        supervisor,
        Metrics(HostTelemetry(_Host(), "h-parts")),
        structlog.get_logger("test"),
        lambda high: (room if high_room is None else high_room) if high else room,
        claims=claims,
    )
    consumers = Consumers()
    parts.bind(consumers, "_INBOX.pull")  # type: ignore[arg-type]
    return parts, consumers, clock, supervisor


async def test_start_resets_or_rewinds_the_consumer_then_pulls_a_batch() -> None:
    parts, consumers, _, supervisor = _parts()
    await parts.start(1)
    await parts.start(2, rewind=True)
    await asyncio.wait_for(consumers.pulled.wait(), 5)
    assert ("ensure", 1, True) in consumers.calls and ("rewind", 2) in consumers.calls
    pulls = [c for c in consumers.calls if c[0] == "pull"]
    assert {(c[1], c[3]) for c in pulls} == {(1, 10), (2, 10)}
    assert all(c[2].startswith(f"_INBOX.pull.{c[1]}.") for c in pulls)
    assert parts.owned == [1, 2] and parts.owned_set == {1, 2}
    await parts.stop(1)
    assert parts.owned == [2] and 1 not in parts.owned_set
    await parts.stop(2)
    assert parts.get(1) is None and supervisor.tasks("pullers") == [] and parts.owned == []


async def _serving(partition: int) -> tuple[Partitions, Consumers, ManualClock, Supervisor, Puller]:
    """Parts serving ``partition``, its puller, and the consumer calls made so far forgotten."""
    parts, consumers, clock, supervisor = _parts()
    await parts.start(partition)
    puller = parts.get(partition)
    assert puller is not None
    consumers.calls.clear()
    return parts, consumers, clock, supervisor, puller


async def test_no_room_means_no_pull() -> None:
    parts, consumers, _, supervisor = _parts(room=0)
    await parts.start(0)
    await asyncio.sleep(0.05)
    assert [c for c in consumers.calls if c[0] == "pull"] == []
    await supervisor.cancel("pullers")


async def test_no_responders_recreates_the_consumer_at_most_once_a_second() -> None:
    parts, consumers, clock, supervisor, puller = await _serving(3)
    parts.on_status(puller, "1", "503")
    parts.on_status(puller, "2", "503")  # within the second: not again
    await supervisor.drain("side", 1.0)
    assert consumers.calls.count(("ensure", 3, False)) == 1
    assert parts.metrics.stats["consumers_recreated"] == 1
    clock.advance(1.5)
    parts.on_status(puller, "3", "503")
    await supervisor.drain("side", 1.0)
    assert consumers.calls.count(("ensure", 3, False)) == 2
    await supervisor.cancel("pullers")


async def test_one_recreation_at_a_time_while_it_waits_out_an_election() -> None:
    parts, consumers, clock, supervisor, puller = await _serving(2)
    consumers.ensure_gate = asyncio.Event()  # the adapter waits for the consumer's new leader
    for token in "123":
        clock.advance(1.5)
        parts.on_status(puller, token, "503")  # the pulls keep meeting "no responders"
        await asyncio.sleep(0)
    assert consumers.calls.count(("ensure", 2, False)) == 1
    consumers.ensure_gate.set()
    await supervisor.drain("side", 1.0)
    clock.advance(1.5)
    parts.on_status(puller, "4", "503")  # done: the next one may recreate again
    await supervisor.drain("side", 1.0)
    assert consumers.calls.count(("ensure", 2, False)) == 2
    await supervisor.cancel("pullers")


async def test_recreations_that_keep_failing_escalate_to_delete_and_create() -> None:
    parts, consumers, clock, supervisor, puller = await _serving(0)
    consumers.ensure_fails = 2
    for _ in range(3):
        clock.advance(1.5)
        parts.on_status(puller, "t", "503")
        await supervisor.drain("side", 1.0)
    assert [c for c in consumers.calls if c[0] == "ensure"] == [("ensure", 0, False)] * 2 + [("ensure", 0, True)]
    await supervisor.cancel("pullers")


async def test_pinned_elsewhere_unpins_only_with_a_claim() -> None:
    for claims in (True, False):
        parts, consumers, _, supervisor = _parts(claims=claims)
        await parts.start(1)
        puller = parts.get(1)
        assert puller is not None
        puller.pin_id = "old"
        parts.on_status(puller, "1", "423")
        await supervisor.drain("side", 1.0)
        assert puller.pin_id is None
        assert (("unpin", 1, "jetagents") in consumers.calls) is claims
        await supervisor.cancel("pullers")


async def test_revival_deletes_a_consumer_that_exists_and_creates_one_that_does_not() -> None:
    cases: list[tuple[bool | Exception, list[str]]] = [
        (False, ["exists", "ensure"]),
        (True, ["exists", "delete", "ensure"]),
        (Unavailable("no leader"), ["exists", "delete", "ensure"]),
        (JSApiError(10003, 400, "bad request"), ["exists"]),  # the server refused: give up this time
    ]
    for answer, expected in cases:
        parts, consumers, _, supervisor = _parts()
        await parts.start(2)
        puller = parts.get(2)
        assert puller is not None
        consumers.calls.clear()
        consumers.exists_answer = answer
        puller.reviving = True
        await puller.revive()
        assert [c[0] for c in consumers.calls if c[0] != "pull"] == expected, answer
        assert not puller.reviving
        await supervisor.cancel("pullers")


async def test_the_high_lane_has_its_own_consumer_inbox_room_and_statuses() -> None:
    """ADR 0058: each partition also has the high lane's consumer, pulled with its own credit
    into room the normal lane does not have; its statuses reach its own puller."""
    parts, consumers, _, supervisor = _parts(room=0, high_room=5)
    await parts.start(1)
    await parts.start(2, rewind=True)
    assert ("ensure", 1, True, "agt.ph.1.>") in consumers.high_calls and ("rewind", 2) in consumers.high_calls
    deadline = asyncio.get_running_loop().time() + 5
    while len([c for c in consumers.high_calls if c[0] == "pull"]) < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    pulls = [c for c in consumers.high_calls if c[0] == "pull"]
    assert {(c[1], c[3]) for c in pulls} == {(1, 5), (2, 5)}
    assert all(c[2].startswith(f"_INBOX.pull.h{c[1]}.") for c in pulls)
    assert [c for c in consumers.calls if c[0] == "pull"] == []  # the normal lane has no room
    high = parts.get(1, high=True)
    assert high is not None and high.high and parts.get(1) is not high
    token = pulls[0][2].rsplit(".", 1)[1] if pulls[0][1] == 1 else pulls[1][2].rsplit(".", 1)[1]
    high.pin_id = "old"
    parts.on_pull_status(f"_INBOX.pull.h1.{token}", {"Status": "423"})
    await supervisor.drain("side", 1.0)
    assert high.pin_id is None and ("unpin", 1, "jetagents") in consumers.high_calls
    assert not any(c[0] == "unpin" for c in consumers.calls)
    await parts.stop(1)
    assert parts.get(1, high=True) is None and parts.owned == [2]
    await parts.stop(2)
    assert supervisor.tasks("pullers") == []
