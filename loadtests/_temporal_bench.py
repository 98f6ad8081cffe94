"""The Temporal side of ``bench_ai.py``: the benchmark agent with pydantic-ai's
``TemporalDurability`` (model requests and tool calls as activities) run by a workflow.
Imported by the workflow sandbox too, hence a module of its own with its imports passed through."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic_ai.durable_exec.temporal import TemporalDurability

    from _ai_agent import make_agent

temporal_agent = make_agent("bench_temporal", [TemporalDurability()])


@workflow.defn
class BenchTurn:
    @workflow.run
    async def run(self, shape: str) -> str:
        return str((await temporal_agent.run(shape)).output)
