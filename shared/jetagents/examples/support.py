"""A small multi-agent support desk: ``triage`` routes each ticket to a specialist.

* ``triage/<ticket>`` ``open(text)``: a pydantic-ai agent reads the ticket and answers with a
  structured ``Route`` (which specialist, a one-line summary); the ticket is handed to that
  specialist with a durable call (``self.call``), and the specialist's answer is returned.
* ``billing/<ticket>`` and ``tech/<ticket>`` ``handle(text)``: pydantic-ai agents with tools
  (``lookup_invoice``, ``issue_refund``; ``check_service``, ``restart_service``).
  ``issue_refund`` needs a person's approval: the action suspends until the signal
  ``approval`` (``{"approved": true}``) comes. Text streams to a caller that streams. Every model
  request and tool call is a journaled step: kill the host mid-turn and the turn finishes on
  another host without asking the model again for what it already answered.
* ``handle(text)`` on a specialist continues the conversation (it lives in the agent's state).
* ``followup/<ticket>``: a reminder follows up on a ticket left waiting. A specialist tells it
  ``watch(waiting="approval")`` before a refund waits for its approval and
  ``watch(waiting="customer")`` when it has answered; the reminder (``every_s``,
  ``JETAGENTS_SUPPORT_FOLLOWUP_S``, default an hour) fires ``nudge``, which writes a follow-up
  note (``status`` shows them; hosts log them) while the ticket still waits, and closes a ticket
  whose customer has not answered after ``max_nudges``. A customer's next message
  (``handle``) or a decision stops it. A reminder on the specialist itself would wait behind its
  suspended action (ADR 0042 §4: write commands are parked), hence an agent of its own.

Triage waits for the specialist's answer inside its action (at most 4 minutes, its time limit
5): a refund waiting longer for its approval makes the ``open`` call time out, while billing's
turn still finishes when the approval comes (a durable await across agents is an open question
of ADR 0042).

The model comes from ``JETAGENTS_MODEL`` (``openai:gpt-4o-mini``, with ``OPENAI_BASE_URL`` for
Ollama/vLLM; ``anthropic:...``). Without one each agent runs on a scripted ``FunctionModel``
that plays the same conversation deterministically, and ``MODEL.scripted`` says so.

Ticket ids are ``<tenant>-<n>`` (``acme-42``): budgets per tenant (``SUPPORT_BUDGETS``) count the
tokens of all of a tenant's tickets (``JETAGENTS_SUPPORT_TENANT_TOKENS``, default unlimited).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import structlog
from pydantic import BaseModel
from pydantic_ai import Agent as AiAgent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from .._core.agent import Agent, Event, action, applies
from ..ai import Budget, Budgets, ChatAgent, ChatState, DurableAgent, model_from_env

_log = structlog.get_logger("jetagents.examples.support")


class Route(BaseModel):
    specialist: Literal["billing", "tech"]
    summary: str


# -- the scripted models (no model configured) -------------------------------------------------
def _prompt(messages: list[ModelMessage]) -> str:
    for m in reversed(messages):
        if isinstance(m, ModelRequest):
            for p in m.parts:
                if isinstance(p, UserPromptPart) and isinstance(p.content, str):
                    return p.content
    return ""


def _returns(messages: list[ModelMessage]) -> dict[str, str]:
    """Tool results of the current turn (after its last user prompt)."""
    out: dict[str, str] = {}
    for m in messages:
        if isinstance(m, ModelRequest):
            for p in m.parts:
                if isinstance(p, UserPromptPart):
                    out = {}
                elif isinstance(p, ToolReturnPart):
                    out[p.tool_name] = str(p.content)
    return out


def _script_triage(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    text = _prompt(messages)
    billing = re.search(r"refund|invoice|charge|bill|paid", text, re.I) is not None
    route = {"specialist": "billing" if billing else "tech", "summary": text[:80]}
    if info.output_tools:
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, route)])
    return ModelResponse(parts=[TextPart(json.dumps(route))])


def _script_billing(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = _returns(messages)
    invoice = (re.findall(r"INV-\d+", _prompt(messages)) or ["INV-1001"])[0]
    if "lookup_invoice" not in done:
        return ModelResponse(parts=[ToolCallPart("lookup_invoice", {"invoice": invoice})])
    if "issue_refund" not in done and re.search(r"refund|twice|double", _prompt(messages), re.I):
        return ModelResponse(parts=[ToolCallPart("issue_refund", {"invoice": invoice, "amount_cents": 1999})])
    summary = "; ".join(done.values())
    return ModelResponse(parts=[TextPart(f"Billing here. {summary}. Anything else?")])


def _script_tech(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = _returns(messages)
    service = (re.findall(r"\b(api|web|mail|db)\b", _prompt(messages), re.I) or ["web"])[0].lower()
    if "check_service" not in done:
        return ModelResponse(parts=[ToolCallPart("check_service", {"service": service})])
    if "restart_service" not in done and "degraded" in done["check_service"]:
        return ModelResponse(parts=[ToolCallPart("restart_service", {"service": service})])
    return ModelResponse(parts=[TextPart(f"Tech here. {'; '.join(done.values())}.")])


def _streamed(script: Any) -> Any:
    """The script as a stream: text word by word, tool calls whole (for ``stream=True``)."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        for k, part in enumerate(script(messages, info).parts):
            if isinstance(part, TextPart):
                for word in re.findall(r"\S+\s*", part.content):
                    yield word
            elif isinstance(part, ToolCallPart):
                args = part.args_as_json_str()
                yield {k: DeltaToolCall(name=part.tool_name, json_args=args, tool_call_id=part.tool_call_id)}

    return stream


