"""The simulation harness itself (jetagents.testing.simulation), driven by a toy node.

The toy is NOT the host: it is the smallest writer that uses the ports the way a host must
(append fenced by the last sequence it read, dedup by the command ids in the log), so these
tests show the driver, the faults and the checker work: a correct toy passes under every
fault, and each invariant catches the toy bug that breaks it. The simulation of the real
host's parts is tests/unit/test_cluster_sim.py.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson
import pytest

from jetagents._core.errors import JetAgentsError
from jetagents._core.ids import partition_of
from jetagents._core.wire import H_COMMAND_ID, H_HOST, H_MSG_ID
from jetagents._host.coordination import Coordinator
from jetagents._host.ports import WrongLastSequence
from jetagents.testing.simulation import Delivered, NodePorts, SimConfig, Simulation, Violation


class ToyNode:
    def __init__(self, ports: NodePorts, *, fenced: bool = True, dedup: bool = True, gapless: bool = True) -> None:
        self.ports = ports
        self.coordinator = Coordinator(ports.host_id, ports.store, ports.clock, ports.cluster, self)
        self.started: set[int] = set()
        self.cache: dict[str, tuple[int, int, set[str]]] = {}  # subject -> (last seq, n, cmd ids)
        self.fenced, self.dedup, self.gapless = fenced, dedup, gapless

    # coordinator hooks
    async def start_partition(self, partition: int, *, rewind: bool = False) -> None:
        self.started.add(partition)

    async def stop_partition(self, partition: int, *, graceful: bool) -> None:
        self.started.discard(partition)
        self.cache.clear()

    def load(self) -> dict[str, Any]:
        return {}

    async def event(self, kind: str, data: dict[str, Any]) -> None:
        return None

    def serves(self, partition: int) -> bool:
        return partition in self.started

    def takes(self, partition: int) -> bool:
        return partition in self.started  # no pullers: the driver delivers what it serves

    def crash(self) -> None:
        self.cache.clear()

    async def handle(self, d: Delivered) -> None:
        _, _, p, agent_type, agent_id = d.subject.split(".")
        subject = self.ports.subjects.evt(agent_type, agent_id)
        cmd = d.headers[H_COMMAND_ID]
        events = self.ports.events
        try:
            if subject not in self.cache:
                log = await events.read_subject(subject, 1, 10_000)
                newest = max((orjson.loads(m.data)["own"] for m in log), default=0)
                if self.fenced and newest > self.coordinator.claim_revs.get(int(p), 0):
                    await self.ports.publisher.publish(d.ack, b"-NAK")
                    return
                ids = {orjson.loads(m.data)["cmd"] for m in log}
                self.cache[subject] = (log[-1].seq if log else 0, len(log), ids)
            last, n, ids = self.cache[subject]
            if self.dedup and cmd in ids:
                await self.ports.publisher.publish(d.ack, b"+ACK")
                return
            own = self.coordinator.claim_revs.get(int(p), 0)
            body = orjson.dumps({"n": n + (1 if self.gapless else 2), "cmd": cmd, "own": own})
            hdrs = {H_MSG_ID: f"{agent_type}.{agent_id}:{cmd}", H_COMMAND_ID: cmd, H_HOST: self.ports.host_id}
            expected = last if self.fenced else (await events.last(subject) or _Zero()).seq
            done = await events.append(subject, body, hdrs, expected_last_subject_seq=expected)
            if done.duplicate:  # already in the log: the stream's window caught it
                self.cache.pop(subject, None)
            else:
                self.cache[subject] = (done.seq, n + 1, ids | {cmd})
            await self.ports.publisher.publish(d.ack, b"+ACK")
        except (WrongLastSequence, JetAgentsError):
            self.cache.pop(subject, None)
            await self.ports.publisher.publish(d.ack, b"-NAK")


class _Zero:
    seq = 0


FAST = SimConfig(rounds=200, quiet_rounds=60, domain_p=0.0, invalid_p=0.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("window_s", [120.0, 0.5])
async def test_a_correct_toy_passes_under_every_fault(seed: int, window_s: float) -> None:
    result = await Simulation(seed, ToyNode, dataclasses.replace(FAST, duplicate_window_s=window_s)).run()
    assert result.commits >= result.commands > 50
    assert sum(result.faults.values()) >= 3


async def test_two_runs_of_one_seed_have_the_same_history() -> None:
    a = await Simulation(5, ToyNode, FAST).run()
    b = await Simulation(5, ToyNode, FAST).run()
    assert a.history == b.history
    c = await Simulation(6, ToyNode, FAST).run()
    assert c.history != a.history


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ({"fenced": False}, "after a newer owner's|claim .* used by|a gap"),
        ({"dedup": False}, "applied twice"),
        ({"gapless": False}, "a gap"),
    ],
)
async def test_each_toy_bug_is_caught(bug: dict[str, bool], message: str) -> None:
    def factory(ports: NodePorts) -> ToyNode:
        return ToyNode(ports, **bug)

    # a duplicate window shorter than a redelivery: only the writer's own dedup is left
    cfg = dataclasses.replace(FAST, duplicate_window_s=0.5)
    for seed in range(20):
        try:
            await Simulation(seed, factory, cfg).run()
        except Violation as v:
            assert re.search(message, str(v)), v
            return
    pytest.fail(f"no seed of 20 caught {bug}")


def test_partition_of_matches_the_stored_subject() -> None:
    assert partition_of("counter", "a1", 8) in range(8)
