"""The ``jetagents mcp`` command (registered by ``jetagents.cli``; the SDK loads when it runs)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated, Literal

import typer

from .._core.agent import AgentSpec
from .._core.errors import JetAgentsError

Transport = Literal["stdio", "http"]


def mcp(
    types: Annotated[str, typer.Option("--types", help="agent types to serve, comma separated, e.g. counter,account")],
    agents: Annotated[
        list[str] | None,
        typer.Option(
            help="module:attr of the agent classes (as for `jetagents host`); default: JETAGENTS_AGENTS, "
            "else the examples"
        ),
    ] = None,
    nats_url: Annotated[
        str | None, typer.Option("--nats-url", "--nats", help="NATS URL [env JETAGENTS_NATS_URL]")
    ] = None,
    transport: Annotated[str, typer.Option(help="stdio (one client, e.g. Claude Desktop) or http")] = "stdio",
    host: Annotated[str, typer.Option(help="http: address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="http: port (0: any free one, printed)")] = 0,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds a tool call waits for the agent")] = 30.0,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="JETAGENTS_MCP_TOKEN",
            help="http: the bearer token every request must carry (at least 16 characters); "
            "required when --host is not a loopback address. Prefer the environment variable "
            "(a command line is visible to other users)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the actions of the chosen agent types as MCP tools (stdio or streamable HTTP).

    Tool `<type>_<action>` takes the agent's id as `agent_id` plus the action's parameters.
    Nothing but the named types is reachable. Logs go to stderr (stdout is the protocol)."""
    from .._obs.logging import configure_logging

    configure_logging("json", os.environ.get("JETAGENTS_LOG_LEVEL", "WARNING"))
    if transport not in ("stdio", "http"):
        typer.echo(f"error: --transport is stdio or http, not {transport!r}", err=True)
        raise typer.Exit(2)
    if transport == "http" and token is None and not _loopback(host):
        typer.echo(f"error: serving MCP on {host} needs a bearer token (JETAGENTS_MCP_TOKEN)", err=True)
        raise typer.Exit(2)
    if token is not None and len(token) < 16:
        typer.echo("error: the MCP bearer token must have at least 16 characters", err=True)
        raise typer.Exit(2)
    try:
        specs = _specs(types, agents)
    except (ValueError, ImportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        asyncio.run(_serve(specs, nats_url, transport, host, port, timeout, token))  # type: ignore[arg-type]
    except JetAgentsError as err:  # NATS unreachable at start: say so, no traceback
        typer.echo(f"error: {err.code}: {err.message}", err=True)
        raise typer.Exit(1) from None


def _specs(types: str, agents: list[str] | None) -> list[AgentSpec]:
    from .._service import EXAMPLES, load_agents

    paths = agents or json.loads(os.environ.get("JETAGENTS_AGENTS") or "null") or [EXAMPLES]
    registry = load_agents(paths)
    names = [t.strip() for t in types.split(",") if t.strip()]
    if not names:
        raise ValueError("--types names no agent type")
    specs: list[AgentSpec] = []
    for name in names:
        spec = registry.get(name)
        if spec is None:
            raise ValueError(f"agent type {name!r} is not among the loaded classes ({', '.join(registry.types())})")
        specs.append(spec)
    from .catalog import action_tools

    action_tools(specs)  # a clash of tool names is refused before anything connects
    return specs


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve(
    specs: list[AgentSpec],
    nats_url: str | None,
    transport: Transport,
    host: str,
    port: int,
    timeout_s: float,
    token: str | None = None,
) -> None:
    from .._client.client import Client
    from .._settings import ClientSettings
    from .server import AgentToolServer, new_scope, serve_http, serve_stdio

    settings = ClientSettings.model_validate({"nats_url": nats_url} if nats_url else {})
    client = await Client.connect(settings=settings, name="jetagents-mcp")
    try:
        server = AgentToolServer(client, specs, scope=new_scope(), per_session=transport == "http", timeout_s=timeout_s)
        if transport == "http":
            await serve_http(server, host, port, token)
        else:
            await serve_stdio(server)
    finally:
        await client.close()
