"""Replies as the client reads them: the result and its headers, or the typed error (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from .._core.encoding import decode
from .._core.errors import FencedError, InternalError, JetAgentsError, Unavailable, error_from_wire
from .._core.wire import H_ENCODING


class Message(Protocol):
    """A received message as far as a reply needs it (nats-py's ``Msg`` is one)."""

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> dict[str, str] | None: ...


class Reply:
    """A decoded reply: ``result`` plus the headers the host sent with it."""

    __slots__ = ("command_id", "headers", "result", "status", "waiting")

    def __init__(self, result: Any, headers: Mapping[str, str], body: Mapping[str, Any] | None = None) -> None:
        self.result = result
        self.headers = dict(headers)
        # no result yet (ADR 0042): "suspended" (its action waits), "queued" (parked behind
        # a suspended action), or a result query's "unknown", "running", "blocked"
        self.status: str | None = None
        self.waiting: Any = None
        self.command_id: str | None = headers.get("Agt-Command-Id")
        if body is not None and "status" in body:
            self.status = str(body["status"])
            self.waiting = body.get("waiting")
            self.command_id = str(body.get("command_id") or self.command_id or "")

    # read from the headers when asked: ``request`` drops them, and it is every call's path
    @property
    def duplicate(self) -> bool:
        return self.headers.get("Agt-Duplicate") == "true"

    @property
    def event_seq(self) -> int | None:
        seq = self.headers.get("Agt-Event-Seq")
        return int(seq) if seq and seq.isdigit() else None

    def to_json(self) -> dict[str, Any]:
        """The reply as a journaled step keeps it (ADR 0042 §12); :meth:`from_json` reads it."""
        out: dict[str, Any] = {"result": self.result, "headers": self.headers}
        if self.status is not None:
            out["body"] = {"status": self.status, "waiting": self.waiting, "command_id": self.command_id}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reply:
        return cls(data.get("result"), data.get("headers") or {}, data.get("body"))


# the most a compressed reply may decode to: a host's replies fit its max_payload_bytes (a
# larger result goes by reference), so this bounds only a hostile or broken frame
REPLY_DECODED_MAX_BYTES = 64 * 1024 * 1024


def no_responders(msg: Message) -> bool:
    """The server's answer when nobody subscribes to the subject."""
    return (msg.headers or {}).get("Status") == "503"


def decode_reply(msg: Message) -> Reply:
    """The reply's result, or raise the error it carries.

    >>> class M:
    ...     data, headers = b'{"ok":true,"result":3}', {"Agt-Event-Seq": "7"}
    >>> r = decode_reply(M()); (r.result, r.event_seq, r.duplicate)
    (3, 7, False)
    """
    hdrs = msg.headers or {}
    if hdrs.get("Status") == "503":  # no_responders(msg), on every reply's path
        raise Unavailable("no host is serving this subject", details={"applied": False})
    data = msg.data
    encoding = hdrs.get(H_ENCODING)
    if encoding is not None:  # a reply the host compressed because we accept it (ADR 0043)
        data = decode(data, encoding, limit_bytes=REPLY_DECODED_MAX_BYTES)
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InternalError(f"unreadable reply: {msg.data[:200]!r}") from None
    if not isinstance(body, dict) or "ok" not in body:
        raise InternalError(f"unexpected reply shape: {msg.data[:200]!r}")
    if body["ok"]:
        return Reply(body.get("result"), hdrs, body if "status" in body else None)
    raise error_from_wire(body.get("error"))


def not_applied(err: JetAgentsError) -> bool:
    """True when the error proves the command was not applied (safe to retry at-most-once)."""
    return isinstance(err, FencedError) or (isinstance(err.details, dict) and err.details.get("applied") is False)
