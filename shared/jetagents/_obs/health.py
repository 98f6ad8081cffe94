"""Health of one host process: ``/livez`` and ``/readyz`` over HTTP, and what the host's
NATS micro service (``_nats/micro.py``) answers for ``$SRV.STATS`` and ``status``.

The HTTP side is a few lines on ``asyncio.start_server``: two GET routes do not justify a
web framework as a runtime dependency of every host, and the stdlib server shares the
host's event loop (a wedged loop fails ``/livez``, which is the point of a liveness probe).

Readiness is read from the host, never tracked separately. A host that offers
``readiness() -> dict[str, bool]`` is asked for its checks; an older one only says
``ready`` (bool), and its connection state is read alongside. The monitor adds a cached
``$JS.API.INFO`` round trip when the host has not checked JetStream itself, and a
``serving`` check owned by the service: true once the host is started and registered for
discovery, false the moment a drain starts, so an orchestrator stops counting the host
before it lets go of its partitions.

>>> monitor = HealthMonitor("host-1")  # doctest: +SKIP
>>> server = await HealthServer(monitor, "0.0.0.0", 8080).start()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import orjson
import structlog

from .._nats.api import jetstream_answers
from .._nats.kv import NatsClient as NATS

log = structlog.get_logger("jetagents.health")

_MAX_REQUEST_BYTES = 8192
_REQUEST_TIMEOUT_S = 5.0
_JS_PROBE_TTL_S = 1.0
_JS_PROBE_TIMEOUT_S = 1.0


@runtime_checkable
class ReportsReadiness(Protocol):
    """A host that names its own readiness checks (connected, jetstream, ring, partitions)."""

    def readiness(self) -> dict[str, bool]: ...


def host_checks(host: object | None) -> dict[str, bool]:
    """The host's own view of its readiness, whichever interface it offers."""
    if host is None:
        return {"started": False}
    if isinstance(host, ReportsReadiness):
        return {str(k): bool(v) for k, v in host.readiness().items()}
    nc = getattr(host, "nc", None)
    return {
        "connected": bool(nc is not None and nc.is_connected),
        "started": bool(getattr(host, "ready", False)),
    }


class HealthMonitor:
    """What ``/readyz`` reports: the current host's checks plus ``jetstream`` and ``serving``.

    ``host`` is replaced while the service retries its first connection; ``serving`` is set
    by the service once everything is started and cleared when a stop signal arrives.
    Every change of the overall answer is logged, and kept in ``timeline`` as
    ``(monotonic seconds, ready, checks)``.
    """

    def __init__(self, host_id: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.host_id = host_id
        self.host: object | None = None
        self.serving = False
        self.timeline: list[tuple[float, bool, dict[str, bool]]] = []
        self._clock = clock
        self._js_ok = False
        self._js_checked_at = -1e18
        self._js_lock = asyncio.Lock()
        self._last: bool | None = None

    async def _jetstream(self, nc: NATS) -> bool:
        # cached: probes from kubelets, compose and humans must not become API load
        async with self._js_lock:
            if self._clock() - self._js_checked_at < _JS_PROBE_TTL_S:
                return self._js_ok
            ok = await jetstream_answers(nc, _JS_PROBE_TIMEOUT_S)
            self._js_ok, self._js_checked_at = ok, self._clock()
            return ok

    async def readiness(self) -> dict[str, bool]:
        host = self.host
        checks = host_checks(host)
        if "jetstream" not in checks:
            nc: NATS | None = getattr(host, "nc", None)
            if nc is not None and nc.is_connected and checks.get("connected", True):
                checks["jetstream"] = await self._jetstream(nc)
            else:
                checks["jetstream"] = False
        checks["serving"] = self.serving
        ready = all(checks.values())
        if ready != self._last:
            self._last = ready
            self.timeline.append((self._clock(), ready, dict(checks)))
            log.info("readiness_changed", host=self.host_id, ready=ready, checks=checks)
        return checks

    async def ready(self) -> bool:
        return all((await self.readiness()).values())

    def status(self) -> dict[str, Any]:
        """Host statistics for ``$SRV.STATS`` and the micro service's ``status`` endpoint."""
        host = self.host
        owned = list(getattr(host, "owned", []) or [])
        load = getattr(host, "load", None)  # the host's own account (what its heartbeat says)
        return {
            "host_id": self.host_id,
            "ready": self._last is True,
            "serving": self.serving,
            "partitions_owned": len(owned),
            "partitions": owned,
            "active_agents": len(getattr(host, "activations", {}) or {}),
            "inflight": int(load().get("inflight", 0)) if load is not None else 0,
            "stats": dict(getattr(host, "stats", {}) or {}),
            "loop": self.loop(),
        }

    def loop(self) -> dict[str, Any] | None:
        """The host's event-loop watchdog: blocks counted, blocked now, last and largest lag
        (docs/adr/0036). Informational: a loop blocked now cannot answer ``/readyz`` at all,
        and one that was blocked and is not any more is ready again."""
        dog = getattr(self.host, "watchdog", None)
        snapshot = getattr(dog, "snapshot", None)
        return dict(snapshot()) if callable(snapshot) else None


class HealthServer:
    """``GET /livez`` (200 while the event loop answers) and ``GET /readyz`` (200 or 503
    with the checks as JSON). ``port=0`` binds a free port; read it from ``port`` after
    ``start()``."""

    def __init__(self, monitor: HealthMonitor, bind: str, port: int) -> None:
        self.monitor = monitor
        self.bind = bind
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, self.bind, self.port, limit=_MAX_REQUEST_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("health_listening", host=self.monitor.host_id, bind=self.bind, port=self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers are not used
                status, body = await self._route(request_line)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (TimeoutError, ValueError, ConnectionError):
            pass  # slow, oversized or vanished client: just close
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, request_line: bytes) -> tuple[str, bytes]:
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", b'{"error":"bad request"}'
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return "405 Method Not Allowed", b'{"error":"method not allowed"}'
        if target == "/livez":
            return "200 OK", orjson.dumps({"live": True, "host_id": self.monitor.host_id})
        if target == "/readyz":
            checks = await self.monitor.readiness()
            ready = all(checks.values())
            body = orjson.dumps(
                {"ready": ready, "host_id": self.monitor.host_id, "checks": checks, "loop": self.monitor.loop()}
            )
            return ("200 OK" if ready else "503 Service Unavailable"), body
        return "404 Not Found", b'{"error":"not found"}'
