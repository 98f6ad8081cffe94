"""nats-py's client with cheaper message headers: the same bytes out, the same dicts in.

Every command carries a few headers (command id, deadline, trace context), and nats-py
spends more time on them than on the rest of a small message: it checks each header name
with a regular expression when sending and tests every character of every name with a
generator when receiving. ``Connection`` keeps nats-py's rules and output exactly (a
property test compares both implementations on generated headers) and does the same work
with a cache of checked names and string methods.

Only two methods are replaced; both are small and pinned to the nats-py versions this
package accepts (see pyproject.toml). If nats-py changes them, ``Connection`` falls back to
nats-py's own code rather than guessing (``FAST_HEADERS`` is then False).

``Connection`` also survives any bytes a publisher puts on the wire. The server relays
subjects, reply subjects and headers without checking their encoding (a token may hold
``\xff``, ``\x00``, ``\x0c``...), and nats-py decodes them strictly in its read loop: one
such message ended the loop without closing the connection, and the client heard nothing
more until its pings timed out (~35 s), again after every reconnect for a stored command.
``GuardedParser`` splits control lines as the server does (on space and tab only), decodes
subjects, reply subjects and status lines with U+FFFD for what is not UTF-8, and drops a
message whose processing still raises instead of ending the read loop.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from nats.aio import client as _nc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadHeaderError, BadSubjectError, ProtocolError
from nats.js.api import Header
from nats.protocol import command as _cmd
from nats.protocol import parser as _ps

_log = logging.getLogger("jetagents.nats")

_CRLF = b"\r\n"
_HDR_START = b"NATS/1.0\r\n"
_WS = re.compile(r"\s")
_KEY_OK = _nc._HEADER_KEY_RE  # the rule nats-py applies to header names
_NEWLINES = _nc._HEADER_VALUE_NEWLINES

# the parameters of the two methods as these overrides were written for them
_EXPECTED = {
    "_send_publish": ["self", "subject", "reply", "payload", "payload_size", "headers"],
    "_parse_header_lines": ["raw"],
}


def _parameters(name: str) -> list[str]:
    try:
        return list(inspect.signature(getattr(_nc.Client, name)).parameters)
    except (AttributeError, TypeError, ValueError):
        return []


FAST_HEADERS = all(_parameters(name) == params for name, params in _EXPECTED.items())

_key_cache: dict[str, bytes] = {}


def encode_headers(headers: dict[str, Any]) -> bytes:
    """The header block nats-py would write for ``headers`` (raises as nats-py does)."""
    out = [_HDR_START]
    for k, v in headers.items():
        line = _key_cache.get(k)
        if line is None:
            key = k.strip()
            if not key:
                continue
            if not _KEY_OK.fullmatch(key):
                raise BadHeaderError(key)
            line = key.encode() + b": "
            if len(_key_cache) < 1024:
                _key_cache[k] = line
        out.append(line)
        value = v.strip()
        if "\r" in value or "\n" in value:
            value = value.translate(_NEWLINES)
        out.append(value.encode())
        out.append(_CRLF)
    out.append(_CRLF)
    return b"".join(out)


# raw header name -> its key (None: a name nats-py drops); names are the sender's, so bounded
_name_cache: dict[bytes, str | None] = {}


def _header_name(name: bytes) -> str | None:
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if _WS.search(key) else key


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines to a dict, by nats-py's rules (see its ``_parse_header_lines``).
    A name's verdict is remembered: the same few names come on every message."""
    out: dict[str, str] = {}
    names = _name_cache
    for line in raw.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = names.get(name)
        if key is None:
            if name in names:  # a name nats-py drops
                continue
            key = _header_name(name)
            if len(names) < 1024:
                names[name] = key
            if key is None:
                continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def text(raw: bytes) -> str:
    """``raw`` as text: UTF-8, with U+FFFD for bytes that are not (never raises)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


# The server ends a control line at its LF and splits its arguments on space and tab only,
# so a subject may hold any other byte, a lone CR included; nats-py's ``\s`` also splits
# on \x0b and \x0c (then finds no match and drops the connection as an "unknown
# protocol"). Written as an unrolled loop: the common case (no CR) is one character class.
_ARG = rb"([^ \t\r\n]+(?:\r(?!\n)[^ \t\r\n]*)*|(?:\r(?!\n)[^ \t\r\n]*)+)"
_SP = rb"[ \t]+"
_MSG_RE = re.compile(rb"\AMSG" + _SP + _ARG + _SP + _ARG + _SP + rb"(?:" + _ARG + _SP + rb")?(\d+)[ \t]*\r\n")
_HMSG_RE = re.compile(
    rb"\AHMSG" + _SP + _ARG + _SP + _ARG + _SP + rb"(?:" + _ARG + _SP + rb")?(\d+)" + _SP + rb"(\d+)[ \t]*\r\n"
)
_ERR_RE = re.compile(rb"\A-ERR[ \t]*([^\r\n]*)\r\n")
_DENIED_RE = re.compile(r'permissions violation for publish to "([^"]*)"', re.IGNORECASE)


class GuardedParser(_ps.Parser):
    """nats-py's protocol parser, made safe for any bytes a publisher may send (see above)."""

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        nc = self.nc
        while self.buf:
            if self.state == _ps.AWAITING_CONTROL_LINE:
                m = _MSG_RE.match(self.buf)
                h = None if m else _HMSG_RE.match(self.buf)
                if m or h:
                    if m:
                        subject, sid, reply, needed = m.groups()
                        self.header_needed = 0
                    else:
                        assert h is not None
                        subject, sid, reply, header_size, needed = h.groups()
                        self.header_needed = int(header_size)
                        m = h
                    self.msg_arg["subject"] = bytes(subject)
                    self.msg_arg["sid"] = int(sid)
                    self.msg_arg["reply"] = bytes(reply) if reply else b""
                    self.needed = int(needed)
                    if self.header_needed > self.needed:
                        raise ProtocolError("nats: malformed HMSG")
                    del self.buf[: m.end()]
                    self.state = _ps.AWAITING_MSG_PAYLOAD
                    continue
                if self.buf.startswith(_ps.OK):
                    del self.buf[: len(_ps.OK)]
                    continue
                err = _ERR_RE.match(self.buf)
                if err:
                    # read before the delete: a match on a bytearray reads the buffer as it
                    # is now (read after, a permissions violation came out empty, an unknown
                    # error that closed the connection)
                    reason = text(err.group(1))
                    del self.buf[: err.end()]
                    await nc._process_err(reason)
                    continue
                ping = _ps.PING_RE.match(self.buf)
                if ping:
                    del self.buf[: ping.end()]
                    await nc._process_ping()
                    continue
                pong = _ps.PONG_RE.match(self.buf)
                if pong:
                    del self.buf[: pong.end()]
                    await nc._process_pong()
                    continue
                info = _ps.INFO_RE.match(self.buf)
                if info:
                    srv_info = json.loads(text(info.group(1)))
                    del self.buf[: info.end()]
                    await nc._process_info(srv_info)
                    continue
                if _ps._CRLF_ in self.buf or len(self.buf) > _ps.MAX_CONTROL_LINE_SIZE:
                    # A whole line that is no known operation, or more than a control line
                    # without its end: waiting for more bytes would stall the read loop for
                    # good (nats-py waits whenever the buffer is long, messages queued behind
                    # included). Drop the connection; the client reconnects.
                    raise ProtocolError("nats: unknown protocol")
                break  # a control line split across reads: wait for the rest
            if len(self.buf) < self.needed + _ps.CRLF_SIZE:
                break  # wait for the whole payload
            hn = self.header_needed
            hdr = bytes(self.buf[:hn]) if hn > 0 else None
            payload = bytes(self.buf[hn : self.needed])
            del self.buf[: self.needed + _ps.CRLF_SIZE]
            self.header_needed = 0
            self.state = _ps.AWAITING_CONTROL_LINE
            args = self.msg_arg
            try:
                await nc._process_msg(args["sid"], args["subject"], args["reply"], payload, hdr)
            except Exception as exc:  # noqa: BLE001 - drop this message, keep reading the others
                _log.warning("nats: dropped a message that could not be processed: %r", exc)
                with contextlib.suppress(Exception):
                    await nc._error_cb(exc)