def _model(script: Any) -> Any:
    scripted = FunctionModel(script, stream_function=_streamed(script), model_name="scripted")
    return model_from_env(scripted=scripted)


MODEL = _model(_script_triage)  # what `jetagents up` reports: scripted or the configured one

# -- plain pydantic-ai agents ------------------------------------------------------------------
triage_ai: AiAgent[None, Route] = AiAgent(
    MODEL.model,
    name="triage",
    output_type=Route,
    instructions="Route the support ticket: billing (invoices, charges, refunds) or tech (outages, errors).",
)
billing_ai: AiAgent[None, str] = AiAgent(
    _model(_script_billing).model,
    name="billing",
    instructions="You are billing support. Look invoices up before acting; refund only double charges.",
)
tech_ai: AiAgent[None, str] = AiAgent(
    _model(_script_tech).model,
    name="tech",
    instructions="You are technical support. Check a service before restarting it.",
)


@billing_ai.tool_plain
def lookup_invoice(invoice: str) -> str:
    """An invoice's amount and payments."""
    return f"{invoice}: 19.99 USD, paid twice on 2026-11-28"


@billing_ai.tool_plain(requires_approval=True)
def issue_refund(invoice: str, amount_cents: int) -> str:
    """Refund ``amount_cents`` of an invoice (a person approves first; a payment provider would
    get the step's key as its idempotency key)."""
    return f"refunded {amount_cents / 100:.2f} USD on {invoice}"


@tech_ai.tool_plain
def check_service(service: str) -> str:
    """The health of a service."""
    return f"{service}: degraded (p99 2.3 s)" if service in ("api", "web") else f"{service}: healthy"


@tech_ai.tool_plain
def restart_service(service: str) -> str:
    """Restart a service's instances one at a time."""
    return f"{service}: restarted, healthy"


def _tenant_budget() -> Budget | None:
    tokens = os.environ.get("JETAGENTS_SUPPORT_TENANT_TOKENS")
    return Budget(tokens=int(tokens)) if tokens else None


async def _watch_approval(agent: Agent[Any], call: ToolCallPart) -> None:
    """Before a tool waits for its approval: the ticket's follow-up reminder starts."""
    detail = f"{call.tool_name} {call.args_as_json_str()}"
    await agent.call("followup", agent.id.id, "watch", {"waiting": "approval", "by": agent.id.type, "detail": detail})


SUPPORT_BUDGETS = Budgets(per_tenant=_tenant_budget(), provider=MODEL.provider)
triage_durable = DurableAgent(triage_ai, budgets=SUPPORT_BUDGETS)
# a refund waits (suspended, nothing held in memory) for `jetagents signal billing/<ticket>
# approval '{"approved": true}'`; without a decision within a day it is denied
billing_durable = DurableAgent(
    billing_ai, budgets=SUPPORT_BUDGETS, stream=True, approvals=True, on_approval=_watch_approval
)
tech_durable = DurableAgent(tech_ai, budgets=SUPPORT_BUDGETS, stream=True)


# -- the jetagents agents ----------------------------------------------------------------------
class TicketState(ChatState):
    specialist: str = ""
    summary: str = ""


