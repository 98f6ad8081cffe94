"""Quarantine (ADR 0053): an agent that keeps failing activation stops being retried.

An activation fails for good when the agent's log or snapshot cannot be read or applied (a
corrupt commit, an applier that raises): retrying the same bytes with the same code gets the
same answer, and every command of the agent would be retried ``max_deliver`` times first.
After ``quarantine_after`` such failures in a row the host writes a record into the
quarantine bucket (``<root>_quarantine``, key ``TYPE.ID``); from then on every host refuses
the agent's commands with ``agent_quarantined`` (dead-lettered once, non-retryable) until an
operator deletes the record (``jetagents agent release``). The record is in KV, not in
memory, so the quarantine survives restarts and partition moves; the failure count is in
memory (a restarted host counts again, which costs ``quarantine_after`` attempts).

Quarantining publishes one operator event, ``agt.sys.agent.quarantined`` (wire contract 9.1),
through the host's lifecycle-event publisher, after the record is written: the host that
wins the write is the one that tells (a failed write tells nobody, and is tried again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .._core.clock import Clock
from .._core.errors import AgentQuarantined, JetAgentsError, Unavailable
from .._core.ids import AgentId
from .._obs.metrics import Metrics
from .._settings import HostSettings
from .ports import Bucket

_MAX_COUNTED = 10_000  # agents whose failures are counted at once (oldest forgotten first)


class Quarantine:
    """The quarantine check before an activation and the count of failed activations."""

    def __init__(
        self,
        bucket: Bucket,
        event: Callable[[str, dict[str, Any]], Awaitable[None]] | None,
        settings: HostSettings,
        *,
        clock: Clock,
        metrics: Metrics,
        log: Any,
    ) -> None:
        self._bucket = bucket
        self._event = event  # Host.event: agt.sys.<kind>, best effort
        self._after = settings.quarantine_after
        self._host_id = settings.host_id
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self._failures: OrderedDict[str, int] = OrderedDict()

    async def check(self, aid: AgentId) -> None:
        """Raise ``AgentQuarantined`` when the agent has a quarantine record."""
        try:
            raw = await self._bucket.get(aid.key)
        except Exception as exc:  # noqa: BLE001 - nats-py raises several types here
            raise Unavailable(f"cannot read the quarantine record of {aid}: {exc!r}") from None
        if raw is None:
            return
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            record = {}
        reason = str(record.get("reason", "")) if isinstance(record, dict) else ""
        raise AgentQuarantined(f"{aid} is quarantined: {reason}", details=record if isinstance(record, dict) else None)

    def succeeded(self, aid: AgentId) -> None:
        self._failures.pop(aid.key, None)

    async def failed(self, aid: AgentId, err: JetAgentsError) -> None:
        """Count a failed activation; the ``quarantine_after``-th in a row quarantines the
        agent (raises ``AgentQuarantined``, which the pipeline dead-letters)."""
        if self._after <= 0:
            return
        key = aid.key
        count = self._failures.pop(key, 0) + 1
        self._failures[key] = count
        if len(self._failures) > _MAX_COUNTED:
            self._failures.popitem(last=False)
        if count < self._after:
            return
        record = {
            "agent": str(aid),
            "reason": err.message[:1000],
            "code": err.code,
            "failures": count,
            "host": self._host_id,
            "ts_ms": self._clock.wall_ms(),
        }
        try:
            await self._bucket.put(key, orjson.dumps(record))
        except Exception as exc:  # noqa: BLE001 - not recorded: the next failure tries again
            self._log.warning("quarantine_failed", agent=str(aid), error=str(exc))
            return
        self._failures.pop(key, None)
        self._metrics.inc("quarantines", agent_type=aid.type)
        self._log.error("agent_quarantined", agent=str(aid), failures=count, reason=record["reason"])
        if self._event is not None:
            await self._event(
                "agent.quarantined", {k: record[k] for k in ("agent", "reason", "code", "failures", "ts_ms")}
            )
        raise AgentQuarantined(f"{aid} is quarantined: {record['reason']}", details=record)
