"""pydantic-ai agents on jetagents for the tests of ``jetagents.ai`` (in-process and real processes).

``support`` is plain pydantic-ai code: the same object runs in plain pydantic-ai and, through
``DurableAgent``, in the ``desk`` agent's actions. Its model is a ``FunctionModel`` whose
function the test sets (``SCRIPT``). ``httpdesk`` runs an agent whose model comes from the
environment (``JETAGENTS_MODEL=openai:...``, ``OPENAI_BASE_URL``: the tests' scripted
chat-completions server); its tools report their effects to that server, outside the host.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from pydantic import BaseModel
from pydantic_ai import Agent as AiAgent
from pydantic_ai import RunContext
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.usage import UsageLimits

from jetagents import action, step_key
from jetagents._core.journal import current_step_key
from jetagents.ai import Budgets, ChatAgent, ChatState, DurableAgent, call_agent, model_from_env
from jetagents.testing.openai_server import report_effect

SCRIPT: Callable[[list[ModelMessage], AgentInfo], ModelResponse] | None = None
TOOL_RUNS: Counter[str] = Counter()
FAIL_TOOL_ONCE: set[str] = set()


def _scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    assert SCRIPT is not None, "the test sets tests.ai_agents.SCRIPT"
    return SCRIPT(messages, info)


# -- plain pydantic-ai code -------------------------------------------------------------------
support: AiAgent[None, str] = AiAgent(FunctionModel(_scripted), name="support", instructions="Help the customer.")


@support.tool_plain
def lookup_order(order_id: str) -> str:
    """The status of an order."""
    TOOL_RUNS[f"lookup_order:{order_id}"] += 1
    if order_id in FAIL_TOOL_ONCE:
        FAIL_TOOL_ONCE.discard(order_id)
        raise RuntimeError(f"lookup of {order_id} fails once (the test says so)")
    return f"order {order_id}: shipped"


@support.tool_plain
def refund(order_id: str, amount: int) -> str:
    """Refund part of an order."""
    TOOL_RUNS[f"refund:{order_id}"] += 1
    return f"refunded {amount} on {order_id}"


@support.tool_plain
async def bump(counter: str) -> int:
    """Increment a jetagents counter (another agent), once per tool call."""
    TOOL_RUNS[f"bump:{counter}"] += 1
    if current_step_key() is None:  # plain pydantic-ai: nothing to call
        return 0
    return int(await call_agent("counter", counter, "increment", {"by": 1}, timeout=10))


class Verdict(BaseModel):
    refund: bool
    amount: int


BUDGETS: Budgets = Budgets()
durable_support = DurableAgent(support, budgets=BUDGETS)


class Desk(ChatAgent[ChatState]):
    type_name = "desk"
    state_type = ChatState
    action_timeout_s = 60.0
    LIMITS: ClassVar[UsageLimits | None] = None

    @action
    async def ask(self, prompt: str) -> str:
        result = await self.chat(durable_support, prompt, usage_limits=type(self).LIMITS)
        return str(result.output)

    @action
    async def judge(self, prompt: str) -> dict[str, Any]:
        result = await self.chat(durable_support, prompt, output_type=Verdict)
        verdict: Verdict = result.output
        return verdict.model_dump()

    @action(read_only=True)
    async def history_size(self) -> int:
        return len(self.state.messages)


# -- streaming and a tool that needs a person's approval ----------------------------------------
async def _ops_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    parts = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts]
    returns = [p for p in parts if isinstance(p, ToolReturnPart)]
    wipe = any("wipe" in str(getattr(p, "content", "")) for p in parts)
    if wipe and not returns:
        yield {0: DeltaToolCall(name="wipe_disk", json_args='{"disk": "d1"}', tool_call_id="w1")}
        return
    for word in (str(returns[-1].content) if returns else "all disks are healthy").split(" "):
        yield word + " "


ops: AiAgent[None, str] = AiAgent(FunctionModel(stream_function=_ops_stream), name="ops")


@ops.tool_plain(requires_approval=True)
def wipe_disk(disk: str) -> str:
    """Erase a disk (a person approves first)."""
    TOOL_RUNS[f"wipe_disk:{disk}"] += 1
    return f"wiped {disk}"


durable_ops = DurableAgent(ops, stream=True, approvals=True, approval_timeout_s=30.0)


class OpsDesk(ChatAgent[ChatState]):
    type_name = "opsdesk"
    state_type = ChatState
    action_timeout_s = 60.0

    @action
    async def ask(self, prompt: str) -> str:
        result = await self.chat(durable_ops, prompt)
        return str(result.output)


# -- a model from the environment, effects reported outside the host ---------------------------
_http: dict[str, DurableAgent] = {}


def http_agent() -> DurableAgent:
    """Built on first use, so an in-process test can point the environment at its server."""
    base = os.environ.get("OPENAI_BASE_URL", "")
    durable = _http.get(base)
    if durable is None:
        agent: AiAgent[None, str] = AiAgent(model_from_env().model, name="httpdesk", instructions="Resolve tickets.")

        @agent.tool
        async def check(ctx: RunContext[None], item: str) -> str:
            """Check an item; reports its effect to the scripted server."""
            await asyncio.to_thread(report_effect, base, f"check-{item}", step_key())
            return f"{item}: ok"

        durable = _http[base] = DurableAgent(agent)
    return durable


class HttpDesk(ChatAgent[ChatState]):
    type_name = "httpdesk"
    state_type = ChatState
    action_timeout_s = 120.0

    @action
    async def ask(self, prompt: str) -> dict[str, Any]:
        result = await self.chat(http_agent(), prompt)
        # the turn's last model call is journaled, its closing commit not made yet: the scripted
        # server sees this point (``effect:turn-end``), so a test can hold and kill the host here
        base = os.environ.get("OPENAI_BASE_URL", "")
        await asyncio.to_thread(report_effect, base, "turn-end", "")
        return {"output": result.output, "messages": len(self.state.messages)}


if os.environ.get("JETAGENTS_MODEL"):  # a host process: the model is built when the agents load
    http_agent()

AGENTS: list[Any] = [Desk, HttpDesk, OpsDesk]
