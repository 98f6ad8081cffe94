"""Run a pydantic-ai agent inside a jetagents action, durably (ADR 0047).

>>> from pydantic_ai import Agent as AiAgent
>>> support = AiAgent("openai:gpt-4o-mini", name="support")  # doctest: +SKIP
>>> durable = DurableAgent(support)  # doctest: +SKIP
>>> class Desk(ChatAgent[ChatState]):  # doctest: +SKIP
...     type_name = "desk"
...     state_type = ChatState
...
...     @action
...     async def ask(self, prompt: str) -> str:
...         result = await self.chat(durable, prompt)
...         return str(result.output)

The pydantic-ai agent's own code does not change: outside an action it runs as plain
pydantic-ai, inside one every model request and tool call is a journaled step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pydantic_ai import Agent as AiAgent
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ToolCallPart
from pydantic_ai.models import Model
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolDenied

from .._core.agent import Agent, Event, applies
from .._core.errors import DomainError
from .._core.journal import callee_command_id, effect_key
from .._core.retry import RetryPolicy
from ._budget import Budgets
from ._durability import JetAgentsDurability, RunScope, current_scope, enter_scope, exit_scope, stream_text

# model calls: 4 tries, 0.5 s, 1 s, 2 s caps (full jitter): a rate limit or a restarting
# endpoint passes within seconds; longer outages fail the action, which the host retries
MODEL_RETRY = RetryPolicy(attempts=4, base_s=0.5, max_s=8.0)


class DurableAgent:
    """A pydantic-ai ``Agent`` whose runs inside jetagents actions are durable.

    ``retry`` is the backoff for a model call that failed for a reason that may pass (rate
    limit, server error, connection); ``budgets`` refuses calls past a token or cost budget
    and counts tokens (``gen_ai.client.token.usage``); ``models`` registers other models a run
    may select with ``model=`` (pydantic-ai's durable integrations require it). With
    ``stream=True`` model requests are streamed and their text goes to the action's caller as
    it comes (``{"delta": "..."}`` chunks of ``AgentRef.stream``). With ``approvals=True``
    the agent's tools marked ``requires_approval=True`` suspend the action until a person
    decides (signal ``approval``, see ``_decide``), at most ``approval_timeout_s``;
    ``on_approval(agent, call)`` runs first, in the action (e.g. ``agent.call`` a step that
    starts a reminder following up on the wait).
    """

    def __init__(
        self,
        agent: AiAgent[Any, Any],
        *,
        name: str | None = None,
        retry: RetryPolicy = MODEL_RETRY,
        budgets: Budgets | None = None,
        models: Mapping[str, Model] | None = None,
        stream: bool = False,
        approvals: bool = False,
        approval_timeout_s: float | None = 86400.0,
        on_approval: Callable[[Agent[Any], ToolCallPart], Awaitable[None]] | None = None,
    ) -> None:
        self.agent = agent
        self.retry = retry
        self.budgets = budgets if budgets is not None else Budgets()
        self.approvals = approvals
        self.approval_timeout_s = approval_timeout_s
        self.on_approval = on_approval
        self.durability = JetAgentsDurability(
            name=name or agent.name, models=models, event_stream_handler=stream_text if stream else None
        )

    async def run(
        self,
        on: Agent[Any],
        prompt: str | Sequence[Any] | None = None,
        *,
        message_history: Sequence[ModelMessage] | None = None,
        **kwargs: Any,
    ) -> AgentRunResult[Any]:
        """``agent.run(prompt, ...)`` inside the action running on ``on``: each model request
        and tool call is one of ``on``'s steps. ``kwargs`` are ``Agent.run``'s (``deps``,
        ``output_type``, ``usage_limits``, ``model_settings``, ``model``...). A pydantic-ai
        ``UsageLimitExceeded`` is refused as ``DomainError("usage_limit_exceeded")``."""
        scope = RunScope(on, self.retry, self.budgets)
        if self.approvals:
            output = kwargs.pop("output_type", None) or self.agent.output_type
            kwargs["output_type"] = [output, DeferredToolRequests]
        token = enter_scope(scope)
        try:
            result = await self.agent.run(
                prompt, message_history=message_history, capabilities=[self.durability], **kwargs
            )
            while isinstance(result.output, DeferredToolRequests):
                decisions = await self._decide(on, result.output)
                scope.run_index += 1
                result = await self.agent.run(
                    None,
                    message_history=result.all_messages(),
                    deferred_tool_results=DeferredToolResults(approvals=decisions),
                    capabilities=[self.durability],
                    **kwargs,
                )
            return result
        except UsageLimitExceeded as exc:
            raise DomainError("usage_limit_exceeded", str(exc)) from None
        finally:
            exit_scope(token)

    async def _decide(self, on: Agent[Any], requests: DeferredToolRequests) -> dict[str, Any]:
        """Each call of a tool that requires approval waits, suspended (``wait_for``), for the
        signal ``approval`` with ``{"approved": bool, "reason": str}``; no decision within
        ``approval_timeout_s`` is a denial. The caller of a streamed command is told first."""
        if requests.calls:
            names = sorted({c.tool_name for c in requests.calls})
            raise DomainError("deferred_tool_calls", f"tools {names} defer their calls: not supported here")
        decisions: dict[str, Any] = {}
        for call in requests.approvals:
            if self.on_approval is not None:
                await self.on_approval(on, call)
            await on.stream({"approval": {"tool": call.tool_name, "args": call.args_as_dict(), "signal": "approval"}})
            try:
                answer = await on.wait_for("approval", timeout_s=self.approval_timeout_s)
            except DomainError as err:
                if err.reason != "wait_timeout":
                    raise
                answer = {"approved": False, "reason": "no decision in time"}
            approved = isinstance(answer, dict) and answer.get("approved") is True
            reason = str(answer.get("reason") or "denied") if isinstance(answer, dict) else "denied"
            denied = ToolDenied(f"{call.tool_name} was not approved: {reason}")
            decisions[call.tool_call_id] = True if approved else denied
        return decisions


async def call_agent(
    agent_type: str, agent_id: str, action: str, params: dict[str, Any] | None = None, **options: Any
) -> Any:
    """Inside a tool of a ``DurableAgent``: call another jetagents agent's action, applied once.

    The tool call is already a step, so the call is not one of its own (a step inside a step
    would shift the journal's positions); its command id is derived from the tool step's key,
    so the same call made again by a tool re-run after a crash is answered from the callee's
    record. ``options`` are ``AgentRef.request``'s."""
    scope = current_scope()
    if scope is None:
        raise RuntimeError("call_agent() may only be called by a tool of a DurableAgent running in an action")
    key = effect_key()
    if key is not None:
        options.setdefault("command_id", callee_command_id(f"{key}>{agent_type}.{agent_id}.{action}"))
    return await scope.agent.ctx.client.agent(agent_type, agent_id).request(action, params, **options)


class ChatState(BaseModel):
    """A conversation: pydantic-ai messages as JSON (``ModelMessagesTypeAdapter``)."""

    messages: list[dict[str, Any]] = []


class MessagesAdded(Event):
    """The messages one turn added to the conversation."""

    messages: list[dict[str, Any]]


CS = TypeVar("CS", bound=ChatState)


def dump_messages(messages: Sequence[ModelMessage]) -> list[dict[str, Any]]:
    dumped: list[dict[str, Any]] = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    return dumped


class ChatAgent(Agent[CS], Generic[CS]):
    """A jetagents agent whose state keeps a conversation (``ChatState.messages``)."""

    def history(self) -> list[ModelMessage]:
        return ModelMessagesTypeAdapter.validate_python(self.state.messages)

    async def chat(self, ai: DurableAgent, prompt: str | Sequence[Any], **kwargs: Any) -> AgentRunResult[Any]:
        """One turn of the conversation: run ``ai`` with the history, then append the turn's
        messages (an event, committed with the action's reply)."""
        history = self.history()
        result = await ai.run(self, prompt, message_history=history, **kwargs)
        # all_messages past the history: a turn with approvals is several pydantic-ai runs
        self.emit(MessagesAdded(messages=dump_messages(result.all_messages()[len(history) :])))
        return result

    @applies
    def _messages_added(self, state: ChatState, event: MessagesAdded) -> None:
        state.messages.extend(event.messages)
