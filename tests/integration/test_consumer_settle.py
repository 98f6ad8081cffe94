"""A partition consumer's call that gets no answer in time is followed up by reading the
consumer, not by giving up on it and, at the next start, deleting it (ADR 0037, session 7).

After a NATS node dies, a consumer whose raft group it led, or a new one whose preferred
peer it is, elects a leader in nats-server's election timeout (4-9 s, more under load), and
only that leader answers ``CREATE``, ``DELETE`` and ``RESET`` (its other members answer
``INFO`` with "temporarily unavailable"): the host's round trip (5 s) timed out on calls the
server applied. A partition start failed, its claim was released, and the next start, seeing
no previous holder, deleted the consumer whose election was under way and created a new one,
whose create timed out again: after a node kill one partition stayed unserved for over 40 s.

Here the answers are lost on purpose, at the adapter's one API call, on a real server: each
call is applied, and its answer never reaches the host, as when the consumer's leader is
elected after the host stopped waiting. ``lose`` says how many answers of each operation go.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents._core.errors import Unavailable
from jetagents._core.wire import Subjects
from jetagents._nats import consumers as consumers_module
from jetagents._nats.api import Topology, connect, ensure_topology, js_api
from jetagents._nats.consumers import PartitionConsumers
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings


class LostAnswers:
    """``js_api`` for the adapter, sending every call and dropping the answers of the first
    ``lose[op]`` consumer calls of each operation (``CREATE``, ``INFO``...)."""

    def __init__(self, **lose: int) -> None:
        self.lose = Counter(lose)
        self.sent: Counter[str] = Counter()

    async def __call__(self, nc: Any, subject: str, payload: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
        answer = await js_api(nc, subject, payload, timeout_s)
        if not subject.startswith("$JS.API.CONSUMER."):
            return answer
        op = subject.split(".")[3]  # $JS.API.CONSUMER.<op>.<stream>.<consumer>
        self.sent[op] += 1
        if self.lose[op] > 0:
            self.lose[op] -= 1
            raise Unavailable(f"JetStream API {subject} timed out")  # applied; the answer is lost
        return answer


@pytest.fixture
def lost(monkeypatch: pytest.MonkeyPatch) -> LostAnswers:
    answers = LostAnswers()
    monkeypatch.setattr(consumers_module, "js_api", answers)
    return answers


async def _consumers(url: str) -> tuple[Any, Topology, PartitionConsumers]:
    nc = await connect(url, name="settle-test")
    topo = Topology(Subjects("agt"), partitions=2)
    await ensure_topology(nc, topo, 5.0)
    return nc, topo, PartitionConsumers(nc, topo, timeout_s=2.0)


def _cfg(topo: Topology, partition: int) -> dict[str, Any]:
    return topo.consumer_config(partition, ack_wait_s=2.0, max_deliver=-1, max_ack_pending=100)


async def test_a_create_applied_without_an_answer_stands(nats_server: NatsServer, lost: LostAnswers) -> None:
    nc, topo, consumers = await _consumers(nats_server.url)
    try:
        await consumers.ensure(0, _cfg(topo, 0))  # the first consumer, nothing lost
        created = (await js_api(nc, "$JS.API.CONSUMER.INFO.AGT_CMD.p0", None, 2.0))["created"]
        lost.lose.update(DELETE=1, CREATE=1)
        lost.sent.clear()
        await consumers.ensure(0, _cfg(topo, 0), reset=True)  # what a start after a live holder does
        # each sent once: read, not sent again (a delete again would delete the new consumer)
        assert lost.sent["DELETE"] == 1 and lost.sent["CREATE"] == 1
        info = await js_api(nc, "$JS.API.CONSUMER.INFO.AGT_CMD.p0", None, 2.0)
        assert info["created"] != created  # recreated, as asked
        assert info["config"]["filter_subject"] == _cfg(topo, 0)["filter_subject"]
    finally:
        await nc.close()


async def test_a_consumer_without_a_leader_is_waited_for_not_recreated(
    nats_server: NatsServer, lost: LostAnswers
) -> None:
    nc, topo, consumers = await _consumers(nats_server.url)
    try:
        await consumers.ensure(1, _cfg(topo, 1))
        created = (await js_api(nc, "$JS.API.CONSUMER.INFO.AGT_CMD.p1", None, 2.0))["created"]
        lost.lose.update(INFO=3, RESET=1)  # no leader for three reads, then a lost reset
        lost.sent.clear()
        assert await consumers.rewind(1, _cfg(topo, 1)) == "rewound"  # the failover path
        assert lost.sent["DELETE"] == lost.sent["CREATE"] == 0
        assert lost.sent["INFO"] >= 4 and lost.sent["RESET"] == 2
        info = await js_api(nc, "$JS.API.CONSUMER.INFO.AGT_CMD.p1", None, 2.0)
        assert info["created"] == created  # the same consumer, rewound in place
    finally:
        await nc.close()


async def test_a_host_whose_consumer_creates_go_unanswered_serves_its_partitions(
    nats_server: NatsServer, lost: LostAnswers
) -> None:
    # Every create is applied and never answered: before, each start failed, released the
    # claim, and the next start deleted the consumer and created it again, for ever.
    lost.lose.update(CREATE=1_000_000)
    settings = host_settings(nats_server.url, partitions=2)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=2, request_timeout_s=30))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
            for agent in ("a", "b"):  # partitions 0 and 1
                ref = client.agent("counter", agent)
                assert await ref.request("increment", {"by": 1}) == 1  # a durable command, pulled
            assert sorted(host.partitions.owned) == [0, 1]
            assert lost.sent["CREATE"] >= 4  # both lanes' consumers of both partitions, each once
            assert lost.sent["DELETE"] <= lost.sent["CREATE"]
    finally:
        await client.close()
