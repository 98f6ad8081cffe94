"""MCP on jetagents (ADR 0048): agent actions served as MCP tools (``jetagents mcp``,
:class:`AgentToolServer`), and an external MCP server's tools used by an agent as journaled
steps (:class:`McpTools`).

>>> from jetagents.mcp import McpTools
>>> search = McpTools("http://127.0.0.1:8000/mcp", name="search")

Its names load on first use: the MCP SDK takes about a second to import, which the rest of
the command line should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import AGENT_ID, META_COMMAND_ID, ActionTool, CatalogError, action_tools, command_id_for
    from .server import AgentToolServer, new_scope, serve_http, serve_stdio, tool_error
    from .tools import META_IDEMPOTENCY_KEY, McpTools

__all__ = [
    "AGENT_ID",
    "META_COMMAND_ID",
    "META_IDEMPOTENCY_KEY",
    "ActionTool",
    "AgentToolServer",
    "CatalogError",
    "McpTools",
    "action_tools",
    "command_id_for",
    "new_scope",
    "serve_http",
    "serve_stdio",
    "tool_error",
]

_WHERE = {
    "AGENT_ID": "catalog",
    "META_COMMAND_ID": "catalog",
    "ActionTool": "catalog",
    "CatalogError": "catalog",
    "action_tools": "catalog",
    "command_id_for": "catalog",
    "AgentToolServer": "server",
    "new_scope": "server",
    "serve_http": "server",
    "serve_stdio": "server",
    "tool_error": "server",
    "META_IDEMPOTENCY_KEY": "tools",
    "McpTools": "tools",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
