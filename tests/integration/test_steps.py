"""Durable steps with a real nats-server and an in-process host (ADR 0042 steps 1-2): a step
runs once and is replayed from the journal on a re-run; a reordered step blocks the journal
with ``nondeterministic``; a re-send after the code is restored finishes it."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter as Tally
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamConfig

from jetagents import Client, ClientSettings, Host, JournalTooLong, NatsServer, NonDeterministic, Registry
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.durable_agents import FX_STREAM, FX_SUBJECTS, Job
from tests.integration.helpers import commits, eventually, read_all


@pytest.fixture(autouse=True)
def _code() -> Iterator[None]:
    yield
    Job.ORDER, Job.FAIL_ONCE = None, set()


@pytest.fixture
async def job_client(nats_server: NatsServer) -> AsyncIterator[Client]:
    async with Host(host_settings(nats_server.url), Registry([*EXAMPLE_AGENTS, Job])):
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        await client.nc.jetstream().add_stream(StreamConfig(name=FX_STREAM, subjects=[FX_SUBJECTS]))
        try:
            yield client
        finally:
            await client.close()


async def effects(client: Client, run: str) -> Tally[str]:
    """How often each step did what (``<name>.enter``, ``<name>.done``), counted outside the host."""
    msgs = await read_all(client.nc, FX_STREAM)
    return Tally(subj.split(".", 2)[2] for _, subj, _, _ in msgs if subj.startswith(f"stepfx.{run}."))


async def test_steps_run_once_and_a_retry_replays_them(job_client: Client) -> None:
    ref = job_client.agent("job", "j1")
    Job.FAIL_ONCE = {"s3"}  # the first run fails in step 3: retried in place, from the journal
    keys = await ref.request("run", {"run": "r1"}, command_id="r1", timeout=20)
    assert keys == [f"job.j1:r1#{i}" for i in range(5)]
    fx = await effects(job_client, "r1")
    assert [fx[f"s{i}.done"] for i in range(5)] == [1] * 5
    assert [fx[f"s{i}.enter"] for i in range(5)] == [1, 1, 1, 2, 1]  # s0-s2 were not run again
    log = await commits(job_client.nc, "job", "j1")
    assert [c["n"] for c in log] == list(range(1, 7))
    assert [c["j"]["k"] for c in log] == ["step"] * 5 + ["end"]
    assert [c["_headers"]["Nats-Msg-Id"] for c in log] == [f"job.j1:r1#{i}" for i in range(5)] + ["job.j1:r1"]
    assert log[-1]["events"] == [{"type": "Finished", "data": {"run": "r1"}}] and log[-1]["result"] == keys
    again = await ref.request_reply("run", {"run": "r1"}, command_id="r1", timeout=10)
    assert again.duplicate and again.result == keys  # the closing commit answers a re-send
    assert await ref.request("finished") == ["r1"]


async def test_a_reordered_step_blocks_the_journal_and_a_resend_after_the_fix_finishes(
    job_client: Client, tmp_path: Path
) -> None:
    ref = job_client.agent("job", "j2")
    (tmp_path / "pre-s3").touch()  # the action stops in step 3, steps 0-2 journaled
    call: Any = ref.request_async("run", {"run": "r2", "gates": str(tmp_path)}, command_id="r2", timeout=30)

    async def journaled() -> bool:
        return len(await commits(job_client.nc, "job", "j2")) == 3

    await eventually(journaled, 10)
    Job.ORDER = ["s0", "s2", "s1", "s3", "s4"]  # the code changes while the action is in flight
    Job.FAIL_ONCE = {"s3"}  # and the run fails: the retry runs the new code against the journal
    (tmp_path / "pre-s3").unlink()
    with pytest.raises(NonDeterministic, match=r"reached step 1 's2', but its journal has step 1 's1'") as info:
        await call
    assert info.value.details == {"step": "s2", "position": 1, "journaled": "s1"}
    log = await commits(job_client.nc, "job", "j2")
    assert [c["j"]["k"] for c in log] == ["step"] * 3 + ["blocked"]  # open, not closed
    assert log[-1]["j"]["error"]["code"] == "nondeterministic" and log[-1]["j"]["i"] == 1
    fx = await effects(job_client, "r2")
    assert [fx[f"s{i}.done"] for i in range(3)] == [1, 1, 1] and fx["s3.done"] == 0

    Job.ORDER = None  # the code is restored; the same command id re-runs it from the journal
    keys = await ref.request("run", {"run": "r2", "gates": str(tmp_path)}, command_id="r2", timeout=20)
    assert keys == [f"job.j2:r2#{i}" for i in range(5)]
    fx = await effects(job_client, "r2")
    assert [fx[f"s{i}.done"] for i in range(5)] == [1] * 5
    assert [c["j"]["k"] for c in await commits(job_client.nc, "job", "j2")] == ["step"] * 3 + ["blocked"] + [
        "step"
    ] * 2 + ["end"]


async def test_calls_to_other_agents_are_steps(job_client: Client) -> None:
    ref = job_client.agent("job", "j3")
    Job.FAIL_ONCE = {"between"}  # the first run fails after the first call: the retry replays it
    assert await ref.request("relay", {"run": "r3", "counter": "c3"}, command_id="r3", timeout=20) == [1, 11]
    assert await job_client.agent("counter", "c3").request("get") == 11  # each call applied once
    callee = await commits(job_client.nc, "counter", "c3")
    assert [c["cmd"] for c in callee] == ["job.j3:r3#0", "job.j3:r3#2"]  # the steps' keys
    names = [c["j"].get("name") for c in await commits(job_client.nc, "job", "j3")]
    assert names == ["call:counter/c3.increment", "between", "call:counter/c3.increment", None]


async def test_a_journal_past_journal_entries_max_is_blocked_and_resumes_under_a_higher_one(
    nats_server: NatsServer,
) -> None:
    url = nats_server.url
    client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
    try:
        await client.nc.jetstream().add_stream(StreamConfig(name=FX_STREAM, subjects=[FX_SUBJECTS]))
        ref = client.agent("job", "j9")
        async with Host(host_settings(url, journal_entries_max=3), Registry([Job])):
            with pytest.raises(JournalTooLong) as info:
                await ref.request("run", {"run": "r9"}, command_id="r9", timeout=20)
        assert info.value.code == "journal_too_long" and isinstance(info.value, NonDeterministic)
        assert info.value.details == {"step": "s3", "position": 3, "max": 3}
        log = await commits(client.nc, "job", "j9")
        assert [c["j"]["k"] for c in log] == ["step"] * 3 + ["blocked"]  # open: nothing was repeated
        assert log[-1]["j"]["error"]["code"] == "journal_too_long"

        async with Host(host_settings(url), Registry([Job])):  # the limit raised (the default)
            keys = await ref.request("run", {"run": "r9"}, command_id="r9", timeout=20)
        assert keys == [f"job.j9:r9#{i}" for i in range(5)]
        fx = await effects(client, "r9")
        assert [fx[f"s{i}.done"] for i in range(5)] == [1] * 5
    finally:
        await client.close()


async def test_jetagents_resume_runs_a_blocked_journal_again_after_the_fix(job_client: Client, tmp_path: Path) -> None:
    ref = job_client.agent("job", "j3")
    (tmp_path / "pre-s2").touch()  # the action stops in step 2, steps 0-1 journaled
    call: Any = ref.request_async("run", {"run": "r3", "gates": str(tmp_path)}, command_id="r3", timeout=30)

    async def journaled() -> bool:
        return len(await commits(job_client.nc, "job", "j3")) == 2

    await eventually(journaled, 10)
    Job.ORDER = ["s1", "s0", "s2", "s3", "s4"]  # a code change while in flight, and a failing run
    Job.FAIL_ONCE = {"s2"}
    (tmp_path / "pre-s2").unlink()
    with pytest.raises(NonDeterministic):
        await call
    assert await ref.resume("nothing") == {"resumed": False, "state": "unknown"}

    Job.ORDER = None  # the code is restored: the operator resumes it without knowing its parameters
    url = job_client.nc.connected_url
    assert url is not None
    cli = await asyncio.create_subprocess_exec(  # the host runs in this event loop: not subprocess.run
        sys.executable, "-m", "jetagents.cli", "resume", "job/j3", "r3", "--nats-url", url.geturl(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, err.decode()
    assert json.loads(out) == {"ok": True, "result": {"resumed": True, "state": "finished"}}
    keys = [f"job.j3:r3#{i}" for i in range(5)]
    assert await ref.result("r3", timeout=10) == keys
    fx = await effects(job_client, "r3")
    assert [fx[f"s{i}.done"] for i in range(5)] == [1] * 5
    assert [fx[f"s{i}.enter"] for i in range(5)] == [1, 1, 2, 1, 1]  # s0, s1 were not run again
    assert await ref.resume("r3") == {"resumed": False, "state": "finished"}
