"""jetagents.ai's pure parts: step names, tenants, prices, the budget error on the wire, the
model chosen from the environment."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from pydantic_ai.durable_exec import ModelRequestId, ToolsetCallToolId
from pydantic_ai.models.test import TestModel

from jetagents import AgentId, BudgetExceeded, DomainError
from jetagents._core.errors import error_from_wire
from jetagents._core.wire import encode_error
from jetagents.ai import Budget, Price, budget_window, model_from_env, step_name, tenant_of_id


class _Ctx:
    tool_call_id = "call_7"


class _ToolParams:
    name = "refund"
    ctx = _Ctx()


def test_step_names_are_stable_and_name_the_tool_call() -> None:
    assert step_name(ModelRequestId(None, model_name="m"), None, "x") == "model:default"
    assert step_name(ModelRequestId("fast", model_name="m"), None, "x") == "model:fast"
    assert step_name(ToolsetCallToolId("function", toolset_id="t"), _ToolParams(), "x") == "tool:refund:call_7"
    assert step_name(object(), None, "fallback") == "fallback"


def test_the_tenant_is_the_id_before_its_first_dash() -> None:
    assert tenant_of_id(AgentId("desk", "acme-ticket-7")) == "acme"
    assert tenant_of_id(AgentId("desk", "solo")) == "solo"


def test_prices_round_up_to_a_micro_dollar() -> None:
    price = Price(input_per_mtok=0.15, output_per_mtok=0.6)
    assert price.uusd(1_000_000, 0) == 150_000
    assert price.uusd(1, 1) == 1  # 0.75 micro-dollars: a budget never undercounts
    assert price.uusd(0, 0) == 0


def test_budget_exceeded_travels_as_its_own_code_and_is_a_domain_refusal() -> None:
    err = BudgetExceeded("tenant acme: 10 of 10 tokens spent", details={"scope": "tenant", "spent": 10})
    wire = orjson.loads(encode_error(err))["error"]
    assert wire["code"] == "budget_exceeded" and wire["reason"] == "budget_exceeded" and not wire["retryable"]
    back = error_from_wire(wire)
    assert type(back) is BudgetExceeded and isinstance(back, DomainError)
    assert back.details == {"scope": "tenant", "spent": 10} and back.message == err.message


def test_without_a_model_configured_the_scripted_one_is_used_and_said_so() -> None:
    choice = model_from_env({})
    assert choice.scripted and isinstance(choice.model, TestModel) and "scripted" in choice.description
    scripted = TestModel(custom_output_text="hi")
    assert model_from_env({}, scripted).model is scripted


def test_an_openai_compatible_endpoint_from_the_environment() -> None:
    env = {"JETAGENTS_MODEL": "openai:llama3", "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"}
    choice = model_from_env(env)
    assert not choice.scripted and choice.provider == "openai"
    assert choice.model.model_name == "llama3" and choice.description == "openai:llama3 at http://127.0.0.1:11434/v1"
    assert str(choice.model.base_url) == "http://127.0.0.1:11434/v1/"


def test_anthropic_from_the_environment() -> None:
    choice = model_from_env({"JETAGENTS_MODEL": "anthropic:claude-haiku-4-5", "ANTHROPIC_API_KEY": "k"})
    assert not choice.scripted and choice.provider == "anthropic" and choice.model.model_name == "claude-haiku-4-5"


def _ms(*when: int) -> int:
    return int(dt.datetime(*when, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc]


def test_a_budget_period_is_a_utc_window_that_starts_again() -> None:
    assert budget_window(None, _ms(2026, 11, 30, 23, 59)) == ""
    assert budget_window("day", _ms(2026, 11, 30, 23, 59)) == ".d20261130"
    assert budget_window("day", _ms(2026, 12, 1, 0, 0)) == ".d20261201"  # midnight UTC: a new counter
    assert budget_window("month", _ms(2026, 11, 30, 23, 59)) == ".m202611"
    assert budget_window("month", _ms(2026, 12, 1)) == ".m202612"
    # ISO weeks: Monday 2026-11-30 starts week 49; 2027-01-01 (a Friday) is in 2026's week 53
    assert budget_window("week", _ms(2026, 11, 29, 23, 59)) == ".w2026w48"
    assert budget_window("week", _ms(2026, 11, 30)) == ".w2026w49"
    assert budget_window("week", _ms(2027, 1, 1)) == ".w2026w53"
    with pytest.raises(ValueError):
        Budget(tokens=1, period="year")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Budget(tokens=1, reserve_tokens=0)
