"""Agent actions as MCP tools and the command id of a tool call (``jetagents.mcp.catalog``,
ADR 0048): pure rules, no server."""

from __future__ import annotations

import jsonschema
import pytest
from mcp import StdioServerParameters
from pydantic import BaseModel, Field

from jetagents import Agent, action
from jetagents._core.agent import spec_of
from jetagents.examples import Account, Counter
from jetagents.mcp import AGENT_ID, META_COMMAND_ID, CatalogError, McpTools, action_tools, command_id_for
from jetagents.mcp.command import _specs


class _S(BaseModel):
    pass


class Item(BaseModel):
    sku: str
    qty: int = Field(ge=1)


class Shop(Agent[_S]):
    type_name = "shop"
    state_type = _S

    @action
    async def order(self, items: list[Item], note: str | None = None) -> Item:
        """Place an order."""
        return items[0]

    @action(read_only=True)
    async def recent(self) -> list[Item]:
        return []


class ShopA(Agent[_S]):
    type_name = "shop_a"
    state_type = _S

    @action
    async def b(self) -> None: ...


class ShopAB(Agent[_S]):
    type_name = "shop"
    state_type = _S

    @action
    async def a_b(self) -> None: ...


class Clash(Agent[_S]):
    type_name = "clash"
    state_type = _S

    @action
    async def move(self, agent_id: str) -> None: ...


def test_each_action_is_a_tool_typed_from_its_signature() -> None:
    tools = action_tools([spec_of(Counter), spec_of(Account), spec_of(Shop)])
    assert sorted(tools) == [
        "account_balance",
        "account_deposit",
        "account_withdraw",
        "counter_get",
        "counter_increment",
        "shop_order",
        "shop_recent",
    ]
    order = tools["shop_order"].tool
    schema = order.input_schema
    assert schema["required"] == [AGENT_ID, "items"] and next(iter(schema["properties"])) == AGENT_ID
    # the schema is the one the host validates against: nested models, bounds, no extra keys
    ok = {AGENT_ID: "s1", "items": [{"sku": "x", "qty": 2}]}
    jsonschema.validate(ok, schema)
    for bad in (
        {"items": []},
        {AGENT_ID: "a.b", "items": []},
        {**ok, "items": [{"sku": "x", "qty": 0}]},
        {**ok, "x": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    out = order.output_schema
    assert out is not None and out["required"] == ["result"]
    jsonschema.validate({"result": {"sku": "x", "qty": 1}}, out)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"result": {"sku": "x"}}, out)
    # a nested model's definitions move to the root, where its references point
    recent = tools["shop_recent"].tool.output_schema
    assert recent is not None and "Item" in recent["$defs"]
    jsonschema.validate({"result": [{"sku": "x", "qty": 1}]}, recent)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"result": [{"sku": "x", "qty": "1"}]}, recent)
    assert order.description is not None and order.description.startswith("Place an order.")
    assert tools["account_deposit"].tool.input_schema["properties"]["amount"]["exclusiveMinimum"] == 0
    hints = {name: t.tool.annotations.read_only_hint for name, t in tools.items() if t.tool.annotations}
    assert hints == {
        "account_balance": True,
        "account_deposit": False,
        "account_withdraw": False,
        "counter_get": True,
        "counter_increment": False,
        "shop_order": False,
        "shop_recent": True,
    }


def test_clashing_names_and_an_agent_id_parameter_are_refused() -> None:
    with pytest.raises(CatalogError, match="shop_a_b"):
        action_tools([spec_of(ShopA), spec_of(ShopAB)])
    with pytest.raises(CatalogError, match="agent_id"):
        action_tools([spec_of(Clash)])


def test_the_command_id_of_a_tool_call() -> None:
    assert command_id_for("n1", 7, None) == "mcp-n1-7"
    assert command_id_for("n1", "req-7", {}) == "mcp-n1-req-7"
    assert command_id_for("n1.s2", 7, None) == "mcp-n1.s2-7"
    # a request id no header should carry as is: digested, still one id per request
    odd = command_id_for("n1", "a b\r\nX: y", None)
    assert odd is not None and odd.startswith("mcp-n1-h") and odd == command_id_for("n1", "a b\r\nX: y", None)
    # no scope (no session) or no request id: none, the caller draws a fresh one
    assert command_id_for(None, 7, None) is None and command_id_for("n1", None, None) is None
    # the client's own id wins, prefixed; too long: digested; not printable: ignored
    assert command_id_for("n1", 7, {META_COMMAND_ID: "order-42"}) == "mcp:order-42"
    long = command_id_for(None, None, {META_COMMAND_ID: "x" * 300})
    assert long is not None and long.startswith("mcp:h") and len(long) <= 256
    assert command_id_for("n1", 7, {META_COMMAND_ID: "a\nb"}) == "mcp-n1-7"
    assert command_id_for("n1", 7, {META_COMMAND_ID: 5}) == "mcp-n1-7"


def test_the_command_refuses_types_it_cannot_serve() -> None:
    examples = ["jetagents.examples:EXAMPLE_AGENTS"]
    assert [s.type_name for s in _specs("counter, account", examples)] == ["counter", "account"]
    with pytest.raises(ValueError, match="'nope' is not among the loaded classes"):
        _specs("counter,nope", examples)
    with pytest.raises(ValueError, match="names no agent type"):
        _specs(" , ", examples)


def test_mcp_tools_targets_and_their_default_names() -> None:
    """What ``McpTools`` hands the SDK's client; no connection is made before the first call."""
    http = McpTools("http://user:secret@tools.internal:9000/mcp")
    assert http.target == "http://user:secret@tools.internal:9000/mcp" and http.name == "tools.internal:9000"
    stdio = McpTools(["/usr/bin/uvx", "mcp-server-fetch", "--x"], name="fetch")
    assert isinstance(stdio.target, StdioServerParameters)
    assert (stdio.target.command, stdio.target.args) == ("/usr/bin/uvx", ["mcp-server-fetch", "--x"])
    assert stdio.name == "fetch"
    assert McpTools(["uvx", "mcp-server-fetch"]).name == "uvx"
    with pytest.raises(ValueError, match="at least the program"):
        McpTools([])
