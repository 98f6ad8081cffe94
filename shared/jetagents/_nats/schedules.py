"""The ``Schedules`` port (``_host/ports.py``) over the command stream's message schedules.

The server holds every durable timer and reminder (ADR 0042 sections 3 and 5, ADR-51); nats-py
has no API for them, so this adapter publishes with raw headers:

* **schedule** ``agt.rem.<type>.<id>.<name>`` with ``Nats-Schedule`` (``@at <RFC 3339>``,
  ``@every <n>s``, six-field cron; ``_core.schedules.pattern_of`` builds it),
  ``Nats-Schedule-Target: agt.cmd.<type>.<id>`` and the caller's headers; the body is the
  command the firing delivers. The server stores it with ``Nats-Rollup: sub``: publishing again
  on the subject replaces it. ``msg_id`` (``Nats-Msg-Id``) makes a re-run's publish a no-op.
* **cancel**: a ``Nats-Rollup: sub`` message with ``Nats-TTL: 1s`` on the schedule's own
  subject replaces the schedule (it never fires again) and expires a second later. Not
  ``STREAM.PURGE``: hosts may not purge ``AGT_CMD`` (ops/nats/accounts.conf), and a purge
  filter cannot be restricted by permissions to the schedule subjects.
* **list**: ``STREAM.INFO`` with ``subjects_filter``, then the last message of each subject;
  a tombstone of a cancel (no ``Nats-Schedule``) is not a schedule.

Example (a host part holding ``schedules: Schedules``)::

    await schedules.schedule_at("agt.rem.order.o1._w3f2a-1", until_ms, "agt.cmd.order.o1",
                                b'{"timer": {"for": "m1", "i": 3}}', msg_id="order.o1:m1#3")
    await schedules.cancel("agt.rem.order.o1._w3f2a-1")
    await schedules.schedule("agt.rem.order.o1.expire", pattern_of(every=60), "agt.cmd.order.o1",
                             b'{"action": "expire", "params": {}}', headers={"Agt-Reminder": "expire"})
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Final

from nats.aio.client import Client as NATS

from .._core.errors import InvalidParams, JetAgentsError, Unavailable
from .._core.schedules import (
    H_SCHEDULE,
    H_SCHEDULE_TARGET,
    H_SCHEDULE_TIME_ZONE,
    H_TTL,
    Pattern,
    user_headers,
)
from .._core.wire import H_MSG_ID
from .._host.ports import Appended, Schedule, Schedules
from .api import JSApiError, js_api, js_publish
from .kv import message_headers, msg_get

# err_code values of the server's scheduler (nats-server server/errors.json)
ERR_SCHEDULES_DISABLED: Final = 10188
ERR_SCHEDULE_PATTERN: Final = 10189
ERR_SCHEDULE_TARGET: Final = 10190
ERR_SCHEDULE_ZONE: Final = 10223
ERR_TTL_DISABLED: Final = 10166
_INPUT_ERRORS: Final = frozenset({ERR_SCHEDULE_PATTERN, ERR_SCHEDULE_TARGET, ERR_SCHEDULE_ZONE})
# the most schedules one list reads (one request per schedule)
LIST_MAX: Final = 1000


class NatsSchedules(Schedules):
    """Schedules in ``stream`` (the command stream) over one connection."""

    __slots__ = ("_stream", "_timeout_s", "nc")

    def __init__(self, nc: NATS, stream: str, timeout_s: float) -> None:
        self.nc = nc  # set after construction when the host connects
        self._stream = stream
        self._timeout_s = timeout_s

    async def schedule(
        self,
        subject: str,
        pattern: Pattern,
        target: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> Appended:
        hdrs = user_headers(dict(headers or {}))
        hdrs.update(pattern.headers())
        hdrs[H_SCHEDULE_TARGET] = target
        if msg_id:
            hdrs[H_MSG_ID] = msg_id
        return await self._publish(subject, body, hdrs)

    async def cancel(self, subject: str) -> None:
        await self._publish(subject, b"", {"Nats-Rollup": "sub", H_TTL: "1s"})

    async def get(self, subject: str) -> Schedule | None:
        message = await msg_get(self.nc, self._stream, {"last_by_subj": subject}, self._timeout_s)
        return None if message is None else _schedule_of(message)

    async def list(self, subject_filter: str) -> list[Schedule]:
        info = await js_api(
            self.nc, f"$JS.API.STREAM.INFO.{self._stream}", {"subjects_filter": subject_filter}, self._timeout_s
        )
        subjects = sorted((info.get("state") or {}).get("subjects") or {})[:LIST_MAX]
        out: list[Schedule] = []
        for subject in subjects:
            found = await self.get(subject)
            if found is not None:
                out.append(found)
        return out

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> Appended:
        try:
            ack = await js_publish(self.nc, subject, body, headers, self._timeout_s)
        except JSApiError as exc:
            if exc.err_code in _INPUT_ERRORS:
                raise InvalidParams(f"the server refused the schedule: {exc.description}") from None
            if exc.err_code in (ERR_SCHEDULES_DISABLED, ERR_TTL_DISABLED):
                raise Unavailable(
                    f"stream {self._stream} has no message schedules: start a host of this version "
                    "once with rights to update it (or run `jetagents init`)",
                    details={"err_code": exc.err_code},
                ) from None
            raise
        return Appended(int(ack["seq"]), bool(ack.get("duplicate")))


def _schedule_of(message: dict[str, Any]) -> Schedule | None:
    """A stored message as a ``Schedule``; None for anything that is not one."""
    headers = message_headers(message)
    pattern = headers.pop(H_SCHEDULE, None)
    target = headers.pop(H_SCHEDULE_TARGET, None)
    if not pattern or not target:
        return None
    tz = headers.pop(H_SCHEDULE_TIME_ZONE, None)
    kept = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
    try:
        body = base64.b64decode(message.get("data") or b"")
        return Schedule(str(message["subject"]), pattern, target, body, kept, int(message["seq"]), tz)
    except (KeyError, ValueError, JetAgentsError):
        return None
