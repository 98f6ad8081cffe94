"""Durable steps across SIGKILL (ADR 0042 step 1): real host processes, real nats-server.

A 5-step action (``tests/durable_agents.py``) whose steps record their effects in a stream
of the test's own (outside the host). The host is killed at four representative points and
restarted each time; the command stays unacknowledged while it runs, so its redelivery drives
the re-run on the next host:

* a boundary: step 0 journaled, step 1 started but not yet effective (held before its effect);
* inside a step: step 2's effect done, its journal entry not yet appended (held after it);
* the last boundary: steps 0-3 journaled, step 4 held before its effect;
* after the last step: steps 0-4 journaled, the closing commit not made (the re-run replays
  all five from the journal and closes once).

Every other boundary is the same case as the first (a journaled step, the next one not yet
effective); the four kills keep the test near 30 s. Afterwards every completed step ran
exactly once, step 2 twice with the same idempotency key, the action finished once, the
caller got the result and a re-send of the command id gets it from the record.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamConfig

from jetagents import Client, ClientSettings, NatsServer
from tests.durable_agents import FX_STREAM, FX_SUBJECTS
from tests.integration.helpers import commits, eventually, read_all

pytestmark = pytest.mark.chaos

AGENTS = json.dumps(["jetagents.examples:EXAMPLE_AGENTS", "tests.durable_agents:AGENTS"])


async def _records(client: Client) -> list[tuple[str, bytes]]:
    return [(subj.split(".", 2)[2], data) for _, subj, _, data in await read_all(client.nc, FX_STREAM)]


async def test_sigkill_at_step_boundaries_and_inside_a_step(
    nats_server: NatsServer, host_process_factory: Any, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    for held in ("pre-s1", "post-s2", "pre-s4", "pre-end"):
        (gates / held).touch()
    url = nats_server.url
    hp = host_process_factory(url, JETAGENTS_AGENTS=AGENTS).start()
    client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
    try:
        await hp.wait_ready(client)
        await client.nc.jetstream().add_stream(StreamConfig(name=FX_STREAM, subjects=[FX_SUBJECTS]))
        ref = client.agent("job", "k1")
        call = asyncio.create_task(ref.request("run", {"run": "k1", "gates": str(gates)}, command_id="k1", timeout=50))

        async def count(what: str, n: int) -> None:
            async def reached() -> bool:
                return Tally(name for name, _ in await _records(client))[what] >= n

            await eventually(reached, 20, 0.05)

        async def restart() -> Any:
            hp.kill()
            return host_process_factory(url, JETAGENTS_AGENTS=AGENTS).start()

        # 1. a boundary: step 0 journaled, step 1 entered (not effective yet)
        await count("s1.enter", 1)
        assert [c["j"]["i"] for c in await commits(client.nc, "job", "k1")] == [0]
        hp = await restart()
        await count("s1.enter", 2)  # the redelivery re-ran the action; step 0 did not run again
        (gates / "pre-s1").unlink()
        # 2. inside a step: step 2 did its effect, its entry is not in the log
        await count("s2.done", 1)
        assert [c["j"]["i"] for c in await commits(client.nc, "job", "k1")] == [0, 1]
        hp = await restart()
        await count("s2.done", 2)  # run again, with the same key
        (gates / "post-s2").unlink()
        # 3. the last boundary: steps 0-3 journaled, step 4 entered
        await count("s4.enter", 1)
        hp = await restart()
        await count("s4.enter", 2)
        (gates / "pre-s4").unlink()
        # 4. after the last step: steps 0-4 journaled, the closing commit not made
        await count("end.enter", 1)
        assert [c["j"]["i"] for c in await commits(client.nc, "job", "k1")] == [0, 1, 2, 3, 4]
        hp = await restart()
        await count("end.enter", 2)  # replayed to the end; the tallies below show no step ran again
        (gates / "pre-end").unlink()

        keys = await call
        assert keys == [f"job.k1:k1#{i}" for i in range(5)]
        again = await ref.request_reply("run", {"run": "k1", "gates": str(gates)}, command_id="k1", timeout=20)
        assert again.duplicate and again.result == keys

        done = Tally(name for name, _ in await _records(client))
        assert [done[f"s{i}.done"] for i in range(5)] == [1, 1, 2, 1, 1]
        assert [done[f"s{i}.enter"] for i in range(5)] == [1, 2, 2, 1, 2]
        assert done["end.enter"] == 2
        assert {data for name, data in await _records(client) if name == "s2.done"} == {b"job.k1:k1#2"}
        log = await commits(client.nc, "job", "k1")
        assert [c["n"] for c in log] == list(range(1, 7))
        assert [(c["j"]["k"], c["j"]["i"]) for c in log] == [("step", i) for i in range(5)] + [("end", 5)]
        assert log[-1]["events"] == [{"type": "Finished", "data": {"run": "k1"}}]
        assert await ref.request("finished", timeout=10) == ["k1"]
    finally:
        await client.close()
