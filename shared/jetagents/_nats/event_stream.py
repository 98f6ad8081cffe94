"""The agents' event log as the host's ``EventStream`` port over JetStream
(``jetagents._host.ports``): appends with the fence through a PubAck inbox, reads by direct get."""

from __future__ import annotations

from collections.abc import Mapping

from nats.aio.client import Client as NATS

from .._core.errors import Unavailable
from .._core.wire import H_EXPECTED_LAST_SUBJECT_SEQ
from .._host.ports import Appended, WrongLastSequence
from .api import ERR_WRONG_LAST_SEQUENCE, DirectReader, JSApiError, js_publish
from .inbox import Inbox
from .log_reader import DirectLogReader


class JetStreamEventStream(DirectLogReader):
    """One event stream: ``append`` (expected last subject sequence) plus the direct-get reads."""

    def __init__(self, nc: NATS, inbox: Inbox, reader: DirectReader, stream: str, timeout_s: float) -> None:
        super().__init__(reader, stream, timeout_s)
        self._nc = nc
        self._inbox = inbox

    async def append(
        self, subject: str, body: bytes, headers: Mapping[str, str], *, expected_last_subject_seq: int
    ) -> Appended:
        hdrs = dict(headers)
        hdrs[H_EXPECTED_LAST_SUBJECT_SEQ] = str(expected_last_subject_seq)
        try:
            ack = await js_publish(self._nc, subject, body, hdrs, self._timeout_s, self._inbox)
        except JSApiError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                raise WrongLastSequence(exc.description) from None
            raise Unavailable(f"event append refused: {exc.description}") from None
        return Appended(int(ack["seq"]), bool(ack.get("duplicate")))
