"""Streamed output across SIGKILL (ADR 0042 step 5): a real host process, a real nats-server.

``Writer.tell`` streams 3 intro chunks, then a step that streams 6 words (each naming the process
that ran it) and waits halfway on a gate file, then 2 outro chunks. The host is killed while
the step waits (3 words streamed, the step not journaled); the next host re-runs the action:
the intro is not published again (stored, and deterministic), the step runs again, so a
``reset`` to chunk 3 comes first, then its 6 words from the new process, the outro and the
end. The reader (a client of its own) reads across the kill and ends with the right output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from jetagents import Client, ClientSettings, NatsServer, StreamReset
from tests.integration.helpers import read_all

pytestmark = pytest.mark.chaos

AGENTS = json.dumps(["jetagents.examples:EXAMPLE_AGENTS", "tests.stream_agents:AGENTS"])


async def test_a_host_killed_inside_a_streaming_step(
    nats_server: NatsServer, host_process_factory: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    url = nats_server.url
    hp = host_process_factory(url, JETAGENTS_AGENTS=AGENTS).start()
    client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
    try:
        await hp.wait_ready(client)
        first_pid = hp.proc.pid if hp.proc else 0
        params = {"intro": 3, "words": 6, "outro": 2, "gate": str(gate)}
        stream = client.agent("writer", "k1").stream("tell", params, command_id="k1", timeout=40)
        items: list[Any] = []
        async for item in stream:
            items.append(item)
            if len(items) == 6:  # the intro and the words before the gate: the step waits
                break
        assert items[3:] == [{"n": k, "pid": first_pid} for k in range(3)]
        hp.kill()
        second = host_process_factory(url, JETAGENTS_AGENTS=AGENTS).start()
        gate.unlink()  # the re-run passes the gate
        items += [item async for item in stream]
        second_pid = second.proc.pid if second.proc else 0

        reset_at = items.index(StreamReset(from_chunk=3, step=0))
        assert reset_at == 6  # after the void words, before anything else
        words = [{"n": k, "pid": second_pid} for k in range(6)]
        assert items[reset_at + 1 :] == [*words, {"outro": 0}, {"outro": 1}]
        assert stream.chunks == ["intro 0", "intro 1", "intro 2", *words, {"outro": 0}, {"outro": 1}]
        assert stream.result == 11

        stored = await read_all(client.nc, "AGT_OUT", "agt.out.writer.k1.k1")
        kinds = [(h["Agt-Stream-Kind"], h.get("Agt-Chunk")) for _, _, h, _ in stored]
        assert kinds.count(("chunk", "0")) == 1  # the intro: stored once, not again by the re-run
        assert kinds.count(("reset", "3")) == 1 and kinds[-1] == ("end", None)
        assert orjson.loads(stored[-1][3]) == {"ok": True, "result": 11}
        # a reader from the start gets the same output
        again = client.agent("writer", "k1").read_stream("k1", timeout=10)
        [item async for item in again]
        assert again.chunks == stream.chunks and again.result == 11
    finally:
        await client.close()
