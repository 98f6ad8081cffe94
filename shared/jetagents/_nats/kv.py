"""KV on JetStream through the raw ``$JS.API``, written once: ensure a stream, read a
key's latest entry from the stream leader, and publish with compare-and-set on its revision.

A KV bucket ``<b>`` is the stream ``KV_<b>`` with one subject per key, ``$KV.<b>.<key>``; a
key's revision is the stream sequence of its last message. These primitives move bytes and
report what the server said; what a conflict or a missing key means is the caller's decision
(the shared state, the cluster coordinator).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from nats.aio.client import Client as NATS

from .api import ERR_STREAM_NOT_FOUND, ERR_WRONG_LAST_SEQUENCE, JSApiError, js_api, js_publish

NatsClient: TypeAlias = NATS  # for code outside the adapter that only passes a connection along

ERR_NO_MESSAGE = 10037
# the clustered leader refused an expected-last-subject-sequence publish up front, because
# another one for the subject is still in flight: read again, like a wrong last sequence
ERR_LAST_SEQ_NOT_READY = 10164
CONFLICT_CODES = frozenset({ERR_WRONG_LAST_SEQUENCE, ERR_LAST_SEQ_NOT_READY})


class KvConflict(Exception):
    """The key's revision was not the expected one (``err_code`` 10071), or the clustered
    leader could not check it yet (10164). Someone wrote first: read again."""

    def __init__(self, err_code: int) -> None:
        super().__init__(f"wrong last sequence ({err_code})")
        self.err_code = err_code


@dataclass(frozen=True, slots=True)
class KvEntry:
    """A key's latest message: its body, revision (stream sequence) and raw header block."""

    data: bytes
    revision: int
    headers: bytes = b""

    @property
    def deleted(self) -> bool:
        """A delete or purge marker (the KV API's ``KV-Operation`` header)."""
        return b"KV-Operation: DEL" in self.headers or b"KV-Operation: PURGE" in self.headers


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


async def ensure_stream(
    nc: NATS, config: Mapping[str, Any], timeout_s: float, *, create_timeout_s: float | None = None
) -> None:
    """Create the stream ``config["name"]`` unless it exists (idempotent; another process may
    create it at the same moment, which is fine). An existing stream is left as it is."""
    name = config["name"]
    try:
        await js_api(nc, f"$JS.API.STREAM.INFO.{name}", None, timeout_s)
    except JSApiError as exc:
        if exc.err_code != ERR_STREAM_NOT_FOUND:
            raise
        try:
            await js_api(nc, f"$JS.API.STREAM.CREATE.{name}", dict(config), create_timeout_s or timeout_s)
        except JSApiError as exc2:
            if "already in use" not in exc2.description:
                raise


async def stream_info(nc: NATS, stream: str, timeout_s: float) -> dict[str, Any]:
    return await js_api(nc, f"$JS.API.STREAM.INFO.{stream}", None, timeout_s)


async def last_by_subject(nc: NATS, stream: str, subject: str, timeout_s: float) -> KvEntry | None:
    """The last message of ``subject`` in ``stream``, read from the stream leader (so never
    from a lagging replica); None if the subject has none."""
    try:
        resp = await js_api(nc, f"$JS.API.STREAM.MSG.GET.{stream}", {"last_by_subj": subject}, timeout_s)
    except JSApiError as exc:
        if exc.err_code == ERR_NO_MESSAGE:
            return None
        raise
    msg = resp["message"]
    return KvEntry(base64.b64decode(msg.get("data") or b""), int(msg["seq"]), base64.b64decode(msg.get("hdrs") or b""))


async def publish_expecting(
    nc: NATS,
    subject: str,
    data: bytes,
    timeout_s: float,
    *,
    expected_rev: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Publish ``data``; with ``expected_rev``, only if the subject's last sequence is still
    that (0: the subject has no message yet), else :class:`KvConflict`. Returns the PubAck."""
    hdrs = dict(headers or {})
    if expected_rev is not None:
        hdrs["Nats-Expected-Last-Subject-Sequence"] = str(expected_rev)
    try:
        return await js_publish(nc, subject, data, hdrs, timeout_s)
    except JSApiError as exc:
        if exc.err_code in CONFLICT_CODES:
            raise KvConflict(exc.err_code) from None
        raise
