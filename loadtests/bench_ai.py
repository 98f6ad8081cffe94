"""The cost of the durable pydantic-ai wrapper (ADR 0047) per model call and per tool call,
against plain pydantic-ai measured in the same run, on a scripted model (``FunctionModel``).

    python loadtests/bench_ai.py [--n 60] [--reps 3]

Starts a nats-server and an in-process host (client, host and plain runs share this process,
so CPU is this process's ``time.process_time``). Three turn shapes, each run ``--n`` times per
repetition, plain (``agent.run``) and durable (a command whose action runs the same agent through
``DurableAgent``: each model request and tool call a journaled step), in random order:

* ``A``: one model call answering with text;
* ``C``: a model call asking for 4 tool calls, then a text answer (2 model calls, 4 tools);
* ``D``: the same with 8 tool calls (2 model calls, 8 tools).

The wrapper's overhead per model or tool call (one journaled step each): ``((durable - plain)
of D - (durable - plain) of A) / 9`` (the command's own cost is in both and cancels; 10 units
against 1); per turn, the overhead and the ratio durable/plain of each shape, in wall latency
(what a caller waits) and CPU; figures are medians of ``--reps``. pydantic-ai's DBOS
integration was not measured (it needs PostgreSQL; see the ADR). No assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent as AiAgent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from jetagents import Agent, Client, ClientSettings, Host, HostSettings, NatsServer, Registry, action
from jetagents.ai import DurableAgent


def _script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = str(next(getattr(p, "content", "") for m in messages if isinstance(m, ModelRequest) for p in m.parts))
    tools = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
    if prompt != "A" and not tools:
        n = 4 if prompt == "C" else 8
        return ModelResponse(parts=[ToolCallPart("work", {"k": k}, tool_call_id=f"t{k}") for k in range(n)])
    return ModelResponse(parts=[TextPart("done")])


bench_ai: AiAgent[None, str] = AiAgent(FunctionModel(_script), name="bench")


@bench_ai.tool_plain
def work(k: int) -> int:
    return k * 2


durable = DurableAgent(bench_ai)


class BenchState(BaseModel):
    turns: int = 0


class BenchDesk(Agent[BenchState]):
    type_name = "benchai"
    state_type = BenchState

    @action
    async def turn(self, shape: str) -> str:
        result = await durable.run(self, shape)
        return str(result.output)


async def plain(shape: str) -> None:
    await bench_ai.run(shape)


async def measure(fn: Any, n: int) -> tuple[float, float]:
    """Median wall ms and mean CPU ms per call."""
    walls: list[float] = []
    cpu0 = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        walls.append((time.perf_counter() - t) * 1000)
    return statistics.median(walls), (time.process_time() - cpu0) * 1000 / n


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with NatsServer(data_dir=Path(tempfile.mkdtemp(prefix="bench-ai-"))) as server:
        settings = HostSettings(nats_url=server.url, partitions=8, host_id="bench")
        async with Host(settings, Registry([BenchDesk])):
            client = await Client.connect(settings=ClientSettings(nats_url=server.url, partitions=8))
            counter = iter(range(10**9))

            def durable_turn(shape: str) -> Any:
                async def go() -> None:
                    k = next(counter)
                    await client.agent("benchai", f"b{k % 50}").request("turn", {"shape": shape}, timeout=30)

                return go

            for shape in ("A", "C", "D"):  # warm up both paths
                await plain(shape)
                await durable_turn(shape)()
            for _ in range(args.reps):
                cases = [(m, s) for m in ("plain", "durable") for s in ("A", "C", "D")]
                random.shuffle(cases)
                for mode, shape in cases:
                    fn = (lambda s=shape: plain(s)) if mode == "plain" else durable_turn(shape)
                    results.setdefault((mode, shape), []).append(await measure(fn, args.n))
            await client.close()

    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in results.items()}
    print(f"per turn, median of {args.reps} x {args.n} (wall ms, CPU ms):")
    for (mode, shape), (w, c) in sorted(med.items()):
        print(f"  {mode:8} {shape}: {w:8.2f} ms wall {c:8.2f} ms CPU")
    units = {"A": 1, "C": 6, "D": 10}  # model calls + tool calls per turn
    for i, what in enumerate(("wall", "CPU")):
        over = {k: med[("durable", k)][i] - med[("plain", k)][i] for k in units}
        # the command itself (intake, reply, closing commit) is in every shape: D - A leaves 9 units
        per_unit = (over["D"] - over["A"]) / (units["D"] - units["A"])
        plain_unit = (med[("plain", "D")][i] - med[("plain", "A")][i]) / (units["D"] - units["A"])
        print(
            f"{what}: durable overhead per model or tool call {per_unit:6.2f} ms "
            f"(plain pydantic-ai per call {plain_unit:5.2f} ms); per turn: "
            + ", ".join(f"{k} +{over[k]:.1f} ms ({med[('durable', k)][i] / med[('plain', k)][i]:.1f}x)" for k in units)
        )


if __name__ == "__main__":
    asyncio.run(main())
