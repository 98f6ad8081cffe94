"""Deleted agents purged without an operator (ADR 0052): the cluster leader (or a host on its
own, or host 0 of a static set) runs the purge of ``jetagents purge`` (``Lifecycle.purge_due``,
the one mechanism) every ``purge_sweep_s``: each agent whose tombstone's grace period is over
loses its log, snapshots, metadata, dead letters, queued commands, schedules, output,
subscriptions, quarantine record and blobs; the tombstone stays and records when. Every
``retention_sweep_s`` the same loop applies retention (``Lifecycle.apply_retention``, the code
of the CLI) to the host's types that declare ``keep_snapshots``, so their logs stay bounded
without an operator's cron.

Hosts may not purge logs under the shipped accounts (``ops/nats/accounts.conf``), so the sweep
purges over ``purge_nats_url`` (the operator user's) when it is set, else over the host's own
connection (a deployment without accounts). A refused or failed run is logged and done again
at the next interval: a purge is idempotent, and a tombstone is marked purged only at its end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from .._client.inspection import Inspector
from .._client.lifecycle import Lifecycle
from .._core.wire import Subjects
from .._nats.api import connect

if TYPE_CHECKING:
    from .host import Host

GROUP = "background"


@dataclass(frozen=True, slots=True)
class _Connection:
    """What ``Inspector`` needs of a client: a connection and the deployment's subjects."""

    nc: Any
    subjects: Subjects


def start_purge_sweep(host: Host) -> PurgeSweep | None:
    """The sweep, spawned on ``host``'s supervisor; None when it has nothing to do (no
    purge, ``purge_sweep_s`` 0, and no retention: ``retention_sweep_s`` 0 or no type of the
    host declares ``keep_snapshots``)."""
    s = host.settings
    retains = s.retention_sweep_s > 0 and any(
        getattr(spec.cls, "keep_snapshots", None)
        for spec in (host.registry.get(t) for t in host.registry.types())
        if spec is not None
    )
    if s.purge_sweep_s <= 0 and not retains:
        return None

    def leads() -> bool:
        if host.supervisor.stopping:
            return False
        coord = host.coordinator
        if coord is not None:
            return bool(coord.is_leader)
        return host.static and s.host_index == 0  # ring hosts wait for their coordinator

    sweep = PurgeSweep(host, leads, retention_s=s.retention_sweep_s if retains else 0.0)
    host.supervisor.spawn(GROUP, sweep.run())
    return sweep


class PurgeSweep:
    """One loop: sleep, and when this host leads, purge what is due and, every
    ``retention_s`` (0: never), apply retention."""

    def __init__(self, host: Host, leads: Callable[[], bool], *, retention_s: float = 0.0) -> None:
        self._host = host
        self._leads = leads
        self._retention_s = retention_s
        self._log = structlog.get_logger("jetagents.purge").bind(host=host.settings.host_id)
        self._own: Any = None  # the purge_nats_url connection, opened on first need
        # tombstones not purged yet, and where the next read of the bucket starts: a run
        # reads only the tombstones written since the last (the purged ones stay forever)
        self._pending: dict[str, dict[str, Any]] = {}
        self._next_seq = 1
        self.runs = 0  # completed runs (tests wait on them)
        self.retention_runs = 0
        self.failures = 0

    async def run(self) -> None:
        s, clock = self._host.settings, self._host.clock
        purge_s, retention_s = s.purge_sweep_s, self._retention_s
        tick_s = min(x for x in (purge_s, retention_s) if x > 0)
        next_purge = next_retention = clock.monotonic()
        try:
            while True:
                await clock.sleep(tick_s)
                if not self._leads():
                    continue
                now = clock.monotonic()
                if purge_s > 0 and now >= next_purge:
                    next_purge = now + purge_s
                    await self.once()
                if retention_s > 0 and now >= next_retention:
                    next_retention = now + retention_s
                    await self.retain()
        finally:
            if self._own is not None:
                await self._own.close()

    async def _lifecycle(self) -> Lifecycle:
        """``Lifecycle`` over ``purge_nats_url`` (opened on first need) or the host's own
        connection, knowing the host's types (their ``keep_snapshots``)."""
        host, s = self._host, self._host.settings
        nc = host.nc
        if s.purge_nats_url:
            if self._own is None:
                self._own = await connect(
                    s.purge_nats_url,
                    name=f"jetagents-purge-{s.host_id}",
                    connect_timeout_s=s.connect_timeout_s,
                    inbox_prefix=s.purge_inbox_prefix,
                )
            nc = self._own
        return Lifecycle(Inspector(_Connection(nc, host.subjects), agents=host.registry, timeout_s=s.op_timeout_s))

    async def retain(self) -> list[dict[str, Any]]:
        """Apply retention once; what it reported (nothing when the run failed)."""
        host = self._host
        try:
            report = await (await self._lifecycle()).apply_retention()
        except Exception as exc:  # noqa: BLE001 - refused, timed out, server gone: the next run tries again
            self._failed("retention_sweep_failed", exc)
            return []
        self.retention_runs += 1
        for entry in report:
            if "kept_from_seq" in entry:
                host.metrics.inc("logs_retained")
            elif "type" in entry:  # keep_snapshots the bucket cannot meet: the operator's to fix
                self._log.warning("retention_unmet", agent_type=entry["type"], reason=entry["skipped"])
        return report

    async def once(self) -> list[dict[str, Any]]:
        """Purge every agent due now; what was purged (nothing when the run failed)."""
        host = self._host
        try:
            life = await self._lifecycle()
            new, self._next_seq = await life.tombstones_since(self._next_seq)
            for key, tomb in new.items():  # a purge's own mark comes back here and is dropped
                if tomb.get("purged_ms"):
                    self._pending.pop(key, None)
                else:
                    self._pending[key] = tomb
            done = await life.purge_due(tombs=dict(self._pending)) if self._pending else []
        except Exception as exc:  # noqa: BLE001 - refused, timed out, server gone: the next run tries again
            self._failed("purge_sweep_failed", exc)
            return []
        self.runs += 1
        for tomb in done:
            self._log.info("agent_purged", agent=tomb.get("agent"), by=tomb.get("by"), reason=tomb.get("reason"))
            host.metrics.inc("agents_purged")
        return done

    def _failed(self, what: str, exc: Exception) -> None:
        """A run that failed: counted, logged and measured under ``what``."""
        self.failures += 1
        self._log.warning(what, error=repr(exc))
        self._host.metrics.inc(what)
