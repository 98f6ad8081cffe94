"""The host as a NATS micro service, so ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS``
find every host, with a ``status`` endpoint per host."""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.service import EndpointStats

SERVICE_NAME = "jetagents-host"


class ReportsStatus(Protocol):
    """What the service answers with (``_obs.health.HealthMonitor``)."""

    @property
    def host_id(self) -> str: ...

    def status(self) -> dict[str, Any]: ...


async def register_service(nc: NATS, monitor: ReportsStatus, *, subject_root: str, version: str) -> Any:
    """Register this host as the micro service ``jetagents-host`` (one instance per host).

    Discovery: ``$SRV.PING.jetagents-host`` (and ``INFO``, ``STATS``); the ``status``
    endpoint answers on ``<root>.sys.status.<host id>`` with ``monitor.status()``.
    """

    def stats_data(_: EndpointStats) -> dict[str, Any]:
        return monitor.status()

    async def status(req: Any) -> None:
        await req.respond(orjson.dumps(monitor.status()))

    service = await add_service(
        nc,
        name=SERVICE_NAME,
        version=version,
        description="jetagents agent host",
        metadata={"host_id": monitor.host_id, "subject_root": subject_root},
        stats_handler=stats_data,
    )
    await service.add_endpoint(name="status", subject=f"{subject_root}.sys.status.{monitor.host_id}", handler=status)
    return service
