"""What the ``jetagents`` command modules share (``cli.py``, ``_admin_cli.py``,
``_projection_cli.py``): the options every command that talks to NATS takes, and one client
connection per command, whose typed errors print ``error: <code>: <message>`` and exit 1
(bad input exits 2 before anything is sent)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer

from ._core.errors import JetAgentsError
from ._core.ids import AgentId
from ._settings import ClientSettings

if TYPE_CHECKING:
    from ._client.client import Client

T = TypeVar("T")

NatsUrl = Annotated[str | None, typer.Option(help="NATS URL [env JETAGENTS_NATS_URL]")]
AgentArg = Annotated[str, typer.Argument(help="TYPE/ID, e.g. order/o1")]
ReplyTimeout = Annotated[float, typer.Option(help="seconds to wait for the reply")]


def client_settings(nats_url: str | None) -> ClientSettings:
    """The client's settings from the environment, ``--nats-url`` first."""
    return ClientSettings.model_validate({"nats_url": nats_url} if nats_url else {})


def parse_agent(agent: str) -> AgentId:
    """``TYPE/ID``, else the reason on stderr and exit code 2."""
    try:
        return AgentId.parse(agent)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def with_client(
    nats_url: str | None,
    use: Callable[[Client], Awaitable[T]],
    *,
    name: str = "jetagents-cli",
    error_json: bool = False,
) -> T:
    """Connect, ``await use(client)``, close. A typed error is printed to stderr (and with
    ``error_json`` as ``{"ok": false, "error": ...}`` to stdout too) and exits 1."""

    async def go() -> T:
        from ._client.client import Client

        async with await Client.connect(settings=client_settings(nats_url), name=name) as client:
            return await use(client)

    try:
        return asyncio.run(go())
    except JetAgentsError as err:
        if error_json:
            typer.echo(orjson.dumps({"ok": False, "error": err.to_wire()}).decode())
        typer.echo(f"error: {err.code}: {err.message}", err=True)
        raise typer.Exit(1) from None
