"""Durable pydantic-ai agents on jetagents (ADR 0047).

A pydantic-ai ``Agent`` runs inside a jetagents action with every model request and every tool
call a journaled step (``DurableAgent``); a conversation lives in the agent's state
(``ChatAgent``, ``ChatState``); budgets per agent and per tenant refuse model calls with
``budget_exceeded`` (``Budgets``); models come from the environment (``model_from_env``).
"""

from __future__ import annotations

from ._agent import MODEL_RETRY, ChatAgent, ChatState, DurableAgent, MessagesAdded, call_agent, dump_messages
from ._budget import Budget, Budgets, Price, Reservation, budget_window, tenant_of_id
from ._durability import JetAgentsDurability, step_name
from ._models import ModelChoice, model_from_env

__all__ = [
    "MODEL_RETRY",
    "Budget",
    "Budgets",
    "ChatAgent",
    "ChatState",
    "DurableAgent",
    "JetAgentsDurability",
    "MessagesAdded",
    "ModelChoice",
    "Price",
    "Reservation",
    "budget_window",
    "call_agent",
    "dump_messages",
    "model_from_env",
    "step_name",
    "tenant_of_id",
]
