"""Agent actions as MCP tool definitions, and the command id of a tool call (pure: no I/O).

One tool per action of each exposed agent type, named ``<type>_<action>``; its input schema is
the action's parameters model with the agent's id added as ``agent_id``, its output schema
``{"result": <the action's return type>}`` (MCP wants an object there). Read-only actions carry
the ``readOnlyHint`` annotation.

>>> from jetagents.examples import Counter
>>> from jetagents._core.agent import spec_of
>>> tools = action_tools([spec_of(Counter)])
>>> sorted(tools), tools["counter_get"].tool.annotations.read_only_hint
(['counter_get', 'counter_increment'], True)
>>> command_id_for("3f2a", 7, None)
'mcp-3f2a-7'
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcp.types import Tool, ToolAnnotations

from .._client.command import MAX_COMMAND_ID_CHARS
from .._core.agent import ActionSpec, AgentSpec

AGENT_ID = "agent_id"
"""The argument of every tool that names the agent (its id; the type is the tool's)."""
META_COMMAND_ID = "jetagents/command_id"
"""``_meta`` key of a ``tools/call`` by which a client picks the command id itself, so that a
call it repeats (a reply lost with its connection) is applied once."""
_ID_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_CLIENT_ID_PREFIX = "mcp:"


class CatalogError(ValueError):
    """The chosen agent types cannot be served as tools (a name clash, an unknown type)."""


@dataclass(frozen=True, slots=True)
class ActionTool:
    """One action served as a tool: where calls go and how they are described."""

    agent_type: str
    action: ActionSpec
    tool: Tool


def action_tools(specs: Sequence[AgentSpec]) -> dict[str, ActionTool]:
    """The tools of ``specs``' actions, by tool name."""
    out: dict[str, ActionTool] = {}
    for spec in specs:
        for name in sorted(spec.actions):
            action = spec.actions[name]
            tool_name = f"{spec.type_name}_{name}"
            if tool_name in out:  # "a_b" + "c" and "a" + "b_c"
                raise CatalogError(f"two actions would both be the tool {tool_name!r}; serve one of the types only")
            if AGENT_ID in action.param_names:
                raise CatalogError(
                    f"action {spec.type_name}.{name} has a parameter named {AGENT_ID!r}, the name the tool "
                    "gives the agent's id"
                )
            out[tool_name] = ActionTool(spec.type_name, action, _tool(tool_name, spec.type_name, action))
    return out


def _tool(tool_name: str, agent_type: str, action: ActionSpec) -> Tool:
    params = copy.deepcopy(action.params_model.model_json_schema())
    params.pop("title", None)
    described = {**_ID_SCHEMA, "description": f"Id of the {agent_type} agent (any agent of the type exists)."}
    params["properties"] = {AGENT_ID: described, **params.get("properties", {})}
    params["required"] = [AGENT_ID, *params.get("required", [])]
    params["type"] = "object"
    output: dict[str, Any] = {"type": "object", "properties": {"result": {}}, "required": ["result"]}
    if action.result_adapter is not None:
        result = action.result_adapter.json_schema(mode="serialization")
        defs = result.pop("$defs", None)
        output["properties"]["result"] = result
        if defs:
            output["$defs"] = defs
    doc = (action.fn.__doc__ or "").strip()
    how = "read-only" if action.read_only else "exactly-once (one command id per tool call)"
    return Tool(
        name=tool_name,
        description=f"{doc}\n\nAction {action.name!r} of agent type {agent_type!r}, {how}.".lstrip(),
        input_schema=params,
        output_schema=output,
        annotations=ToolAnnotations(read_only_hint=action.read_only, open_world_hint=False),
    )


def command_id_for(scope: str | None, request_id: int | str | None, meta: Mapping[str, Any] | None) -> str | None:
    """The command id of one tool call, or None when the call is to get a fresh one.

    A client's own ``_meta["jetagents/command_id"]`` wins (prefixed ``mcp:``, so it cannot
    take the id of a command sent otherwise). Else, within a ``scope`` that names one client's
    stream of requests (a stdio process, an HTTP session), the JSON-RPC request id: unique per
    request within it, and the same if the transport delivers a request again.
    """
    if meta:
        given = meta.get(META_COMMAND_ID)
        if isinstance(given, str) and given and given.isprintable():
            cmd = _CLIENT_ID_PREFIX + given
            if len(cmd) <= MAX_COMMAND_ID_CHARS:
                return cmd
            return _CLIENT_ID_PREFIX + "h" + hashlib.sha256(given.encode()).hexdigest()[:32]
    if scope is None or request_id is None or isinstance(request_id, bool):
        return None
    rid = str(request_id)
    if not _SAFE_REQUEST_ID.fullmatch(rid):  # any JSON string: keep it out of a header as is
        rid = "h" + hashlib.sha256(rid.encode()).hexdigest()[:32]
    return f"mcp-{scope}-{rid}"