class Triage(ChatAgent[TicketState]):
    type_name = "triage"
    state_type = TicketState
    action_timeout_s = 300.0

    @action
    async def open(self, text: str) -> dict[str, Any]:
        """Route a new ticket and return the specialist's first answer."""
        result = await self.chat(triage_durable, text)
        route: Route = result.output
        answer = await self.call(route.specialist, self.id.id, "handle", {"text": text}, timeout=240)
        return {"ticket": self.id.id, "specialist": route.specialist, "summary": route.summary, "answer": answer}


class _Specialist(ChatAgent[ChatState]):
    state_type = ChatState
    action_timeout_s = 240.0
    durable: DurableAgent

    @action
    async def handle(self, text: str) -> str:
        """One turn with the specialist (the ticket, or a follow-up); the ticket then waits for
        the customer, and its follow-up reminder starts (or starts again)."""
        if self.state.messages:  # the customer answered: no follow-up while the specialist works
            await self.call("followup", self.id.id, "watch", {"waiting": "", "by": self.id.type})
        result = await self.chat(type(self).durable, text)
        answer = str(result.output)
        await self.call("followup", self.id.id, "watch", {"waiting": "customer", "by": self.id.type})
        return answer

    @action(read_only=True)
    async def transcript(self) -> list[dict[str, Any]]:
        return self.state.messages


class Billing(_Specialist):
    type_name = "billing"
    durable = billing_durable


class Tech(_Specialist):
    type_name = "tech"
    durable = tech_durable


class FollowupState(BaseModel):
    waiting: str = ""  # "approval", "customer", "closed" or "" (nothing to follow up)
    by: str = ""  # the specialist the ticket waits on
    detail: str = ""
    nudges: int = 0  # follow-ups since the ticket began to wait
    notes: list[str] = []


class Watched(Event):
    waiting: str
    by: str
    detail: str


class Nudged(Event):
    note: str
    closed: bool


class Followup(Agent[FollowupState]):
    """A reminder following up on a ticket left waiting (one agent per ticket)."""

    type_name = "followup"
    state_type = FollowupState
    every_s = int(os.environ.get("JETAGENTS_SUPPORT_FOLLOWUP_S") or 3600)
    max_nudges = 3  # follow-ups to a silent customer before the ticket is closed

    @action
    async def watch(self, waiting: Literal["approval", "customer", ""], by: str, detail: str = "") -> None:
        """The ticket now waits for ``waiting`` (nothing: ``""``); the reminder follows."""
        if waiting:
            await self.remind("follow-up", every=type(self).every_s, action="nudge")  # replaces a running one
        elif self.state.waiting:
            await self.cancel_reminder("follow-up")
        self.emit(Watched(waiting=waiting, by=by, detail=detail))

    @action
    async def nudge(self) -> str:
        """What the reminder fires: a follow-up note while the ticket waits."""
        state, ticket = self.state, self.id.id
        closed = state.waiting == "customer" and state.nudges + 1 >= type(self).max_nudges
        if state.waiting == "approval":
            note = (
                f"ticket {ticket} still waits for approval of {state.detail}: "
                f"jetagents signal {state.by}/{ticket} approval '{{\"approved\": true}}'"
            )
        elif state.waiting == "customer":
            note = f"ticket {ticket}: asked the customer whether {state.by}'s answer solved it"
            note += "; no answer, closed" if closed else ""
        else:  # a firing that crossed a cancel: nothing waits
            return ""
        if closed:
            await self.cancel_reminder("follow-up")
        self.emit(Nudged(note=note, closed=closed))
        _log.info("support_follow_up", ticket=ticket, note=note)
        return note

    @action(read_only=True)
    async def status(self) -> dict[str, Any]:
        return self.state.model_dump()

    @applies
    def _watched(self, state: FollowupState, event: Watched) -> None:
        state.waiting, state.by, state.detail, state.nudges = event.waiting, event.by, event.detail, 0

    @applies
    def _nudged(self, state: FollowupState, event: Nudged) -> None:
        state.nudges += 1
        state.notes = [*state.notes, event.note][-20:]  # bounded: the newest follow-ups
        if event.closed:
            state.waiting = "closed"


SUPPORT_AGENTS = [Triage, Billing, Tech, Followup]

__all__ = [
    "MODEL",
    "SUPPORT_AGENTS",
    "SUPPORT_BUDGETS",
    "Billing",
    "Followup",
    "FollowupState",
    "Route",
    "Tech",
    "TicketState",
    "Triage",
]

_log.info("support_desk_model", model=MODEL.description, scripted=MODEL.scripted)
