"""Durable pydantic-ai agents (ADR 0047) with a real nats-server and an in-process host:
pydantic-ai's own ``FunctionModel``, and a real HTTP server speaking the chat-completions
protocol (``jetagents.testing.openai_server``) behind pydantic-ai's OpenAI model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo
from pydantic_ai.usage import RequestUsage, UsageLimits

from jetagents import Client, ClientSettings, DomainError, Host, NatsServer, Registry, RetryPolicy
from jetagents._core.errors import BudgetExceeded
from jetagents._obs.metrics import GenAiMetrics
from jetagents.ai import Budget, Budgets, Price, budget_window
from jetagents.examples import EXAMPLE_AGENTS
from jetagents.testing.openai_server import ScriptedChatServer
from tests import ai_agents
from tests.ai_agents import AGENTS, durable_support, support
from tests.conftest import host_settings
from tests.integration.helpers import commits


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    ai_agents.TOOL_RUNS.clear()
    yield
    ai_agents.SCRIPT = None
    ai_agents.FAIL_TOOL_ONCE.clear()
    ai_agents.Desk.LIMITS = None
    durable_support.budgets = ai_agents.BUDGETS


@pytest.fixture
async def ai_client(nats_server: NatsServer) -> AsyncIterator[Client]:
    async with Host(host_settings(nats_server.url), Registry([*EXAMPLE_AGENTS, *AGENTS])):
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            yield client
        finally:
            await client.close()


def _tool_returns(messages: list[ModelMessage]) -> list[str]:
    return [
        p.tool_name for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]


def two_tools_then_text(calls: list[int]) -> Any:
    """Model call 1 asks for lookup_order and refund, call 2 answers with text."""

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(len(messages))
        if not _tool_returns(messages):
            return ModelResponse(
                parts=[
                    ToolCallPart("lookup_order", {"order_id": "o1"}, tool_call_id="c1"),
                    ToolCallPart("refund", {"order_id": "o1", "amount": 5}, tool_call_id="c2"),
                ]
            )
        return ModelResponse(parts=[TextPart(f"done after {_tool_returns(messages)}")])

    return script


async def test_the_same_pydantic_ai_agent_runs_plain_and_on_jetagents(ai_client: Client) -> None:
    plain_calls: list[int] = []
    ai_agents.SCRIPT = two_tools_then_text(plain_calls)
    plain = await support.run("where is o1?")  # plain pydantic-ai, no jetagents anywhere
    assert plain.output == "done after ['lookup_order', 'refund']"
    assert len(plain_calls) == 2 and ai_agents.TOOL_RUNS == {"lookup_order:o1": 1, "refund:o1": 1}

    durable_calls: list[int] = []
    ai_agents.SCRIPT = two_tools_then_text(durable_calls)
    ai_agents.TOOL_RUNS.clear()
    ref = ai_client.agent("desk", "acme-1")
    assert await ref.request("ask", {"prompt": "where is o1?"}, command_id="t1", timeout=20) == plain.output
    assert len(durable_calls) == 2 and ai_agents.TOOL_RUNS == {"lookup_order:o1": 1, "refund:o1": 1}
    log = await commits(ai_client.nc, "desk", "acme-1")
    assert [c["j"].get("name") for c in log] == [
        "model:default",
        "tool:lookup_order:c1",
        "tool:refund:c2",
        "model:default",
        None,  # the closing commit: the turn's messages as one event
    ]
    assert [e["type"] for e in log[-1]["events"]] == ["MessagesAdded"]
    assert await ref.request("history_size") == 4  # request, response, tool returns, response
    assert len(plain.new_messages()) == 4


async def test_a_failed_run_is_retried_from_the_journal_without_asking_the_model_again(ai_client: Client) -> None:
    calls: list[int] = []
    ai_agents.SCRIPT = two_tools_then_text(calls)
    ai_agents.FAIL_TOOL_ONCE.add("o1")  # the first run fails in its first tool; the host retries it
    ref = ai_client.agent("desk", "acme-2")
    out = await ref.request("ask", {"prompt": "o1?"}, command_id="t2", timeout=30)
    assert out == "done after ['lookup_order', 'refund']"
    assert len(calls) == 2  # model call 1 was journaled before the failure: not asked again
    assert ai_agents.TOOL_RUNS == {"lookup_order:o1": 2, "refund:o1": 1}
    again = await ref.request_reply("ask", {"prompt": "o1?"}, command_id="t2", timeout=10)
    assert again.duplicate and again.result == out and len(calls) == 2


async def test_a_conversation_lives_in_the_agent_state(ai_client: Client) -> None:
    seen: list[int] = []

    def echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(len(messages))
        return ModelResponse(parts=[TextPart(f"turn {len(seen)}")])

    ai_agents.SCRIPT = echo
    ref = ai_client.agent("desk", "acme-3")
    assert await ref.request("ask", {"prompt": "hello"}, timeout=20) == "turn 1"
    assert await ref.request("ask", {"prompt": "again"}, timeout=20) == "turn 2"
    assert seen == [1, 3]  # the second turn saw the first turn's request and answer


async def test_a_large_conversation_is_kept_by_reference_and_the_next_turn_sees_all_of_it(
    nats_server: NatsServer,
) -> None:
    prompts: list[list[str]] = []

    def echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompts.append(
            [
                str(p.content)
                for m in messages
                if isinstance(m, ModelRequest)
                for p in m.parts
                if isinstance(p, UserPromptPart)
            ]
        )
        return ModelResponse(parts=[TextPart(f"turn {len(prompts)}")])

    ai_agents.SCRIPT = echo
    long_prompt = "the whole ticket history: " + "disk d1 full, " * 200  # ~3 KB, over the 1 KiB threshold
    settings = host_settings(nats_server.url, payload_ref_threshold_bytes=1024)
    for prompt in (long_prompt, "and now?"):  # a new host each turn: the second reads the log back
        async with Host(settings, Registry(AGENTS)):
            client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
            try:
                await client.agent("desk", "acme-11").request("ask", {"prompt": prompt}, timeout=20)
                log = await commits(client.nc, "desk", "acme-11")
            finally:
                await client.close()
    assert prompts == [[long_prompt], [long_prompt, "and now?"]]
    [first_turn] = next(c for c in log if c["j"]["k"] == "end")["events"]  # the closing commit's event
    assert first_turn["type"] == "MessagesAdded" and first_turn["data"]["$ref"].startswith("desk.acme-11/sha256:")
    assert first_turn["data"]["bytes"] > len(long_prompt)  # the whole turn is in the blob, not in the log


async def test_structured_output_tools_calling_agents_and_usage_limits(ai_client: Client) -> None:
    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not _tool_returns(messages):
            return ModelResponse(parts=[ToolCallPart("bump", {"counter": "c9"}, tool_call_id="b1")])
        out = info.output_tools[0].name
        return ModelResponse(parts=[ToolCallPart(out, {"refund": True, "amount": 7}, tool_call_id="v1")])

    ai_agents.SCRIPT = script
    ai_agents.FAIL_TOOL_ONCE.add("never")
    ref = ai_client.agent("desk", "acme-4")
    assert await ref.request("judge", {"prompt": "refund?"}, command_id="j1", timeout=20) == {
        "refund": True,
        "amount": 7,
    }
    assert await ai_client.agent("counter", "c9").request("get") == 1  # the tool's call to another agent
    callee = await commits(ai_client.nc, "counter", "c9")
    assert [c["cmd"] for c in callee] == ["desk.acme-4:j1#1>counter.c9.increment"]

    ai_agents.Desk.LIMITS = UsageLimits(request_limit=1)
    ai_agents.SCRIPT = two_tools_then_text([])
    with pytest.raises(DomainError) as info:  # a new conversation: it needs 2 requests
        await ai_client.agent("desk", "acme-5").request("ask", {"prompt": "too long"}, timeout=20)
    assert info.value.reason == "usage_limit_exceeded"


async def test_budgets_refuse_the_call_that_would_exceed_them_and_metrics_count_tokens(ai_client: Client) -> None:
    reader = InMemoryMetricReader()
    budgets = Budgets(per_tenant=Budget(tokens=200), metrics=GenAiMetrics(MeterProvider(metric_readers=[reader])))
    durable_support.budgets = budgets
    calls: list[int] = []
    ai_agents.SCRIPT = two_tools_then_text(calls)  # FunctionModel's usage: ~135 tokens for these 2 calls
    await ai_client.agent("desk", "globex-1").request("ask", {"prompt": "o1?"}, timeout=20)
    first = await budgets.tokens_spent(ai_client, "tenant.globex")
    assert 0 < first < 200 and len(calls) == 2
    # another agent of the same tenant: its calls go on while the tenant's spending is under 200
    await ai_client.agent("desk", "globex-2").request("ask", {"prompt": "o1?"}, timeout=20)
    total = await budgets.tokens_spent(ai_client, "tenant.globex")
    assert total >= 200 and len(calls) == 4
    with pytest.raises(BudgetExceeded) as info:  # the next call of the tenant is refused, unsent
        await ai_client.agent("desk", "globex-3").request("ask", {"prompt": "o1?"}, timeout=20)
    assert info.value.code == "budget_exceeded" and len(calls) == 4
    assert info.value.details == {
        "scope": "tenant",
        "key": "tenant.globex",
        "limit": 200,
        "spent": total,
        "unit": "tokens",
    }
    # another tenant is not affected
    await ai_client.agent("desk", "initech-1").request("ask", {"prompt": "o1?"}, timeout=20)

    data = reader.get_metrics_data()
    points = {
        (m.name, dp.attributes.get("gen_ai.token.type")): dp
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for dp in m.data.data_points
    }
    usage_in = points[("gen_ai.client.token.usage", "input")]
    usage_out = points[("gen_ai.client.token.usage", "output")]
    assert usage_in.attributes["gen_ai.request.model"] == "function:_scripted:"
    assert usage_in.sum + usage_out.sum == total + (await budgets.tokens_spent(ai_client, "tenant.initech"))
    assert points[("gen_ai.client.operation.duration", None)].count == usage_in.count


async def test_a_tenant_s_agents_spending_at_once_never_pass_its_budget(ai_client: Client) -> None:
    # every call uses 10 tokens and reserves 10: 9 fit in 95, whoever asks; the rest are refused unsent
    budgets = Budgets(per_tenant=Budget(tokens=95, period="day", reserve_tokens=10))
    durable_support.budgets = budgets
    answered: list[int] = []

    def ten_tokens(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        answered.append(1)
        return ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(input_tokens=6, output_tokens=4))

    ai_agents.SCRIPT = ten_tokens
    windows = {budget_window("day", int(time.time() * 1000))}

    async def agent_asks(n: int) -> list[str]:
        outcomes = []
        for k in range(5):
            try:
                await ai_client.agent("desk", f"umbrella-{n}").request("ask", {"prompt": f"q{k}"}, timeout=30)
                outcomes.append("ok")
            except BudgetExceeded as err:
                # spent or held by others at that moment (a refused call's hold is given back)
                assert err.details["limit"] == 95 and err.details["spent"] + 10 > 95
                outcomes.append("refused")
        return outcomes

    outcomes = [o for agent in await asyncio.gather(*(agent_asks(n) for n in range(4))) for o in agent]
    windows.add(budget_window("day", int(time.time() * 1000)))  # a run across midnight UTC counts in two
    spent = sum([await budgets.tokens_spent(ai_client, f"tenant.umbrella{w}") for w in windows])
    assert outcomes.count("ok") == len(answered) == 9 and outcomes.count("refused") == 11
    assert spent == 90  # what was answered; refused calls gave their reservations back


def ten_tokens_each(answered: list[int]) -> Any:
    """Every model call answers ``ok`` and uses 6 input and 4 output tokens."""

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        answered.append(1)
        return ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(input_tokens=6, output_tokens=4))

    return script


async def test_an_agent_s_own_budget_refuses_it_while_its_tenant_s_other_agents_go_on(ai_client: Client) -> None:
    budgets = Budgets(per_agent=Budget(tokens=15, reserve_tokens=10), per_tenant=Budget(tokens=1000))
    durable_support.budgets = budgets
    answered: list[int] = []
    ai_agents.SCRIPT = ten_tokens_each(answered)
    hooli1 = ai_client.agent("desk", "hooli-1")
    assert await hooli1.request("ask", {"prompt": "q1"}, timeout=20) == "ok"
    with pytest.raises(BudgetExceeded) as info:  # 10 spent + 10 reserved > 15: refused, unsent
        await hooli1.request("ask", {"prompt": "q2"}, timeout=20)
    assert info.value.details == {
        "scope": "agent",
        "key": "agent.desk.hooli-1",
        "limit": 15,
        "spent": 10,
        "unit": "tokens",
    }
    assert len(answered) == 1
    assert await ai_client.agent("desk", "hooli-2").request("ask", {"prompt": "q1"}, timeout=20) == "ok"
    assert len(answered) == 2
    assert await budgets.tokens_spent(ai_client, "agent.desk.hooli-1") == 10  # the refused hold was given back
    assert await budgets.tokens_spent(ai_client, "tenant.hooli") == 20


async def test_a_cost_budget_refuses_once_the_tenant_s_spending_in_dollars_reaches_it(ai_client: Client) -> None:
    # 6 input tokens at 0.05 USD and 4 output tokens at 0.1 USD: 0.7 USD (700,000 micro-dollars) a call
    price = Price(input_per_mtok=50_000, output_per_mtok=100_000)
    budgets = Budgets(per_tenant=Budget(cost_usd=1.0), prices={"function:_scripted:": price})
    durable_support.budgets = budgets
    answered: list[int] = []
    ai_agents.SCRIPT = ten_tokens_each(answered)
    for n in (1, 2):  # checked before each call, not reserved: the second call passes 1 USD
        assert await ai_client.agent("desk", f"wonka-{n}").request("ask", {"prompt": "q"}, timeout=20) == "ok"
    with pytest.raises(BudgetExceeded) as info:
        await ai_client.agent("desk", "wonka-3").request("ask", {"prompt": "q"}, timeout=20)
    assert info.value.details == {
        "scope": "tenant",
        "key": "tenant.wonka",
        "limit": 1_000_000,
        "spent": 1_400_000,
        "unit": "uusd",
    }
    assert len(answered) == 2


async def test_the_real_http_client_path_with_a_retried_server_error(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ScriptedChatServer([[("check", {"item": "disk"})], "all good"]) as server:
        monkeypatch.setenv("JETAGENTS_MODEL", "openai:scripted")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        durable = ai_agents.http_agent()
        durable.retry = RetryPolicy(attempts=3, base_s=0.01, max_s=0.05)
        server.fail_next(1)  # the first request gets a 500: retried inside its step
        async with Host(host_settings(nats_server.url), Registry(AGENTS)):
            client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
            try:
                out = await client.agent("httpdesk", "h1").request("ask", {"prompt": "check"}, timeout=30)
            finally:
                await client.close()
    assert out == {"output": "all good", "messages": 4}
    assert server.received == {0: 2, 1: 1} and server.answered == {0: 1, 1: 1}
    assert server.effects == {"check-disk": 1, "turn-end": 1}
    [key] = server.effect_keys["check-disk"]
    assert key.startswith("httpdesk.h1:") and key.endswith("#1")  # the tool step's idempotency key


async def test_text_streams_to_the_caller_as_the_model_makes_it(ai_client: Client) -> None:
    ref = ai_client.agent("opsdesk", "acme-6")
    stream = ref.stream("ask", {"prompt": "status?"}, command_id="s1", timeout=20)
    chunks = [chunk async for chunk in stream]
    assert chunks == [{"delta": w + " "} for w in ("all", "disks", "are", "healthy")]  # the model's deltas
    assert stream.result == "all disks are healthy "
    log = await commits(ai_client.nc, "opsdesk", "acme-6")
    assert [c["j"].get("name") for c in log] == ["model:default", None]


async def test_a_tool_that_needs_approval_suspends_the_action_until_a_person_decides(ai_client: Client) -> None:
    ref = ai_client.agent("opsdesk", "acme-7")
    first = await ref.request_reply("ask", {"prompt": "wipe d1"}, command_id="w1", timeout=20)
    assert first.status == "suspended" and first.waiting["signal"] == "approval"
    assert ai_agents.TOOL_RUNS == {}
    assert await ref.signal("approval", {"approved": True}) == {"delivered": "w1"}
    assert await ref.result("w1", timeout=20) == "wiped d1 " and ai_agents.TOOL_RUNS == {"wipe_disk:d1": 1}
    log = await commits(ai_client.nc, "opsdesk", "acme-7")
    kinds = [(c["j"]["k"], c["j"].get("name")) for c in log if c.get("j")]
    assert kinds == [
        ("step", "model:default"),
        ("wait", "approval"),
        ("signal", "approval"),
        ("step", "tool:wipe_disk:w1"),
        ("step", "model:default"),
        ("end", None),
    ]


async def test_a_streamed_turn_shows_the_approval_request_then_the_text_after_the_decision(ai_client: Client) -> None:
    ref = ai_client.agent("opsdesk", "acme-10")
    stream = ref.stream("ask", {"prompt": "wipe d1"}, command_id="w3", timeout=20)
    chunks: list[Any] = []
    async for chunk in stream:
        chunks.append(chunk)
        if "approval" in chunk:  # the action is suspended now: a person decides
            assert await ref.signal("approval", {"approved": True}) == {"delivered": "w3"}
    assert chunks == [
        {"approval": {"tool": "wipe_disk", "args": {"disk": "d1"}, "signal": "approval"}},
        {"delta": "wiped "},
        {"delta": "d1 "},
    ]
    assert stream.result == "wiped d1 " and ai_agents.TOOL_RUNS == {"wipe_disk:d1": 1}


async def test_a_denied_or_unanswered_approval_is_a_denial(ai_client: Client) -> None:
    ref = ai_client.agent("opsdesk", "acme-8")
    await ref.request_reply("ask", {"prompt": "wipe d1"}, command_id="w2", timeout=20)
    await ref.signal("approval", {"approved": False, "reason": "not on a Friday"})
    assert await ref.result("w2", timeout=20) == "wipe_disk was not approved: not on a Friday "
    ai_agents.durable_ops.approval_timeout_s = 1.0
    try:
        out = await ai_client.agent("opsdesk", "acme-9").request("ask", {"prompt": "wipe d1"}, timeout=30)
    finally:
        ai_agents.durable_ops.approval_timeout_s = 30.0
    assert out == "wipe_disk was not approved: no decision in time "
    assert ai_agents.TOOL_RUNS == {}  # the tool never ran
