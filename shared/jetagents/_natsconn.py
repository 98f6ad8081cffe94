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
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from nats.aio import client as _nc
from nats.errors import BadHeaderError, BadSubjectError
from nats.protocol import command as _cmd

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


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines to a dict, by nats-py's rules (see its ``_parse_header_lines``)."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WS.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


class Connection(_nc.Client):
    """A nats-py ``Client`` with the header code above (when the nats-py version fits)."""

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
