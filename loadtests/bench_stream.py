"""Streamed output (ADR 0042 section 6): chunks per second end to end, against a plain command
round trip and a bare event append measured in the same run.

    python loadtests/bench_stream.py [--chunks 5000] [--size 16] [--reps 3] [--n 300] [--flush-ms 20]

Starts a nats-server and one agent host (``python -m agent_host``) serving ``BStream``, then,
in random order each repetition:

* ``append``: a bare fenced append from this process (a JetStream publish with
  ``Nats-Expected-Last-Subject-Sequence`` and ``Nats-Msg-Id``, PubAck awaited), ``--n`` times;
* ``command``: a durable exactly-once request of an action that emits one event (one commit),
  one at a time, ``--n`` times;
* ``stream``: one streaming command whose action calls ``self.stream`` ``--chunks`` times with
  a string of ``--size`` characters, as fast as it can, read by ``AgentStream`` in this
  process: chunks per second from the send to the end message read, the time to the first
  chunk, and how many AGT_OUT messages carried them (the host gathers chunks for
  ``--flush-ms`` and while a message waits for its PubAck).

Figures are medians of ``--reps``; the ratios put streamed chunks per second against
commands and appends per second. No assertion: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jetagents import Agent, Client, ClientSettings, Event, NatsServer, action, applies
from jetagents._nats.api import js_api
from jetagents.testing.server import child_preexec


class BState(BaseModel):
    done: int = 0


class Done(Event):
    n: int


class BStream(Agent[BState]):
    type_name = "bstream"
    state_type = BState

    @action
    async def plain(self) -> int:
        self.emit(Done(n=1))
        return self.state.done

    @action
    async def talk(self, chunks: int, size: int) -> int:
        text = "x" * size
        for _ in range(chunks):
            await self.stream(text)
        return chunks

    @applies
    def _done(self, state: BState, event: Done) -> None:
        state.done += 1


AGENTS: list[Any] = [BStream]


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    client = await Client.connect(settings=ClientSettings(nats_url=url, request_timeout_s=60))
    warm = client.agent("bstream", "warm")
    for _ in range(300):  # until the host serves
        try:
            await warm.request("plain", timeout=1)
            break
        except Exception:
            await asyncio.sleep(0.2)
    js = client.nc.jetstream()
    await js.add_stream(name="BENCH_APPEND", subjects=["bench.append.>"])
    ids = iter(range(10**9))

    async def appends(subject: str) -> None:
        last = 0
        for _ in range(args.n):
            hdrs = {"Nats-Msg-Id": f"bench:{next(ids)}", "Nats-Expected-Last-Subject-Sequence": str(last)}
            last = (await js.publish(subject, b'{"n":1,"cmd":"x","events":[{"type":"Done"}]}', headers=hdrs)).seq

    async def stream_once(ref: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        stream = ref.stream("talk", {"chunks": args.chunks, "size": args.size})
        first = 0.0
        got = 0
        async for _ in stream:
            if not got:
                first = time.perf_counter() - t0
            got += 1
        elapsed = time.perf_counter() - t0
        assert got == args.chunks and stream.result == args.chunks, (got, stream.result)
        subject = f"agt.out.bstream.{ref.id.id}.{stream.command_id}"
        info = await js_api(client.nc, "$JS.API.STREAM.INFO.AGT_OUT", {"subjects_filter": subject}, 10)
        messages = (info["state"].get("subjects") or {}).get(subject, 0) - 1  # less the end
        return {"chunks_s": args.chunks / elapsed, "first_ms": first * 1000, "messages": messages}

    cells = ["append", "command", "stream"]
    out: dict[str, list[dict[str, float]]] = {c: [] for c in cells}
    for rep in range(args.reps + 1):  # the first repetition warms up
        random.shuffle(cells)
        for cell in cells:
            t0 = time.perf_counter()
            if cell == "append":
                await appends(f"bench.append.{rep}")
                figures = {"per_s": args.n / (time.perf_counter() - t0)}
            elif cell == "command":
                ref = client.agent("bstream", f"cmd{rep}")
                for _ in range(args.n):
                    await ref.request("plain")
                figures = {"per_s": args.n / (time.perf_counter() - t0)}
            else:
                figures = await stream_once(client.agent("bstream", f"s{rep}"))
            if rep:
                out[cell].append(figures)
    await client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=5000, help="chunks one streaming command sends")
    p.add_argument("--size", type=int, default=16, help="characters per chunk (a model's text delta: ~16)")
    p.add_argument("--n", type=int, default=300, help="commands (or appends) per cell and repetition")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--flush-ms", type=int, default=20, help="the host's out_flush_ms")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    server = NatsServer(data_dir=work / "nats", name="bench").start()
    here = str(Path(__file__).resolve().parent)
    env = dict(
        os.environ,
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_AGENTS='["bench_stream:AGENTS"]',
        JETAGENTS_HOST_ID="bench-host",
        JETAGENTS_LOG_LEVEL="WARNING",
        JETAGENTS_OUT_FLUSH_MS=str(args.flush_ms),
        PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
    )
    with open(work / "host.log", "ab") as log:
        argv = [sys.executable, "-m", "agent_host"]
        host = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec)
    try:
        results = asyncio.run(measure(server.url, args))
    finally:
        host.terminate()
        host.wait(30)
        server.stop()

    def med(cell: str, key: str) -> float:
        return statistics.median(r[key] for r in results[cell])

    append_s, command_s = med("append", "per_s"), med("command", "per_s")
    chunks_s = med("stream", "chunks_s")
    print(f"median of {args.reps}; {args.chunks} chunks of {args.size} characters, out_flush_ms {args.flush_ms}")
    print(f"{'bare fenced append':34s} {append_s:10.0f} /s")
    print(f"{'command round trip (1 event)':34s} {command_s:10.0f} /s")
    print(f"{'streamed chunks, end to end':34s} {chunks_s:10.0f} /s")
    print(f"{'  time to the first chunk':34s} {med('stream', 'first_ms'):10.1f} ms")
    print(f"{'  AGT_OUT messages per command':34s} {med('stream', 'messages'):10.0f}")
    print(f"chunks/s / commands/s:  {chunks_s / command_s:.1f}")
    print(f"chunks/s / appends/s:   {chunks_s / append_s:.1f}")


if __name__ == "__main__":
    main()
