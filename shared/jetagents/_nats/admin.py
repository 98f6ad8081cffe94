"""The operator's NATS calls (``jetagents._client.inspection``): stream subjects, log and
dead-letter reads by direct get, KV reads and writes, dead-letter removal and purges.

Reads only need what the wire contract grants a reader (``$JS.API.STREAM.INFO``,
``$JS.API.DIRECT.GET``, ``$JS.API.STREAM.MSG.GET``); the writes (redrive, delete) need the
``operator`` user of ``ops/nats/accounts.conf``.
"""

from __future__ import annotations

import base64
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .._host.ports import StoredMessage
from .api import DirectReader, js_api, js_publish, stream_info
from .inbox import shared_inbox
from .kv import KvEntry, kv_get, kv_subject, msg_get, purge_subject, scan_last
from .log_reader import stored_message


class AdminTransport:
    """Every NATS call of the inspection and admin operations, over one connection."""

    def __init__(self, nc: NATS, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self._reader = DirectReader(nc)

    async def subjects(self, stream: str, subject_filter: str, limit: int) -> dict[str, int]:
        """Subjects of ``stream`` matching ``subject_filter`` with their message counts (at
        most ``limit``; the server pages long lists)."""
        out: dict[str, int] = {}
        while len(out) < limit:
            body = {"subjects_filter": subject_filter, "offset": len(out)}
            info = await js_api(self.nc, f"$JS.API.STREAM.INFO.{stream}", body, self.timeout_s)
            page = (info.get("state") or {}).get("subjects") or {}
            if not page:
                break
            out.update({str(k): int(v) for k, v in page.items()})
            if len(out) >= int(info.get("total", 0) or 0):
                break
        return dict(list(out.items())[:limit])

    async def stream_info(self, stream: str) -> dict[str, Any]:
        return await stream_info(self.nc, stream, self.timeout_s)

    async def stream_state(self, stream: str) -> dict[str, Any]:
        info = await stream_info(self.nc, stream, self.timeout_s)
        return dict(info.get("state") or {})

    async def read(self, stream: str, subject: str, start_seq: int, limit: int) -> tuple[list[StoredMessage], bool]:
        """At most ``limit`` messages on ``subject`` (wildcards allowed) from ``start_seq``,
        oldest first, and whether more follow."""
        out: list[StoredMessage] = []
        seq = max(1, start_seq)
        more = True
        while more and len(out) < limit:
            msgs, more, last = await self._reader.read_batch(
                stream, subject, seq, min(256, limit - len(out)), self.timeout_s
            )
            out.extend(stored_message(m, m.subject) for m in msgs)
            if not msgs:
                return out, False
            seq = last + 1
        return out, more

    async def read_from_leader(self, stream: str, subject: str, start_seq: int, limit: int) -> list[StoredMessage]:
        """Like :meth:`read`, for streams without direct gets (KV buckets): one
        ``STREAM.MSG.GET`` per message, from the stream leader."""
        out: list[StoredMessage] = []
        seq = max(1, start_seq)
        while len(out) < limit:
            msg = await msg_get(self.nc, stream, {"seq": seq, "next_by_subj": subject}, self.timeout_s)
            if msg is None:
                return out
            hdrs = base64.b64decode(msg.get("hdrs") or b"")
            out.append(
                StoredMessage(int(msg["seq"]), str(msg["subject"]), base64.b64decode(msg.get("data") or b""), {})
            )
            if b"KV-Operation" in hdrs:  # a delete or purge marker is no value
                out.pop()
            seq = int(msg["seq"]) + 1
        return out

    async def last(self, stream: str, subject: str) -> StoredMessage | None:
        msg = await self._reader.last(stream, subject, self.timeout_s)
        return stored_message(msg, msg.subject) if msg is not None else None

    async def at(self, stream: str, seq: int) -> StoredMessage | None:
        msg = await self._reader.at(stream, seq, self.timeout_s)
        return stored_message(msg, msg.subject) if msg is not None else None

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        return await kv_get(self.nc, bucket, key, self.timeout_s)

    async def kv_scan(self, bucket: str, prefix: str) -> dict[str, KvEntry]:
        return await scan_last(self.nc, bucket, prefix, self.timeout_s)

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        ack = await js_publish(self.nc, kv_subject(bucket, key), value, {}, self.timeout_s)
        return int(ack["seq"])

    async def request(self, subject: str, body: bytes, timeout_s: float) -> Msg:
        inbox = await shared_inbox(self.nc)
        return await inbox.request(subject, body, None, timeout_s)

    async def expect(self) -> tuple[str, Any]:
        """A reply subject on the shared inbox and the future its one reply completes."""
        inbox = await shared_inbox(self.nc)
        return inbox.expect()

    async def forget(self, reply_subject: str) -> None:
        (await shared_inbox(self.nc)).forget(reply_subject)

    async def publish_durable(self, subject: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        return await js_publish(self.nc, subject, body, headers, self.timeout_s)

    async def delete_message(self, stream: str, seq: int) -> None:
        await js_api(self.nc, f"$JS.API.STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True}, self.timeout_s)

    async def purge(self, stream: str, subject: str) -> None:
        await purge_subject(self.nc, stream, subject, self.timeout_s)

    async def purge_until(self, stream: str, subject: str, keep_from_seq: int) -> None:
        """Remove the messages of ``subject`` below sequence ``keep_from_seq``."""
        body = {"filter": subject, "seq": keep_from_seq}
        await js_api(self.nc, f"$JS.API.STREAM.PURGE.{stream}", body, self.timeout_s)
