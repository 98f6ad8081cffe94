"""Entry point of one agent-host process (``jetagents host`` / ``python -m agent_host``).

SIGTERM and SIGINT start a graceful drain bounded by ``drain_grace_s``; a second signal
stops at once (unacknowledged commands are redelivered to the next owner either way).
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from typing import Any

import structlog

from jetagents import Agent, Host, HostSettings, Registry
from jetagents._errors import Unavailable
from jetagents._logging import configure_logging

log = structlog.get_logger("jetagents.service")


def load_agents(paths: list[str]) -> Registry:
    """Import ``module:attr`` paths; each attr is an agent class or a list of them."""
    registry = Registry()
    for path in paths:
        module_name, _, attr = path.partition(":")
        module = importlib.import_module(module_name)
        obj: Any = getattr(module, attr) if attr else module.EXAMPLE_AGENTS
        classes = obj if isinstance(obj, list | tuple) else [obj]
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Agent)):
                raise TypeError(f"{path}: {cls!r} is not an Agent subclass")
            registry.register(cls)
    return registry


async def serve(settings: HostSettings, registry: Registry) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hard = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            hard.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    host = Host(settings, registry)
    delay = 0.2
    while True:  # NATS may come up after us (compose, restarts): keep trying
        try:
            await host.start()
            break
        except Unavailable as exc:
            log.warning("nats_unavailable", error=exc.message, retry_in_s=delay)
            if stop.is_set():
                return
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
                return
            except TimeoutError:
                delay = min(delay * 2, 5.0)
            host = Host(settings, registry)
    await stop.wait()
    drain = asyncio.create_task(host.stop(drain=True))
    hard_wait = asyncio.create_task(hard.wait())
    await asyncio.wait({drain, hard_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        drain.cancel()
        log.warning("drain_interrupted")
    hard_wait.cancel()


def run(settings: HostSettings) -> None:
    configure_logging(settings.log_format, settings.log_level)
    registry = load_agents(settings.agents)
    if settings.loop == "uvloop":
        import uvloop

        uvloop.run(serve(settings, registry))
    else:
        asyncio.run(serve(settings, registry))


def main(argv: list[str] | None = None) -> None:
    from jetagents.cli import app

    app(["host", *(argv if argv is not None else sys.argv[1:])])
