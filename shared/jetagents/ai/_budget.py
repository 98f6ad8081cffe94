"""Token and cost budgets per agent and per tenant, and the GenAI metrics of model calls.

Spending is kept in the server's own counters (``Nats-Incr``, ADR 0011) through the shared
state's ``crdt.increment``, which adds atomically and answers the new total: no
read-modify-write, so two agents of one tenant on two hosts never lose each other's spending.
A token budget is **reserved** before a call: the call's ``max_tokens`` (or
``Budget.reserve_tokens`` when the run sets none) is added first, and when the new total passes
the limit it is taken back and the call refused with ``BudgetExceeded`` (``budget_exceeded``);
after the answer the counter is corrected to what the call used. Concurrent calls of a tenant,
on any host, are admitted by the server's one counter, so admitted reservations never pass the
limit; spending passes it only by what a call used beyond its reservation. A budget with a
``period`` (``day``, ``week``, ``month``, UTC) counts in one counter per window, so it starts
again at zero each window.

The **tenant** of an agent is the part of its id before the first ``-`` (``acme-ticket-7`` is
tenant ``acme``; an id without ``-`` is a tenant of its own), or what ``tenant_of`` returns.
Counter keys: ``ai.tokens.agent.<type>.<id>``, ``ai.tokens.tenant.<tenant>`` and, with a price
table, ``ai.cost_uusd.agent...``/``ai.cost_uusd.tenant...`` (micro-dollars: counters are
integers); with a period, the window follows (``ai.tokens.tenant.acme.d20261130``,
``.w2026w48``, ``.m202611``). Cost budgets are checked, not reserved (the price of a call's
input is not known before it is sent): concurrent calls may pass a cost limit by one call each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._core.agent import Agent
from .._core.errors import BudgetExceeded
from .._core.ids import AgentId
from .._obs.metrics import GenAiMetrics

_TOKENS = "ai.tokens"
_COST = "ai.cost_uusd"


def tenant_of_id(agent_id: AgentId) -> str:
    """The default tenant: the agent id up to its first ``-``."""
    return agent_id.id.split("-", 1)[0]


Period = Literal["day", "week", "month"]


async def _add(crdt: Any, counter: str, by: int) -> int:
    """Add ``by`` to ``counter``; the new total. The budget's adds run inside the model call's
    step, so each is an effect of the step with a key of its own (``effect_key``, ADR 0042
    §12): a re-run of the step makes them again under the same keys, and the server
    deduplicates them instead of counting a call twice."""
    return int((await crdt.increment(counter, by)).value)


def budget_window(period: Period | None, wall_ms: int) -> str:
    """The counter key suffix of the window ``wall_ms`` falls in (UTC); ``""`` without a period.

    >>> budget_window("day", 1_796_000_000_000), budget_window("month", 1_796_000_000_000)
    ('.d20261130', '.m202611')
    """
    if period is None:
        return ""
    at = dt.datetime.fromtimestamp(wall_ms / 1000, tz=dt.UTC)
    if period == "day":
        return f".d{at:%Y%m%d}"
    if period == "week":
        year, week, _ = at.isocalendar()
        return f".w{year}w{week:02d}"
    if period == "month":
        return f".m{at:%Y%m}"
    raise ValueError(f"a budget period is day, week or month, not {period!r}")


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for one agent or one tenant (None: unlimited). Tokens are input plus output.
    ``period``: the limits hold per UTC day, week or month (None: for ever).
    ``reserve_tokens``: what a call reserves when its run sets no ``max_tokens``."""

    tokens: int | None = None
    cost_usd: float | None = None
    period: Period | None = None
    reserve_tokens: int = 1

    def __post_init__(self) -> None:
        budget_window(self.period, 0)  # refuses an unknown period now, not at the first call
        if self.reserve_tokens < 1:
            raise ValueError("reserve_tokens is at least 1: a call of unknown size holds one token")