def _status_headers(raw: bytes) -> dict[str, str]:
    """The headers of a block that starts with a status line, by nats-py's rules, decoding
    whatever is not UTF-8 with U+FFFD (nats-py raises on it)."""
    line, _, rest = raw[len(_nc.NATS_HDR_LINE) + 1 :].partition(_CRLF)
    status, _, desc = line.partition(b" ")
    hdr: dict[str, str] = {}
    code = text(status.strip())
    if code.isdigit():
        hdr[Header.STATUS.value] = code
    if desc.strip():
        hdr[Header.DESCRIPTION] = text(desc.strip())
    hdr.update(parse_header_lines(rest))
    return hdr


class Connection(_nc.Client):
    """A nats-py ``Client`` with the header code above (when the nats-py version fits)
    and a read loop that survives any bytes on the wire."""

    def __init__(self) -> None:
        super().__init__()
        self._ps = GuardedParser(self)
        # told the subject of every publish the server refused (its permissions): the reply
        # inboxes fail the requests waiting on it with ``PermissionDenied``
        self.denied_listeners: list[Callable[[str], None]] = []
        # subscriptions whose messages a synchronous handler takes as they are read
        self._direct: dict[int, Callable[[Msg], None]] = {}

    def deliver_directly(self, sub: Subscription, handler: Callable[[Msg], None]) -> None:
        """Hand each message of ``sub`` to ``handler`` as the read loop parses it, instead of
        through nats-py's queue and the task it runs for the subscription (a put, a get, a
        task wake-up and ~250 Python opcodes per message). For handlers that only hand the
        message on without waiting (the reply inbox completes a future): the handler runs in
        the read loop, and nothing queues, so the subscription's pending limits do not
        apply. What it raises is logged and the message dropped (``GuardedParser``)."""
        self._direct[sub._id] = handler

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        if sid not in self._subs:  # unsubscribed (nats-py drops what still comes for it)
            del self._direct[sid]
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        hdr = await self._process_headers(headers) if headers else None
        handler(self._build_message(sid, subject, reply, data, hdr))

    async def _process_err(self, err_msg: str) -> None:
        """As nats-py's (which wants it in lower case), after telling ``denied_listeners``
        of a refused publish: the subject keeps its case. A permissions violation leaves
        the connection open (the server does too): one bad subject must not cut every other
        call of the process."""
        denied = _DENIED_RE.search(err_msg)
        if denied is not None:
            for listener in list(self.denied_listeners):
                listener(denied.group(1))
        await super()._process_err(err_msg.lower())

    def _build_message(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> Any:
        return self.msg_class(
            subject=text(subject), reply=text(reply), data=data, headers=headers, _client=self, _sid=sid
        )

    async def _process_headers(self, headers: bytes) -> dict[str, str] | None:
        try:
            return await super()._process_headers(headers)
        except UnicodeDecodeError:
            return _status_headers(headers) or None

    if FAST_HEADERS:

        async def _send_publish(
            self,
            subject: str,
            reply: str,
            payload: bytes,
            payload_size: int,
            headers: dict[str, Any] | None,
        ) -> None:
            if subject == "":
                raise BadSubjectError
            if headers is None:
                pub_cmd = _cmd.pub_cmd(subject, reply, payload)
            else:
                pub_cmd = _cmd.hpub_cmd(subject, reply, encode_headers(headers), payload)
            self.stats["out_msgs"] += 1
            self.stats["out_bytes"] += payload_size
            await self._send_command(pub_cmd)
            if self._flush_queue is not None and self._flush_queue.empty():
                await self._flush_pending()

        _parse_header_lines = staticmethod(parse_header_lines)
