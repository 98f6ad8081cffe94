"""The agent ``bench_ai.py`` measures on every engine: a scripted model and one trivial tool.

One factory for all engines, so the figures differ only by what durability wraps around the
same code. A module of its own because Temporal's workflow sandbox imports it again
(``_temporal_bench.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic_ai import Agent as AiAgent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel


def _script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = str(next(getattr(p, "content", "") for m in messages if isinstance(m, ModelRequest) for p in m.parts))
    tools = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
    if prompt != "A" and not tools:
        n = 4 if prompt == "C" else 8
        return ModelResponse(parts=[ToolCallPart("work", {"k": k}, tool_call_id=f"t{k}") for k in range(n)])
    return ModelResponse(parts=[TextPart("done")])


async def work(k: int) -> int:
    """The one tool: trivial, so the figures are the wrappers' cost."""
    return k * 2


def make_agent(
    name: str, capabilities: Sequence[Any] = (), tool: Callable[..., Awaitable[int]] = work
) -> AiAgent[None, str]:
    """The same agent code for every engine: a scripted model and one tool."""
    agent: AiAgent[None, str] = AiAgent(FunctionModel(_script), name=name, capabilities=list(capabilities))
    agent.tool_plain(name="work")(tool)
    return agent
