"""pydantic-ai's durable-execution surface, with jetagents' journal as the engine (ADR 0047).

pydantic-ai builds its durable integrations (Temporal, DBOS, Prefect) on one base: a
capability (``BaseDurabilityCapability``) that routes every model request and every tool call
through an operation backend, each call one durable unit. Ours is a callable backend whose unit
is ``Agent.step``: the call runs once, its result (JSON, through pydantic-ai's own type
adapters: ``JSON_CODEC``) is journaled in the agent's log, and a re-run of the action after a
crash returns the journaled result without asking the model or running the tool again.

Step names are stable across re-runs and processes: ``model:<model id>`` for a model request
(the step's position in the journal tells the n-th from the others), ``tool:<name>:<call id>``
for a tool call (the call id comes from the journaled model response, so it is the same on a
re-run). Tool calls run one after the other inside an action: a journal has one cursor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    BoundDurableOperation,
    CallableOperationBackend,
    DurabilityEngineSpec,
    DurableOperation,
    JournalOperationNamer,
    ModelRequestId,
    ModelRequestParams,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    durable_unit_scope,
)
from pydantic_ai.exceptions import (
    ModelConnectionError,
    ModelRateLimitError,
    ModelRequestTimeout,
    ModelServerError,
    ModelUnavailableError,
)
from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

from .._core.retry import RetryPolicy

if TYPE_CHECKING:
    from .._core.agent import Agent
    from ._budget import Budgets

# a model call failed for a reason that may pass: retried inside its step, with backoff
RETRYABLE_MODEL_ERRORS: tuple[type[BaseException], ...] = (
    ModelRateLimitError,
    ModelUnavailableError,
    ModelServerError,
    ModelConnectionError,
    ModelRequestTimeout,
)


@dataclass(slots=True)
class RunScope:
    """What the durable units of one pydantic-ai run inside an action need."""

    agent: Agent[Any]
    retry: RetryPolicy
    budgets: Budgets | None
    model_calls: int = 0
    run_index: int = 0


_SCOPE: ContextVar[RunScope | None] = ContextVar("jetagents_ai_scope", default=None)


def current_scope() -> RunScope | None:
    return _SCOPE.get()


def enter_scope(scope: RunScope) -> Any:
    return _SCOPE.set(scope)


def exit_scope(token: Any) -> None:
    _SCOPE.reset(token)


def step_name(operation_id: object, params: object, fallback: str) -> str:
    """The journal name of one durable unit (stable across re-runs, see the module docstring)."""
    if isinstance(operation_id, ModelRequestId):
        return f"model:{operation_id.model_id or 'default'}"
    if isinstance(operation_id, ToolsetCallToolId):
        name = getattr(params, "name", "?")
        ctx = getattr(params, "ctx", None)
        call_id = getattr(ctx, "tool_call_id", None) or ""
        return f"tool:{name}:{call_id}"
    return fallback


class _Bound(BoundDurableOperation[Any, Any, Any]):
    __slots__ = ("_dispatch", "_operation")

    def __init__(self, operation: DurableOperation[Any, Any, Any], dispatch: Callable[[Any], Awaitable[Any]]) -> None:
        self._operation = operation
        self._dispatch = dispatch

    @property
    def operation(self) -> DurableOperation[Any, Any, Any]:
        return self._operation

    async def __call__(self, params: Any, *, config: object | None = None) -> Any:
        return await self._dispatch(params)


class JournalBackend(CallableOperationBackend[None]):
    """Runs each operation as one ``Agent.step`` of the action running the pydantic-ai agent."""

    def __init__(self, agent_name: str) -> None:
        none = None
        super().__init__(
            namer=JournalOperationNamer(agent_name),
            config=RoleBasedOperationConfig(model=none, event=none, capability=none, tool=none),
        )

    def bind(self, operation: DurableOperation[Any, Any, Any]) -> BoundDurableOperation[Any, Any, Any]:
        fallback = self._namer.operation_name(operation.operation_id)

        async def dispatch(params: Any) -> Any:
            scope = _SCOPE.get()
            name = step_name(operation.operation_id, params, fallback)
            is_model = isinstance(operation.operation_id, ModelRequestId)

            async def body() -> Any:
                with durable_unit_scope():
                    if is_model and scope is not None:
                        return await _model_unit(scope, operation, params)
                    return operation.result_codec.dump(await operation.handler(params))

            if scope is None:  # not inside an action: the plain call (pydantic-ai's own path)
                return operation.result_codec.load(await body())
            if is_model:
                scope.model_calls += 1
            payload = await scope.agent.step(name, body)
            return operation.result_codec.load(payload)

        return _Bound(operation, dispatch)

    async def execute(self, **_: Any) -> object:  # bind() runs the units itself
        raise NotImplementedError


async def _model_unit(scope: RunScope, operation: DurableOperation[Any, Any, Any], params: Any) -> Any:
    """One model request: refused when a budget is spent, retried with backoff while the
    failure may pass, its tokens and duration counted (OpenTelemetry GenAI conventions)."""
    model_name = _model_name(params)
    budgets = scope.budgets
    held = None
    if budgets is not None:
        held = await budgets.reserve(scope.agent, model_name, _max_tokens(params))
    retry_index = 0
    try:
        while True:
            started = time.perf_counter()
            try:
                response = await operation.handler(params)
            except RETRYABLE_MODEL_ERRORS as exc:
                delay = scope.retry.next_delay(retry_index, float("inf"))
                if delay is None:
                    raise
                if budgets is not None:
                    budgets.failed(model_name, time.perf_counter() - started, type(exc).__name__)
                retry_index += 1
                await asyncio.sleep(delay)
                continue
            break
    except Exception:
        # no answer: what the call held goes back (a crash or a cancel keeps it: counted, never undercounted)
        if budgets is not None and held is not None:
            await budgets.release(scope.agent, held)
        raise
    if budgets is not None and held is not None:
        await budgets.spent(scope.agent, model_name, response, time.perf_counter() - started, held)
    return operation.result_codec.dump(response)


def _model_name(params: Any) -> str:
    if isinstance(params, ModelRequestParams):
        ctx = params.run_context
        model = getattr(ctx, "model", None)
        name = getattr(model, "model_name", None)
        if isinstance(name, str):
            return name
    return "unknown"


def _max_tokens(params: Any) -> int:
    settings = getattr(params, "model_settings", None) or {}
    value = settings.get("max_tokens") if isinstance(settings, dict) else None
    return int(value) if isinstance(value, int) else 0


async def stream_text(ctx: Any, events: AsyncIterable[Any]) -> None:
    """The event stream handler of a streaming ``DurableAgent``: text as it comes from the
    model, to the action's caller (``Agent.stream``, a no-op unless the caller streams the
    command). It runs inside the model request's step, so a step run again after a crash streams
    its text again, and the host first tells readers to drop what the lost run streamed."""
    scope = _SCOPE.get()
    async for event in events:
        if scope is None:
            continue
        text = ""
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
            text = event.part.content
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            text = event.delta.content_delta
        if text:
            await scope.agent.stream({"delta": text})


class JetAgentsDurability(BaseDurabilityCapability[Any]):
    """The capability that makes a pydantic-ai agent's run durable inside a jetagents action.

    Outside an action (no ``DurableAgent.run`` around it) it is transparent: the agent runs as
    plain pydantic-ai."""

    engine_spec = DurabilityEngineSpec(
        engine_name="jetagents",
        durable_unit_noun="step",
        durable_unit_plural="steps",
        durable_container_noun="action",
        codec=JSON_CODEC,  # the journal holds JSON, never pickles
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-in-durable-unit", "dynamic": "enter-never"},
        journal_discovery=False,  # discovery is code, not I/O, for function tools; same on every run
        sequential_tools_in_durable_context=True,  # one journal cursor per action
    )

    @property
    def in_durable_context(self) -> bool:
        return _SCOPE.get() is not None

    async def _dispatch_event_stream_event(self, ctx: Any, event: Any) -> None:
        # pydantic-ai would hand each run event (tool calls, results) to the handler in a unit
        # of its own: a journal entry each. Ours streams the model's text only, which it gets
        # live inside the model request's step.
        return None

    def get_default_run_id(self) -> str | None:
        scope = _SCOPE.get()
        if scope is None:
            return None
        ctx = scope.agent.ctx
        # replay-stable: the same command re-run gets the same run ids, in the same order
        return f"{ctx.agent_id.key}:{ctx.command_id}:{scope.run_index}"

    def get_durable_operation_backend(self) -> JournalBackend:
        return JournalBackend(self.name)
