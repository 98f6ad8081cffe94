"""The agent-host service: agent loading, signals, health, graceful drain (``jetagents host``,
``python -m agent_host``, the container's entry point).

SIGTERM and SIGINT start a graceful drain bounded by ``drain_grace_s``; a second signal
stops at once (unacknowledged commands are redelivered to the next owner either way).
With ``health_port`` set, ``/livez`` and ``/readyz`` are served over HTTP; every host
registers as the NATS micro service ``jetagents-host``.

This lives in the library so that the service (``services/agent_host``) is a thin entry
point importing it, never the other way round (ADR 0040). A host serves only the agent
types it is told to (``JETAGENTS_AGENTS`` / ``--agents``): nothing by default, and the
examples only when named (``jetagents.examples:EXAMPLE_AGENTS``); with none it refuses
to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import signal
from collections.abc import Coroutine
from typing import Any

import structlog

from ._core.agent import Agent, Registry
from ._core.errors import Unavailable
from ._core.retry import RetryPolicy
from ._host.host import Host
from ._nats.micro import register_service
from ._obs.health import HealthMonitor, HealthServer
from ._obs.logging import configure_logging
from ._obs.telemetry import setup_from_env
from ._settings import HostSettings
from ._version import __version__

log = structlog.get_logger("jetagents.service")

EXAMPLES = "jetagents.examples:EXAMPLE_AGENTS"
"""The ``agents`` entry that serves the example agents (``jetagents up`` and the shipped
compose file and manifests set it; a host never serves them unasked)."""
# NATS unreachable at start (compose, restarts): try again until stopped, 0.2 s doubling to
# 5 s; no jitter, as one process has nobody to spread out from
START_RETRY = RetryPolicy(base_s=0.2, max_s=5.0, jitter=False)


class NoAgentsConfigured(ValueError):
    """A host was started with no agent types: it would pull commands it can only refuse."""


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


async def serve(
    settings: HostSettings,
    registry: Registry,
    *,
    stop: asyncio.Event | None = None,
    monitor: HealthMonitor | None = None,
    install_signals: bool = True,
    freeze_gc: bool = False,
) -> None:
    """Run one host until ``stop`` is set (SIGTERM/SIGINT set it), then drain.

    The health server starts first, so ``/livez`` answers while NATS is still unreachable
    and ``/readyz`` says why the host is not ready; the drain marks the host not ready
    before it lets go of anything. ``freeze_gc`` (the host process does it: ``run``) takes what
    starting allocated out of the garbage collector's reach once the host is up.
    """
    loop = asyncio.get_running_loop()
    log.info("event_loop", host=settings.host_id, loop=loop_kind())
    stop = stop if stop is not None else asyncio.Event()
    monitor = monitor if monitor is not None else HealthMonitor(settings.host_id)
    hard = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            hard.set()
        stop.set()

    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)

    health: HealthServer | None = None
    if settings.health_port is not None:
        health = await HealthServer(monitor, settings.health_bind, settings.health_port).start()
    try:
        host = await _start_host(settings, registry, stop, monitor)
        if host is None:
            return
        service: Any = None
        try:
            service = await register_service(host.nc, monitor, subject_root=settings.subject_root, version=__version__)
        except Exception as exc:  # noqa: BLE001 - discovery is an aid, not a reason to refuse work
            log.warning("service_registration_failed", error=str(exc))
        if freeze_gc:
            # What starting made (modules, classes, the registry, settings) lives as long as the
            # process; frozen, a full collection walks only what commands make: at 256 durable
            # commands in flight it had taken ~15 % of the host's CPU (ADR 0031, session 7)
            gc.collect()
            gc.freeze()
            log.info("gc_frozen", host=settings.host_id, objects=gc.get_freeze_count())
        monitor.serving = True
        await monitor.readiness()  # log the transition to ready
        await stop.wait()
        monitor.serving = False
        log.info("drain_started", host=settings.host_id, grace_s=settings.drain_grace_s)
        await monitor.readiness()  # log the transition to not ready
        if service is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await service.stop()
        # The host bounds its wait for commands in hand by drain_grace_s; the final
        # snapshots and the leave take up to about one more round trip. Past that the
        # stop is forced: whatever is unacknowledged is redelivered to the next owner.
        bound_s = settings.drain_grace_s + settings.op_timeout_s + 2.0
        drain = asyncio.create_task(host.stop(drain=True))
        hard_wait = asyncio.create_task(hard.wait())
        await asyncio.wait({drain, hard_wait}, timeout=bound_s, return_when=asyncio.FIRST_COMPLETED)
        hard_wait.cancel()
        if drain.done():
            log.info("drain_finished", host=settings.host_id)
        else:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
            reason = "second signal" if hard.is_set() else f"over {bound_s:.0f}s"
            log.warning("drain_interrupted", host=settings.host_id, reason=reason)
    finally:
        if health is not None:
            await health.stop()


async def _start_host(
    settings: HostSettings, registry: Registry, stop: asyncio.Event, monitor: HealthMonitor
) -> Host | None:
    """Start a host, retrying while NATS is unreachable (compose, restarts); None if stopped first."""
    retry = 0
    while True:
        delay = START_RETRY.delay(retry)
        host = Host(settings, registry)
        monitor.host = host
        try:
            await host.start()
            return host
        except Unavailable as exc:
            log.warning("nats_unavailable", error=exc.message, retry_in_s=delay)
            with contextlib.suppress(Exception):
                await host.stop(drain=False)  # a half-started host may hold a reconnecting connection
        if stop.is_set():
            return None
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
            return None
        except TimeoutError:
            retry += 1


def check_agents(registry: Registry) -> list[str]:
    """The agent types ``registry`` serves; :class:`NoAgentsConfigured` when there are none."""
    types = sorted(registry.types())
    if not types:
        raise NoAgentsConfigured(
            "no agent types configured: set JETAGENTS_AGENTS (or --agents) to 'module:attr' paths of "
            f"agent classes; {EXAMPLES!r} serves the examples"
        )
    return types


def run_on_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run ``main`` on a new event loop of the kind asked for (ADR 0041): uvloop, unless it
    is not installed (it has no Windows build), then asyncio's own.

    Only the host process chooses its loop; a program using the client keeps its own
    (``uvloop.run(main())`` opts it in).
    """
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop_not_installed", fallback="asyncio")
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def loop_kind() -> str:
    """``uvloop`` or ``asyncio``: the kind of the running event loop."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def run(settings: HostSettings) -> None:
    """Run one host process until SIGTERM/SIGINT; :class:`NoAgentsConfigured` before anything
    starts when ``settings.agents`` names no agent type."""
    configure_logging(settings.log_format, settings.log_level)
    registry = load_agents(settings.agents)
    try:
        types = check_agents(registry)
    except NoAgentsConfigured as exc:
        log.error("no_agents_configured", host=settings.host_id, error=str(exc))
        raise
    log.info("agents_loaded", host=settings.host_id, types=types)
    # OpenTelemetry SDK + OTLP exporters when the OTEL_* variables ask for export
    otel = setup_from_env("jetagents-host", instance_id=settings.host_id)
    if otel is not None:
        otel.install()
        log.info("telemetry_export", traces=otel.tracer_provider is not None, metrics=otel.meter_provider is not None)
    try:
        run_on_loop(serve(settings, registry, freeze_gc=True), settings.loop)
    finally:
        # flush what is buffered; bounded, so an unreachable collector cannot hold up the exit
        if otel is not None and not otel.shutdown(timeout_s=5.0):
            log.warning("telemetry_flush_incomplete", timeout_s=5.0)
