"""KV on JetStream through the raw ``$JS.API``, written once: ensure a stream, read a
message (a key's latest entry) from the stream leader (:func:`last_by_subject`, the one KV
read), publish with compare-and-set on its revision, purge a key, scan a prefix; and
:class:`JetStreamStore`, the coordinator's :class:`~jetagents._core.kv.ClusterStore` on top
of them.

A KV bucket ``<b>`` is the stream ``KV_<b>`` with one subject per key, ``$KV.<b>.<key>``; a
key's revision is the stream sequence of its last message. The primitives move bytes and
report what the server said; what a conflict or a missing key means is the caller's decision
(the shared state, the cluster coordinator).
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import orjson
from nats.aio.client import Client as NATS

from .._core.errors import Unavailable
from .._core.kv import CasConflict, Entry
from .._core.retry import RetryPolicy
from .._core.wire import H_EXPECTED_LAST_SUBJECT_SEQ
from .api import (
    ERR_LAST_SEQ_NOT_READY,
    ERR_NO_MESSAGE,
    ERR_WRONG_LAST_SEQUENCE,
    JSApiError,
    js_api,
    js_publish,
    kv_bucket_config,
)

# written once in api.py, next to ensure_topology, which uses them too
from .api import ensure_stream as ensure_stream
from .api import stream_info as stream_info
from .conn import parse_header_lines
from .headers import H_NATS_SEQUENCE
from .inbox import shared_inbox

NatsClient: TypeAlias = NATS  # for code outside the adapter that only passes a connection along

CONFLICT_CODES: Final = frozenset({ERR_WRONG_LAST_SEQUENCE, ERR_LAST_SEQ_NOT_READY})
SCAN_RETRY: Final = RetryPolicy(attempts=8, base_s=0.02, max_s=0.5)  # a replica behind catches up in ms
SCAN_PAGE: Final = 1024  # messages per request of a scan too large for one multi_last


class KvConflict(CasConflict):
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


_KEY_RE: Final = re.compile(r"[-/_=.a-zA-Z0-9]+")


class InvalidKey(ValueError):
    """Not a KV key (the rule of the KV API, which nats-py's ``KeyValue`` checked too): a key
    with a space, a wildcard or an empty token would name other subjects than its own."""


def checked_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key) or key.startswith(".") or key.endswith(".") or ".." in key:
        raise InvalidKey(f"not a KV key: {key[:64]!r}")
    return key


async def msg_get(nc: NATS, stream: str, query: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """``STREAM.MSG.GET``, answered by the stream's leader (never a lagging replica): the
    ``message`` (``seq``, ``subject``, ``time``, base64 ``data`` and ``hdrs``) that ``query``
    finds (``{"seq": n}``, ``{"last_by_subj": s}``, ``{"seq": n, "next_by_subj": f}``);
    None when there is none."""
    try:
        resp = await js_api(nc, f"$JS.API.STREAM.MSG.GET.{stream}", query, timeout_s)
    except JSApiError as exc:
        if exc.err_code == ERR_NO_MESSAGE:
            return None
        raise
    message: dict[str, Any] = resp["message"]
    return message


def message_headers(message: Mapping[str, Any]) -> dict[str, str]:
    """The headers of a message ``msg_get`` returned (base64 of the ``NATS/1.0`` block)."""
    raw = base64.b64decode(message.get("hdrs") or b"")
    return parse_header_lines(raw.partition(b"\r\n")[2])


async def last_by_subject(nc: NATS, stream: str, subject: str, timeout_s: float) -> KvEntry | None:
    """The last message of ``subject`` in ``stream``, read from the stream leader (so never
    from a lagging replica); None if the subject has none. A delete or purge marker is
    returned as it is (``deleted``): the shared state compares-and-sets on its revision.

    The one read of a KV key: every KV user of the adapter reads through it (or
    :func:`kv_get`). Why ``STREAM.MSG.GET`` and not the direct get, about twice as fast
    (``loadtests/bench_kv_read.py``): any replica answers a direct get, a lagging one with
    an older value, and the readers here need their own writes (a claim, the ring, an agent's
    metadata right after its spawn, a tombstone); the host's buckets do not allow direct gets
    either. nats-py's ``KeyValue.get`` sends the same request, with ~50 us more client CPU."""
    msg = await msg_get(nc, stream, {"last_by_subj": subject}, timeout_s)
    return None if msg is None else _entry(msg)


def _entry(msg: Mapping[str, Any]) -> KvEntry:
    return KvEntry(base64.b64decode(msg.get("data") or b""), int(msg["seq"]), base64.b64decode(msg.get("hdrs") or b""))


async def kv_get(nc: NATS, bucket: str, key: str, timeout_s: float) -> KvEntry | None:
    """The live value of ``key`` and its revision (:func:`last_by_subject`); None when the key
    is absent, deleted or purged. ``Unavailable`` when JetStream does not answer (a timeout,
    no responders); ``JSApiError`` for an error it answers (the bucket is missing)."""
    found = await last_by_subject(nc, f"KV_{bucket}", kv_subject(bucket, key), timeout_s)
    return None if found is None or found.deleted else found


async def kv_history(nc: NATS, bucket: str, key: str, timeout_s: float, *, limit: int = 64) -> list[KvEntry]:
    """The values the bucket still keeps of ``key``, oldest first, markers left out: one
    ``STREAM.MSG.GET`` per kept message, from the leader, at most ``limit`` of them (a bucket
    keeps a few values per key: ``max_msgs_per_subject``)."""
    subject = kv_subject(bucket, key)
    out: list[KvEntry] = []
    seq = 1
    for _ in range(limit):
        msg = await msg_get(nc, f"KV_{bucket}", {"seq": seq, "next_by_subj": subject}, timeout_s)
        if msg is None:
            break
        entry = _entry(msg)
        if not entry.deleted:
            out.append(entry)
        seq = entry.revision + 1
    return out


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
        hdrs[H_EXPECTED_LAST_SUBJECT_SEQ] = str(expected_rev)
    try:
        return await js_publish(nc, subject, data, hdrs, timeout_s)
    except JSApiError as exc:
        if exc.err_code in CONFLICT_CODES:
            raise KvConflict(exc.err_code) from None
        raise


async def purge_subject(nc: NATS, stream: str, subject: str, timeout_s: float) -> None:
    await js_api(nc, f"$JS.API.STREAM.PURGE.{stream}", {"filter": subject}, timeout_s)


class _Behind(Exception):
    """The replica that answered a scan had not applied the revision asked for yet."""


async def scan_last(nc: NATS, bucket: str, prefix: str, timeout_s: float, *, after_rev: int = 0) -> dict[str, KvEntry]:
    """Every live key of ``bucket`` starting with ``prefix`` (key -> its last message), by
    one batched direct get: any replica may answer, so a moment's lag is possible. With
    ``after_rev`` (a revision the caller wrote under ``prefix``), a replica that had not
    applied it is asked again (``SCAN_RETRY``; the answer's end says up to which sequence it
    read): what is read then holds every write up to that revision, as a read from the
    leader would."""
    for attempt in range(SCAN_RETRY.attempts):
        if attempt:
            await asyncio.sleep(SCAN_RETRY.delay(attempt - 1))
        try:
            return await _scan_once(nc, bucket, prefix, timeout_s, after_rev)
        except _Behind:
            continue
    raise Unavailable(f"scan of KV bucket {bucket}: no replica has revision {after_rev} yet")


async def _scan_once(nc: NATS, bucket: str, prefix: str, timeout_s: float, after_rev: int) -> dict[str, KvEntry]:
    base = f"$KV.{bucket}."
    req = {"multi_last": [f"{base}{prefix}>"], "batch": 4096}
    msgs, status, end = await _direct_batch(nc, bucket, req, timeout_s)
    if status == "413":  # more keys under the prefix than the server answers at once
        return await _scan_paged(nc, bucket, prefix, timeout_s, after_rev)
    # 404: no key under the prefix, not even the caller's own write
    if after_rev and (
        status == "404"
        or any(int(h.get("Nats-UpTo-Sequence", after_rev)) < after_rev for h in [*(m.headers or {} for m in msgs), end])
    ):
        raise _Behind
    if status not in ("404", "204"):
        raise Unavailable(f"scan of KV bucket {bucket} failed with status {status}")
    out: dict[str, KvEntry] = {}
    for msg in msgs:
        hdrs = msg.headers or {}
        if hdrs.get("KV-Operation") not in ("DEL", "PURGE"):
            out[hdrs.get("Nats-Subject", "")[len(base) :]] = KvEntry(msg.data, int(hdrs.get(H_NATS_SEQUENCE, "0")))
    return out


async def _scan_paged(nc: NATS, bucket: str, prefix: str, timeout_s: float, after_rev: int) -> dict[str, KvEntry]:
    """The scan when ``multi_last`` is refused (the server answers it for at most 1024 keys,
    else status 413): every message under the prefix in stream order, a page at a time, each
    key's last one kept. Read up to the last message under the prefix, it holds ``after_rev``
    when one of its messages is at least that revision (the caller's write, or a later one;
    should all of those have been purged since, it cannot tell, and the scan is retried)."""
    base = f"$KV.{bucket}."
    out: dict[str, KvEntry] = {}
    start, top = 1, 0
    while True:
        req = {"seq": start, "next_by_subj": f"{base}{prefix}>", "batch": SCAN_PAGE}
        msgs, status, end = await _direct_batch(nc, bucket, req, timeout_s)
        if status not in ("404", "204"):
            raise Unavailable(f"scan of KV bucket {bucket} failed with status {status}")
        for msg in msgs:
            hdrs = msg.headers or {}
            key, top = hdrs.get("Nats-Subject", "")[len(base) :], int(hdrs.get(H_NATS_SEQUENCE, "0"))
            if hdrs.get("KV-Operation") in ("DEL", "PURGE"):
                out.pop(key, None)
            else:
                out[key] = KvEntry(msg.data, top)
        if status == "404" or not msgs or end.get("Nats-Num-Pending", "0") == "0":
            break
        start = top + 1
    if after_rev and top < after_rev:
        raise _Behind
    return out


async def _direct_batch(
    nc: NATS, bucket: str, req: dict[str, Any], timeout_s: float
) -> tuple[list[Any], str, dict[str, str]]:
    """One batched direct get: its messages, then the status that ended it and its headers."""
    shared = await shared_inbox(nc)
    q: asyncio.Queue[Any] = asyncio.Queue()
    inbox = shared.listen(q.put_nowait)
    msgs: list[Any] = []
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.KV_{bucket}", orjson.dumps(req), reply=inbox)
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await q.get()
                hdrs = msg.headers or {}
                status = hdrs.get("Status")
                if status is not None:
                    return msgs, str(status), hdrs
                msgs.append(msg)
    except TimeoutError:
        raise Unavailable(f"scan of KV bucket {bucket} timed out") from None
    finally:
        shared.forget(inbox)


# -- the coordinator's store ---------------------------------------------------------------
def cluster_bucket_config(bucket: str, replicas: int) -> dict[str, Any]:
    """A KV bucket (so ``nats kv`` can read it) with per-message TTLs and direct gets."""
    return {**kv_bucket_config(bucket, replicas), "allow_direct": True}


def _doc(data: bytes) -> dict[str, Any]:
    return orjson.loads(data) if data else {}


class JetStreamStore:
    """:class:`~jetagents._core.kv.ClusterStore` on a JetStream KV bucket.

    Reads go to the stream leader, so a claim or the ring is never read from a lagging
    replica; ``scan`` uses the batched direct get (it only feeds the leader's view of the
    members and status output, where a moment's lag is harmless). Every JetStream error
    but a wrong last sequence is :class:`Unavailable`.
    """

    def __init__(self, nc: NATS, bucket: str, *, replicas: int = 1, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.replicas = replicas
        self.timeout_s = timeout_s

    async def ensure(self) -> None:
        await ensure_stream(self.nc, cluster_bucket_config(self.bucket, self.replicas), self.timeout_s)

    async def get(self, key: str) -> Entry | None:
        try:
            found = await kv_get(self.nc, self.bucket, key, self.timeout_s)
        except JSApiError as exc:
            raise Unavailable(f"cluster store: {exc.description}") from None
        return None if found is None else Entry(_doc(found.data), found.revision)

    async def _publish(self, key: str, value: dict[str, Any], expect: int | None, ttl_s: float | None) -> int:
        hdrs = {"Nats-TTL": f"{max(1, math.ceil(ttl_s))}s"} if ttl_s else None
        subject = kv_subject(self.bucket, key)
        try:
            ack = await publish_expecting(
                self.nc, subject, orjson.dumps(value), self.timeout_s, expected_rev=expect, headers=hdrs
            )
        except KvConflict as exc:
            if exc.err_code != ERR_WRONG_LAST_SEQUENCE:  # not known to have lost: try again next round
                raise Unavailable(f"cluster store: {exc}") from None
            raise CasConflict(f"{key} changed") from None
        except JSApiError as exc:
            raise Unavailable(f"cluster store: {exc.description}") from None
        return int(ack["seq"])

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        return await self._publish(key, value, 0, ttl_s)

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int:
        return await self._publish(key, value, rev, ttl_s)

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        return await self._publish(key, value, None, ttl_s)

    async def remove(self, key: str) -> None:
        try:
            await purge_subject(self.nc, self.stream, kv_subject(self.bucket, key), self.timeout_s)
        except JSApiError as exc:
            raise Unavailable(f"cluster store: {exc.description}") from None

    async def scan(self, prefix: str, *, after_rev: int = 0) -> dict[str, Entry]:
        entries = await scan_last(self.nc, self.bucket, prefix, self.timeout_s, after_rev=after_rev)
        return {key: Entry(_doc(e.data), e.revision) for key, e in entries.items()}
