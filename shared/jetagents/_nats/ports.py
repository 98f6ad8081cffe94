"""The host's ``Publisher`` port over a nats-py connection (``jetagents._host.ports``)."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any

from nats.aio.client import Client as NATS

from .._host.ports import Appended, Refused
from .api import JSApiError, js_publish


class NatsPublisher:
    """Core publishes (replies, acknowledgements) and stream publishes with a PubAck.
    ``nc`` may be set after construction (a host builds its parts before it connects)."""

    __slots__ = ("_timeout_s", "nc")

    def __init__(self, nc: NATS, timeout_s: float) -> None:
        self.nc = nc
        self._timeout_s = timeout_s

    def publish(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> Coroutine[Any, Any, None]:
        # nats-py's own coroutine, not one of ours around it: every reply and acknowledgement
        # comes here. nats-py only reads the headers: no copy on the hot path
        return self.nc.publish(subject, body, headers=headers or None)  # type: ignore[arg-type]

    async def persist(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> Appended:
        try:
            ack = await js_publish(self.nc, subject, body, dict(headers or {}), self._timeout_s)
        except JSApiError as exc:
            raise Refused(str(exc)) from None
        return Appended(int(ack["seq"]), bool(ack.get("duplicate")))
