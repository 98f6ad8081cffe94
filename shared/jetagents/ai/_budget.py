"""Token and cost budgets per agent and per tenant, and the GenAI metrics of model calls.

Spending is kept in the server's own counters (``Nats-Incr``, ADR 0011) through the shared
state's ``crdt.increment``: one publish per model call, no read-modify-write, so two agents of
one tenant on two hosts never lose each other's spending. A model call is refused with
``BudgetExceeded`` (``budget_exceeded``) before it is sent when what is spent, plus the call's
``max_tokens`` when the run sets one, would pass a limit.

The **tenant** of an agent is the part of its id before the first ``-`` (``acme-ticket-7`` is
tenant ``acme``; an id without ``-`` is a tenant of its own), or what ``tenant_of`` returns.
Counter keys: ``ai.tokens.agent.<type>.<id>``, ``ai.tokens.tenant.<tenant>`` and, with a price
table, ``ai.cost_uusd.agent...``/``ai.cost_uusd.tenant...`` (micro-dollars: counters are
integers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.agent import Agent
from .._core.errors import BudgetExceeded
from .._core.ids import AgentId
from .._obs.metrics import GenAiMetrics

_TOKENS = "ai.tokens"
_COST = "ai.cost_uusd"


def tenant_of_id(agent_id: AgentId) -> str:
    """The default tenant: the agent id up to its first ``-``."""
    return agent_id.id.split("-", 1)[0]


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for one agent or one tenant (None: unlimited). Tokens are input plus output."""

    tokens: int | None = None
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def uusd(self, input_tokens: int, output_tokens: int) -> int:
        """Micro-dollars of one call, rounded up (a budget never undercounts)."""
        total = input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok  # in micro-dollars
        return int(-(-total // 1))


@dataclass(slots=True)
class Budgets:
    """Budgets of the agents running one durable pydantic-ai agent, and its metrics.

    >>> Budgets(per_tenant=Budget(tokens=100_000), prices={"gpt-4o-mini": Price(0.15, 0.6)})  # doctest: +SKIP
    """

    per_agent: Budget | None = None
    per_tenant: Budget | None = None
    prices: Mapping[str, Price] = field(default_factory=dict)
    tenant_of: Callable[[AgentId], str] = tenant_of_id
    provider: str = "openai"
    state_name: str = "ai"
    metrics: GenAiMetrics = field(default_factory=GenAiMetrics)

    def _keys(self, aid: AgentId) -> list[tuple[str, Budget, str]]:
        out: list[tuple[str, Budget, str]] = []
        if self.per_agent is not None:
            out.append(("agent", self.per_agent, f"agent.{aid.type}.{aid.id}"))
        if self.per_tenant is not None:
            out.append(("tenant", self.per_tenant, f"tenant.{self.tenant_of(aid)}"))
        return out

    def _state(self, agent: Agent[Any]) -> Any:
        client = agent.ctx.client
        return None if client is None else client.shared(self.state_name).crdt

    async def check(self, agent: Agent[Any], model: str, max_tokens: int) -> None:
        """Raise ``BudgetExceeded`` if a call of at most ``max_tokens`` would pass a limit."""
        crdt = self._state(agent)
        if crdt is None:
            return
        for scope, budget, key in self._keys(agent.id):
            if budget.tokens is not None:
                spent = int((await crdt.counter(f"{_TOKENS}.{key}")).value)
                # without max_tokens the call's size is unknown: refused once the budget is spent
                if spent >= budget.tokens or spent + max_tokens > budget.tokens:
                    raise BudgetExceeded(
                        f"{scope} {key}: {spent} of {budget.tokens} tokens spent",
                        details={"scope": scope, "key": key, "limit": budget.tokens, "spent": spent, "unit": "tokens"},
                    )
            if budget.cost_usd is not None and model in self.prices:
                spent_uusd = int((await crdt.counter(f"{_COST}.{key}")).value)
                limit_uusd = int(budget.cost_usd * 1_000_000)
                if spent_uusd >= limit_uusd:
                    raise BudgetExceeded(
                        f"{scope} {key}: {spent_uusd / 1e6:.6f} of {budget.cost_usd} USD spent",
                        details={"scope": scope, "key": key, "limit": limit_uusd, "spent": spent_uusd, "unit": "uusd"},
                    )

    async def spent(self, agent: Agent[Any], model: str, response: Any, elapsed_s: float) -> None:
        """Count one answered model call."""
        usage = getattr(response, "usage", None)
        tin = int(getattr(usage, "input_tokens", 0) or 0)
        tout = int(getattr(usage, "output_tokens", 0) or 0)
        self.metrics.call(model, self.provider, tin, tout, elapsed_s)
        crdt = self._state(agent)
        if crdt is None:
            return
        price = self.prices.get(model)
        for _, _, key in self._keys(agent.id):
            if tin + tout:
                await crdt.increment(f"{_TOKENS}.{key}", tin + tout)
            if price is not None:
                cost = price.uusd(tin, tout)
                if cost:
                    await crdt.increment(f"{_COST}.{key}", cost)

    def failed(self, model: str, elapsed_s: float, error: str) -> None:
        self.metrics.call(model, self.provider, 0, 0, elapsed_s, error)

    async def tokens_spent(self, client: Any, key: str) -> int:
        """What the counter ``ai.tokens.<key>`` holds (``agent.<type>.<id>``, ``tenant.<t>``)."""
        return int((await client.shared(self.state_name).crdt.counter(f"{_TOKENS}.{key}")).value)
