"""Work queues and future combinators against a real nats-server (ADR 0050): three workers
share a queue; a worker that dies holding a job loses it to another after the visibility
timeout; a job that always fails is retried and dead-lettered once; a job that is not JSON is
dead-lettered at once. ``gather``/``first`` cancel the losers and time out with a typed error."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from jetagents import AgentTimeout, Client, ClientSettings, NatsServer
from jetagents._client.workqueue import run_stages
from jetagents._core.wire import Subjects
from jetagents._nats.workqueue import WorkStore
from tests.integration.helpers import eventually, read_all


@pytest.fixture
async def clients(nats_server: NatsServer) -> AsyncIterator[list[Client]]:
    made = [
        await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=5))
        for _ in range(4)
    ]
    await WorkStore(made[0].nc, Subjects(), timeout_s=5).ensure(max_msg_bytes=64 * 1024)  # a host does this
    try:
        yield made
    finally:
        for c in made:
            with contextlib.suppress(Exception):  # one is closed by the test (a worker that dies)
                await c.close()


async def test_workers_share_a_queue_with_retries_visibility_and_dead_letters(clients: list[Client]) -> None:
    producer, *workers = clients
    q = producer.work_queue("jobs", visibility_s=1.5, max_attempts=3)
    for n in range(30):
        await q.put({"n": n}, msg_id=f"job-{n}")
    await q.put({"n": 99})  # always fails
    await producer.nc.jetstream().publish("agt.work.jobs", b"{oops")  # not JSON
    done: Counter[int] = Counter()
    by_worker: Counter[int] = Counter()
    attempts_99: list[int] = []

    def handler(w: int) -> Callable[[dict[str, int]], Awaitable[None]]:
        async def handle(data: dict[str, int]) -> None:
            if data["n"] == 99:
                attempts_99.append(1)
                raise RuntimeError("job 99 always fails")
            await asyncio.sleep(0.01)
            done[data["n"]] += 1
            by_worker[w] += 1

        return handle

    # a worker that takes one job and dies holding it (never acknowledges, connection gone)
    crasher = workers[2].work_queue("jobs", visibility_s=1.5, max_attempts=3)
    stolen = None
    async for job in crasher.jobs():
        stolen = job.data
        break
    await workers[2].close()
    stop = asyncio.Event()
    runs = [
        asyncio.create_task(
            w.work_queue("jobs", visibility_s=1.5, max_attempts=3).process(handler(i), concurrency=4, stop=stop)
        )
        for i, w in enumerate(workers[:2])
    ]
    try:
        await eventually(lambda: len(done) == 30 and len(attempts_99) == 3, 30, 0.05)

        async def two_dead() -> bool:
            return len(await read_all(producer.nc, "AGT_WORKDLQ")) >= 2

        await eventually(two_dead, 10)
    finally:
        stop.set()
        await asyncio.gather(*runs)
    assert stolen is not None and done[stolen["n"]] >= 1  # the dead worker's job was done by another
    assert all(done[n] >= 1 for n in range(30))
    assert len(by_worker) == 2  # both live workers took jobs
    dead = [orjson.loads(d) for _, _, _, d in await read_all(producer.nc, "AGT_WORKDLQ")]
    assert sorted(d["error"]["code"] for d in dead) == ["internal", "malformed"]
    failing = next(d for d in dead if d["error"]["code"] == "internal")
    assert orjson.loads(failing["payload"]) == {"n": 99} and failing["deliveries"] == 3
    state = await producer.nc.jetstream().stream_info("AGT_WORK")
    assert state.state.messages == 0  # every job acknowledged or dead-lettered


async def test_a_pipeline_of_two_stages_feeds_results_on_and_dead_letters_a_failing_job(
    clients: list[Client],
) -> None:
    producer, worker = clients[:2]
    squares: list[int] = []

    def square(data: dict[str, int]) -> dict[str, int]:
        if data["n"] == 7:
            raise RuntimeError("stage one refuses 7")
        return {"sq": data["n"] ** 2}

    async def collect(data: dict[str, int]) -> None:
        squares.append(data["sq"])

    for n in range(10):
        await producer.work_queue("stage1").put({"n": n})
    stop = asyncio.Event()
    stages = [
        (worker.work_queue("stage1", max_attempts=2), square),
        (worker.work_queue("stage2", max_attempts=2), collect),
    ]
    run = asyncio.create_task(run_stages(stages, concurrency=2, stop=stop))
    try:

        async def settled() -> bool:
            return len(squares) == 9 and len(await read_all(producer.nc, "AGT_WORKDLQ")) == 1

        await eventually(settled, 30, 0.05)
    finally:
        stop.set()
        await run
    assert sorted(squares) == [n * n for n in range(10) if n != 7]
    [(_, subject, _, body)] = await read_all(producer.nc, "AGT_WORKDLQ")
    letter = orjson.loads(body)
    assert subject == "agt.workdlq.stage1" and orjson.loads(letter["payload"]) == {"n": 7}
    assert letter["deliveries"] == 2
    state = await producer.nc.jetstream().stream_info("AGT_WORK")
    assert state.state.messages == 0  # every job of both stages acknowledged or dead-lettered


async def test_gather_and_first_cancel_the_losers_and_time_out(clients: list[Client]) -> None:
    client = clients[0]
    cancelled: list[str] = []

    async def slow(name: str, delay_s: float, fail: bool = False) -> str:
        try:
            await asyncio.sleep(delay_s)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        if fail:
            raise ValueError(name)
        return name

    assert await client.gather(slow("a", 0.05), slow("b", 0.01)) == ["a", "b"]
    assert await client.first(slow("fast", 0.01), slow("slow", 5)) == "fast"
    assert cancelled == ["slow"]
    assert await client.first(slow("bad", 0.01, fail=True), slow("ok", 0.05)) == "ok"
    with pytest.raises(ValueError, match="boom"):
        await client.gather(slow("boom", 0.01, fail=True), slow("other", 5))
    assert cancelled[-1] == "other"
    with pytest.raises(AgentTimeout) as err:
        await client.gather(slow("x", 0.01), slow("y", 5), timeout_s=0.2)
    assert err.value.details == {"done": 1} and cancelled[-1] == "y"
    with pytest.raises(AgentTimeout):
        await client.first(slow("p", 5), slow("q", 5), timeout_s=0.1)
    assert set(cancelled[-2:]) == {"p", "q"}


async def test_then_chains_a_result_and_times_out_the_whole_chain(clients: list[Client]) -> None:
    client = clients[0]
    assert await client.then(asyncio.sleep(0.01, 20), lambda v: v + 1) == 21

    async def double(v: int) -> int:
        return v * 2

    assert await client.then(asyncio.sleep(0.01, 4), double, timeout_s=5) == 8
    called: list[int] = []

    async def boom() -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await client.then(boom(), called.append)
    assert called == []  # a failure skips the continuation
    cancelled: list[str] = []

    async def slow(v: int) -> int:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append("continuation")
            raise
        return v

    with pytest.raises(AgentTimeout):
        await client.then(asyncio.sleep(0.01, 1), slow, timeout_s=0.2)  # the continuation is late
    assert cancelled == ["continuation"]
    # composes with gather: a chain per request, all bounded by one timeout
    chained = [client.then(asyncio.sleep(0.01 * i, i), lambda v: v * 10) for i in range(3)]
    assert await client.gather(*chained, timeout_s=5) == [0, 10, 20]


async def test_send_many_stores_every_command_once(clients: list[Client], nats_server: NatsServer) -> None:
    from jetagents import Host, Registry
    from jetagents.examples import EXAMPLE_AGENTS
    from tests.conftest import host_settings

    client = clients[0]
    await client.ensure_topology(partitions=8)
    batch = [("counter", f"m{i % 10}", "increment", {"by": 1}) for i in range(300)]
    ids = await client.send_many(batch)
    assert len(set(ids)) == 300
    assert await client.send_many([]) == []
    state = await client.nc.jetstream().stream_info("AGT_CMD")
    assert state.state.messages == 300  # stored once each, before any host runs them
    async with Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS)):
        for i in range(10):

            async def thirty(agent: str = f"m{i}") -> bool:
                return await client.agent("counter", agent).request("get", delivery="at-most-once") == 30

            await eventually(thirty, 30, 0.1)
