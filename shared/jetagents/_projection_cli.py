"""``jetagents projection``: run, inspect and rebuild projections (ADR 0057).

A projection runs where ``projection run MODULE:CLASS`` (or a program calling
``client.projections.runner(...).run()``) runs, with the ``projector`` user's rights; start
it in two processes and the second takes over when the first dies.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
import typer

from ._cli_support import NatsUrl, with_client

projection_app = typer.Typer(no_args_is_help=True, help="Projections: read models built from agents' events.")


def _with_client(nats_url: str | None, use: Callable[[Any], Awaitable[Any]]) -> Any:
    return with_client(nats_url, use, name="jetagents-projection")


@projection_app.command("rebuild")
def rebuild(name: Annotated[str, typer.Argument(help="the projection's name")], nats_url: NatsUrl = None) -> None:
    """Apply every event again from the start, into a new generation of rows (its runner
    notices within a second; the old generation is removed). Prints the new position."""

    async def use(client: Any) -> Any:
        return (await client.projections.rebuild(name)).model_dump()

    typer.echo(orjson.dumps({"ok": True, "result": _with_client(nats_url, use)}).decode())


@projection_app.command("status")
def status(name: Annotated[str, typer.Argument(help="the projection's name")], nats_url: NatsUrl = None) -> None:
    """Print the projection's stored position (null before its first run)."""

    async def use(client: Any) -> Any:
        pos = await client.projections.reader(name).position()
        return None if pos is None else pos.model_dump()

    typer.echo(orjson.dumps({"ok": True, "result": _with_client(nats_url, use)}).decode())


@projection_app.command("run")
def run(
    path: Annotated[str, typer.Argument(help="module:Class of a Projection subclass")],
    nats_url: NatsUrl = None,
    lease_ttl_s: Annotated[float, typer.Option(min=1, help="lease TTL: how soon another runner takes over")] = 10.0,
) -> None:
    """Run a projection until Ctrl-C or SIGTERM (one process at a time applies events)."""
    from ._core.projection import Projection

    module_name, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Projection)):
        typer.echo(f"error: {path} is not a Projection subclass", err=True)
        raise typer.Exit(2)

    async def use(client: Any) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        typer.echo(f"projection {cls.name} running; Ctrl-C to stop", err=True)
        await client.projections.runner(cls(), lease_ttl_s=lease_ttl_s).run(stop=stop)

    _with_client(nats_url, use)