@dataclass(slots=True)
class Reservation:
    """What a call holds of each token budget until it is answered: ``(counter key, tokens)``."""

    held: list[tuple[str, int]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the windowed keys spending is counted in


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

    def _keys(self, agent: Agent[Any]) -> list[tuple[str, Budget, str]]:
        aid = agent.id
        out: list[tuple[str, Budget, str]] = []
        now_ms = agent.ctx.clock.wall_ms()
        if self.per_agent is not None:
            window = budget_window(self.per_agent.period, now_ms)
            out.append(("agent", self.per_agent, f"agent.{aid.type}.{aid.id}{window}"))
        if self.per_tenant is not None:
            window = budget_window(self.per_tenant.period, now_ms)
            out.append(("tenant", self.per_tenant, f"tenant.{self.tenant_of(aid)}{window}"))
        return out

    def _state(self, agent: Agent[Any]) -> Any:
        client = agent.ctx.client
        return None if client is None else client.shared(self.state_name).crdt

    async def reserve(self, agent: Agent[Any], model: str, max_tokens: int) -> Reservation:
        """Hold a call's tokens in every budget, or raise ``BudgetExceeded`` holding nothing."""
        held = Reservation()
        crdt = self._state(agent)
        if crdt is None:
            return held
        try:
            for scope, budget, key in self._keys(agent):
                held.keys.append(key)
                if budget.tokens is not None:
                    need = max_tokens or budget.reserve_tokens
                    counter = f"{_TOKENS}.{key}"
                    total = await _add(crdt, counter, need)
                    held.held.append((counter, need))
                    if total > budget.tokens:
                        spent = total - need  # what others had spent or held
                        raise BudgetExceeded(
                            f"{scope} {key}: {spent} of {budget.tokens} tokens spent",
                            details={
                                "scope": scope,
                                "key": key,
                                "limit": budget.tokens,
                                "spent": spent,
                                "unit": "tokens",
                            },
                        )
                if budget.cost_usd is not None and model in self.prices:
                    spent_uusd = int((await crdt.counter(f"{_COST}.{key}")).value)
                    limit_uusd = int(budget.cost_usd * 1_000_000)
                    if spent_uusd >= limit_uusd:
                        raise BudgetExceeded(
                            f"{scope} {key}: {spent_uusd / 1e6:.6f} of {budget.cost_usd} USD spent",
                            details={
                                "scope": scope,
                                "key": key,
                                "limit": limit_uusd,
                                "spent": spent_uusd,
                                "unit": "uusd",
                            },
                        )
        except BudgetExceeded:
            await self.release(agent, held)
            raise
        return held

    async def release(self, agent: Agent[Any], held: Reservation) -> None:
        """Give back what a call held (refused, or failed without an answer)."""
        crdt = self._state(agent)
        if crdt is None:
            return
        for counter, tokens in held.held:
            await _add(crdt, counter, -tokens)
        held.held.clear()

    async def spent(self, agent: Agent[Any], model: str, response: Any, elapsed_s: float, held: Reservation) -> None:
        """Count one answered model call: each budget's counter goes from what the call held
        to what it used."""
        usage = getattr(response, "usage", None)
        tin = int(getattr(usage, "input_tokens", 0) or 0)
        tout = int(getattr(usage, "output_tokens", 0) or 0)
        self.metrics.call(model, self.provider, tin, tout, elapsed_s)
        crdt = self._state(agent)
        if crdt is None:
            return
        reserved = dict(held.held)
        price = self.prices.get(model)
        for key in held.keys:
            counter = f"{_TOKENS}.{key}"
            correction = tin + tout - reserved.get(counter, 0)
            if correction:
                await _add(crdt, counter, correction)
            if price is not None:
                cost = price.uusd(tin, tout)
                if cost:
                    await _add(crdt, f"{_COST}.{key}", cost)
        held.held.clear()

    def failed(self, model: str, elapsed_s: float, error: str) -> None:
        self.metrics.call(model, self.provider, 0, 0, elapsed_s, error)

    async def tokens_spent(self, client: Any, key: str) -> int:
        """What the counter ``ai.tokens.<key>`` holds (``agent.<type>.<id>``, ``tenant.<t>``,
        followed by ``budget_window(period, now)`` for a budget with a period)."""
        return int((await client.shared(self.state_name).crdt.counter(f"{_TOKENS}.{key}")).value)
