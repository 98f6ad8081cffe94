"""The thin NATS adapter: connection options, the raw ``$JS.API`` calls nats-py lacks,
the topology (streams, KV buckets, consumers) and batched direct gets.

Everything above this module speaks in agents and commands; only this module (and the
host's pull loop) knows JetStream's JSON API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeout

from .._core.errors import JetAgentsError, PayloadTooLarge, Unavailable
from .._core.wire import Subjects
from .conn import Connection
from .headers import H_NATS_SEQUENCE
from .inbox import Inbox, shared_inbox

# JetStream API error codes (``err_code``), each defined once for the library
_log = logging.getLogger("jetagents.nats")

ERR_CONSUMER_NOT_FOUND: Final = 10014
ERR_NO_MESSAGE: Final = 10037  # STREAM.MSG.GET: no message at (or after) that sequence or subject
ERR_MSG_SIZE: Final = 10054
ERR_STREAM_NOT_FOUND: Final = 10059
ERR_WRONG_LAST_SEQUENCE: Final = 10071
ERR_DUPLICATE_IN_PROCESS: Final = 10158  # "duplicate message id is in process": outcome not known yet
# the clustered leader refused an expected-last-subject-sequence publish up front, because
# another one for the subject is still in flight: read again, like a wrong last sequence
ERR_LAST_SEQ_NOT_READY: Final = 10164
NS: Final = 1_000_000_000
# what the command stream needs for durable timers and reminders (ADR 0042 section 5); the
# server turns allow_rollup_hdrs on with schedules, and never lets schedules be turned off
SCHEDULE_FLAGS: Final = {"allow_msg_schedules": True, "allow_msg_ttl": True, "allow_rollup_hdrs": True}


class JSApiError(JetAgentsError):
    """The JetStream API answered with an error object."""

    code = "jetstream"

    def __init__(self, err_code: int, status: int, description: str) -> None:
        super().__init__(f"JetStream error {err_code}: {description}", details={"err_code": err_code})
        self.err_code = err_code
        self.status = status
        self.description = description


async def connect(url: str, *, name: str, connect_timeout_s: float = 5.0, **opts: Any) -> NATS:
    """Connect with reconnects forever (hosts and clients ride out server restarts)."""
    options: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",") if u.strip()],
        "name": name,
        "connect_timeout": connect_timeout_s,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "allow_reconnect": True,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
    }
    options.update(opts)
    try:
        # nats-py keeps retrying the first connection when reconnects are unlimited:
        # bound it, so a caller hears "unavailable" instead of hanging
        async with asyncio.timeout(connect_timeout_s):
            nc = Connection()  # nats-py's client, with cheaper headers (_natsconn.py)
            await nc.connect(**options)
            return nc
    except (OSError, TimeoutError, NatsTimeout, nats.errors.NoServersError) as exc:
        raise Unavailable(f"cannot connect to NATS at {url}: {exc or 'timed out'}") from None


async def jetstream_answers(nc: NATS, timeout_s: float) -> bool:
    """Does JetStream answer ``$JS.API.INFO`` without an error? (readiness probes)"""
    try:
        await js_api(nc, "$JS.API.INFO", None, timeout_s)
    except Exception:  # noqa: BLE001 - an error answer, timeouts, no responders, closed connection: not ready
        return False
    return True


async def stream_info(nc: NATS, stream: str, timeout_s: float) -> dict[str, Any]:
    return await js_api(nc, f"$JS.API.STREAM.INFO.{stream}", None, timeout_s)


def _no_responders(msg: Msg) -> bool:
    """The server's answer on an inbox when nobody listens on the subject."""
    return bool(msg.headers) and (msg.headers or {}).get("Status") == "503"


def _raise_api_error(resp: dict[str, Any]) -> None:
    err = resp.get("error")
    if err:
        raise JSApiError(int(err.get("err_code", 0)), int(err.get("code", 0)), str(err.get("description", "")))


async def js_api(nc: NATS, subject: str, payload: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    inbox = await shared_inbox(nc)
    try:
        msg = await inbox.request(subject, orjson.dumps(payload) if payload is not None else b"", None, timeout_s)
    except TimeoutError:
        raise Unavailable(f"JetStream API {subject} timed out") from None
    if _no_responders(msg):
        raise Unavailable("JetStream is not available (no responders)")
    resp: dict[str, Any] = orjson.loads(msg.data)
    _raise_api_error(resp)
    return resp


async def js_publish(
    nc: NATS, subject: str, payload: bytes, headers: dict[str, str], timeout_s: float, inbox: Inbox | None = None
) -> dict[str, Any]:
    """Publish to a stream and return the PubAck (``stream``, ``seq``, ``duplicate``);
    the PubAck comes back on ``inbox``, or on the connection's shared inbox."""
    if inbox is None:
        inbox = await shared_inbox(nc)
    try:
        msg = await inbox.request(subject, payload, headers, timeout_s)
    except TimeoutError:
        raise Unavailable(f"publish to {subject} was not acknowledged in {timeout_s}s") from None
    except MaxPayloadError:  # over the server's max_payload: never retryable (ADR 0039)
        raise PayloadTooLarge(f"message of {len(payload)} bytes exceeds the server's max_payload") from None
    if _no_responders(msg):
        raise Unavailable(f"no stream accepted {subject} (JetStream down or stream missing)")
    ack: dict[str, Any] = orjson.loads(msg.data)
    err = ack.get("error")
    if err and int(err.get("err_code", 0)) == ERR_MSG_SIZE:
        raise PayloadTooLarge(str(err.get("description", "message too large")))
    _raise_api_error(ack)
    return ack


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and shapes of everything jetagents keeps in JetStream."""

    subjects: Subjects
    partitions: int = 64
    replicas: int = 1
    duplicate_window_s: float = 120.0
    max_payload_bytes: int = 256 * 1024
    out_max_age_s: float = 7 * 24 * 3600.0  # AGT_OUT keeps nothing longer (a stream's end: out_result_ttl_s)
    snapshot_history: int = 3  # snapshots kept per agent (ADR 0053), as HostSettings' default

    @property
    def prefix(self) -> str:
        return self.subjects.stream_prefix

    @property
    def cmd_stream(self) -> str:
        return f"{self.prefix}_CMD"

    @property
    def cmd_high_stream(self) -> str:
        """The high-priority lane's command stream (ADR 0058)."""
        return f"{self.prefix}_CMDH"

    def lane_stream(self, high: bool) -> str:
        return self.cmd_high_stream if high else self.cmd_stream

    @property
    def evt_stream(self) -> str:
        return f"{self.prefix}_EVT"

    @property
    def out_stream(self) -> str:
        return f"{self.prefix}_OUT"

    @property
    def dlq_stream(self) -> str:
        return f"{self.prefix}_DLQ"

    @property
    def snap_bucket(self) -> str:
        return self.subjects.bucket("snap")

    @property
    def meta_bucket(self) -> str:
        return self.subjects.bucket("meta")

    @property
    def tomb_bucket(self) -> str:
        """Tombstones of deleted agents (ADR 0052): written by operators, read by hosts."""
        return self.subjects.bucket("tomb")

    @property
    def blob_bucket(self) -> str:
        """The Object Store bucket of payloads by reference (ADR 0042 section 9)."""
        return self.subjects.bucket("blobs")

    @property
    def quarantine_bucket(self) -> str:
        """Quarantined agents (ADR 0053): hosts write, operators delete (release)."""
        return self.subjects.bucket("quarantine")

    @property
    def cluster_bucket(self) -> str:
        return self.subjects.bucket("cluster")

    @property
    def dead_letter_max_bytes(self) -> int:
        """``max_msg_size`` of the dead-letter stream; every dead letter fits (wire contract §8)."""
        return max((self.max_payload_bytes + 4096) * 2, 1024 * 1024)

    def consumer_name(self, partition: int, high: bool = False) -> str:
        return f"h{partition}" if high else f"p{partition}"

    def stream_configs(self) -> list[dict[str, Any]]:
        dup_ns = int(self.duplicate_window_s * NS)
        limit = self.max_payload_bytes + 4096  # room for headers
        return [
            {
                "name": self.cmd_stream,
                # agt.rem: the schedules (timers, reminders) no partition consumer takes
                "subjects": [self.subjects.cmd_wildcard, self.subjects.rem_wildcard],
                "subject_transform": {
                    "src": self.subjects.cmd_wildcard,
                    "dest": self.subjects.partition_transform_dest(self.partitions),
                },
                "retention": "workqueue",
                "storage": "file",
                "num_replicas": self.replicas,
                "duplicate_window": dup_ns,
                "max_msg_size": limit,
                "discard": "old",
                "metadata": {"jetagents_partitions": str(self.partitions)},
                **SCHEDULE_FLAGS,
            },
            {
                "name": self.evt_stream,
                "subjects": [self.subjects.evt_wildcard],
                "retention": "limits",
                "storage": "file",
                "num_replicas": self.replicas,
                "duplicate_window": dup_ns,
                "allow_direct": True,
                "max_msg_size": max(limit, 1024 * 1024),
                "deny_delete": True,
                "deny_purge": False,
            },
            {
                "name": self.dlq_stream,
                "subjects": [self.subjects.dlq_wildcard],
                "retention": "limits",
                "storage": "file",
                "num_replicas": self.replicas,
                "max_age": 14 * 24 * 3600 * NS,
                "allow_direct": True,
                "max_msg_size": self.dead_letter_max_bytes,
            },
            {
                # streamed output (ADR 0042 section 6): read by sequence from any offset
                # (direct get); each message carries its own TTL (chunks short, the end long)
                "name": self.out_stream,
                "subjects": [self.subjects.out_wildcard],
                "retention": "limits",
                "storage": "file",
                "num_replicas": self.replicas,
                "duplicate_window": min(dup_ns, int(self.out_max_age_s * NS)),  # the server's rule
                "max_age": int(self.out_max_age_s * NS),
                "allow_direct": True,
                "allow_msg_ttl": True,
                "max_msg_size": max(limit, 1024 * 1024),
            },
            {
                # the high-priority lane (ADR 0058): its own stream because a stream has one
                # subject transform; partitioned by the same function as AGT_CMD
                "name": self.cmd_high_stream,
                "subjects": [self.subjects.cmd_high_wildcard],
                "subject_transform": {
                    "src": self.subjects.cmd_high_wildcard,
                    "dest": self.subjects.high_transform_dest(self.partitions),
                },
                "retention": "workqueue",
                "storage": "file",
                "num_replicas": self.replicas,
                "duplicate_window": dup_ns,
                "max_msg_size": limit,
                "discard": "old",
                "metadata": {"jetagents_partitions": str(self.partitions)},
            },
        ]

    def consumer_config(
        self, partition: int, *, ack_wait_s: float, max_deliver: int, max_ack_pending: int, high: bool = False
    ) -> dict[str, Any]:
        subjects = self.subjects
        lane_filter = subjects.high_partition_filter if high else subjects.partition_filter
        return {
            "durable_name": self.consumer_name(partition, high),
            "filter_subject": lane_filter(partition),
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "ack_wait": int(ack_wait_s * NS),
            "max_deliver": max_deliver,
            "max_ack_pending": max_ack_pending,
            "max_waiting": 512,
            # The consumer's own state (delivered, ack floor) is kept in memory. The work-queue
            # stream is the record of what is still to do (an ack deletes the command), so a
            # consumer recreated empty after a server restart delivers exactly the commands
            # not acknowledged, again; the host recreates a consumer it finds missing. On file
            # storage each consumer wrote its state to a temp file with fsync and rename: at
            # 64 partitions ~150 us of server CPU per command (ADR 0032).
            "mem_storage": True,
            "num_replicas": self.replicas,
            "priority_groups": ["jetagents"],
            "priority_policy": "pinned_client",
            "priority_timeout": int(max(2.0, ack_wait_s) * NS),
        }


def kv_bucket_config(bucket: str, replicas: int, history: int = 1) -> dict[str, Any]:
    """A KV bucket keeping one value per key, as nats-py's ``create_key_value`` makes it
    (the snapshot and metadata buckets; ``_nats.kv.cluster_bucket_config`` builds on it)."""
    return {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "max_msgs_per_subject": history,
        "max_msgs": -1,
        "max_consumers": -1,
        "discard": "new",
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "deny_purge": False,
        "allow_msg_ttl": True,
        "duplicate_window": 2 * 60 * NS,
    }


async def ensure_stream(
    nc: NATS,
    cfg: Mapping[str, Any],
    timeout_s: float,
    *,
    create_timeout_s: float | None = None,
    at_least: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The stream's info, creating it from ``cfg`` unless it exists (idempotent: another
    process may create it at the same moment). An existing stream is left as it is, but for
    the limits named in ``at_least``, raised to ``cfg``'s when lower (``raise_limits``)."""
    name = cfg["name"]
    try:
        return await raise_limits(nc, await stream_info(nc, name, timeout_s), cfg, at_least, timeout_s)
    except JSApiError as exc:
        if exc.err_code != ERR_STREAM_NOT_FOUND:
            raise
    try:
        return await js_api(nc, f"$JS.API.STREAM.CREATE.{name}", dict(cfg), create_timeout_s or timeout_s)
    except JSApiError as exc:  # another process created it first
        if "already in use" not in exc.description:
            raise
    return await stream_info(nc, name, timeout_s)


async def ensure_topology(nc: NATS, topo: Topology, timeout_s: float = 5.0) -> str:
    """Create the streams and buckets if missing; check the partition count agrees.

    Returns the command stream's creation time, which identifies this incarnation of the
    stream (its sequence numbers restart if it is ever recreated).
    """
    created = ""
    for cfg in topo.stream_configs():
        name = cfg["name"]
        info = await ensure_stream(nc, cfg, timeout_s)
        if name == topo.cmd_stream:
            existing = (info.get("config", {}).get("metadata") or {}).get("jetagents_partitions")
            if existing and int(existing) != topo.partitions:
                raise JetAgentsError(
                    f"stream {name} was created with {existing} partitions, this process is "
                    f"configured with {topo.partitions}; the partition count is fixed per cluster"
                )
            created = str(info.get("created", ""))
            await upgrade_cmd_stream(nc, topo, info, timeout_s)
    for bucket in (topo.snap_bucket, topo.meta_bucket, topo.quarantine_bucket, topo.tomb_bucket):
        history = topo.snapshot_history if bucket == topo.snap_bucket else 1
        # a snapshot bucket made by a version that kept one snapshot gets its history (ADR 0053)
        upgrade = ("max_msgs_per_subject",) if bucket == topo.snap_bucket else ()
        await ensure_stream(nc, kv_bucket_config(bucket, topo.replicas, history), timeout_s, at_least=upgrade)
    return created


async def raise_limits(
    nc: NATS, info: dict[str, Any], cfg: Mapping[str, Any], keys: tuple[str, ...], timeout_s: float
) -> dict[str, Any]:
    """Raise an existing stream's limits ``keys`` to ``cfg``'s where lower (never lowered: the
    server would drop what is over; <= 0 is no limit), keeping its other config and messages.
    No compare-and-set on a stream's config: processes starting at once send the same update
    (idempotent); with different values the last write wins until the other starts again.
    Refused (an ops host may not update streams: place-streams does), a warning, no change."""
    have = dict(info.get("config") or {})
    low = {k: cfg[k] for k in keys if 0 < int(have.get(k) or 0) < int(cfg[k])}
    if not low:
        return info
    try:
        return await js_api(nc, f"$JS.API.STREAM.UPDATE.{cfg['name']}", {**have, **low}, timeout_s)
    except (JSApiError, Unavailable) as exc:
        _log.warning("stream_limits_not_raised stream=%s wanted=%s error=%r", cfg["name"], low, exc)
        return info


async def upgrade_cmd_stream(nc: NATS, topo: Topology, info: Mapping[str, Any], timeout_s: float) -> bool:
    """Give a command stream made before reminders the schedule subjects and flags (ADR 0042
    section 5), keeping everything else of its configuration and the commands it holds. The
    change cannot be undone (the server never turns schedules off). Returns whether it
    updated; a connection without the right (hosts under ops/nats/accounts.conf may not
    update streams) leaves the stream as it is, and reminders say ``unavailable``."""
    cfg = dict(info.get("config") or {})
    subjects = list(cfg.get("subjects") or [])
    if topo.subjects.rem_wildcard in subjects and all(cfg.get(k) for k in SCHEDULE_FLAGS):
        return False
    if topo.subjects.rem_wildcard not in subjects:
        subjects.append(topo.subjects.rem_wildcard)
    cfg.update(SCHEDULE_FLAGS, subjects=subjects)
    try:
        await js_api(nc, f"$JS.API.STREAM.UPDATE.{topo.cmd_stream}", cfg, timeout_s)
    except (JSApiError, Unavailable) as exc:
        _log.warning("cmd_stream_not_upgraded stream=%s error=%r", topo.cmd_stream, exc)
        return False
    return True


class DirectReader:
    """Batched direct gets (server 2.11+), answered on the connection's shared inbox.

    ``read_subject`` streams every message of one subject from a start sequence, in
    batches, without creating a consumer: the cheap way to replay an agent's log.
    """

    def __init__(self, nc: NATS, inbox: Inbox | None = None) -> None:
        self._nc = nc
        self._inbox = inbox  # the connection's shared inbox unless given (a client has its own)

    async def start(self) -> None:
        if self._inbox is None:
            self._inbox = await shared_inbox(self._nc)

    async def stop(self) -> None:
        """Nothing to release: the shared inbox lives as long as the connection."""

    async def read_subject(self, stream: str, subject: str, start_seq: int, batch: int, timeout_s: float) -> list[Msg]:
        """All messages on ``subject`` with sequence >= ``start_seq``."""
        out: list[Msg] = []
        seq = max(1, start_seq)
        while True:
            msgs, more, last = await self._batch(stream, subject, seq, batch, timeout_s)
            out.extend(msgs)
            if not more or not msgs:
                return out
            seq = last + 1

    async def read_batch(
        self, stream: str, subject: str, seq: int, batch: int, timeout_s: float
    ) -> tuple[list[Msg], bool, int]:
        """At most ``batch`` messages on ``subject`` (wildcards allowed) from ``seq``; whether
        more follow; the last sequence read (``seq - 1`` when none)."""
        return await self._batch(stream, subject, seq, batch, timeout_s)

    async def _batch(
        self, stream: str, subject: str, seq: int, batch: int, timeout_s: float
    ) -> tuple[list[Msg], bool, int]:
        inbox = self._inbox or await shared_inbox(self._nc)
        q: asyncio.Queue[Msg] = asyncio.Queue()
        reply = inbox.listen(q.put_nowait)
        try:
            req = {"seq": seq, "next_by_subj": subject, "batch": batch}
            await self._nc.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(req), reply=reply)
            msgs: list[Msg] = []
            last = seq - 1
            async with asyncio.timeout(timeout_s):
                while True:
                    msg = await q.get()
                    status = msg.headers.get("Status") if msg.headers else None
                    if status is None:
                        msgs.append(msg)
                        last = int(msg.headers[H_NATS_SEQUENCE]) if msg.headers else last
                        continue
                    if status == "404":
                        return msgs, False, last
                    if status == "204":  # end of batch
                        pending = int((msg.headers or {}).get("Nats-Num-Pending", "0"))
                        return msgs, pending > 0, last
                    if status == "408":
                        raise Unavailable("direct get timed out on the server")
                    raise Unavailable(f"direct get failed with status {status}")
        except TimeoutError:
            raise Unavailable(f"direct get of {subject} timed out") from None
        finally:
            inbox.forget(reply)

    async def at(self, stream: str, seq: int, timeout_s: float) -> Msg | None:
        """The message at ``seq`` (None if there is none)."""
        return await self._one(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps({"seq": seq}), timeout_s)

    async def last(self, stream: str, subject: str, timeout_s: float) -> Msg | None:
        """The last message on ``subject`` (None if there is none)."""
        return await self._one(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout_s)

    async def first_since(self, stream: str, subject: str, start_time: str, timeout_s: float) -> Msg | None:
        """The first message on ``subject`` (wildcards allowed) stored at or after
        ``start_time`` (RFC 3339); None if there is none."""
        req = orjson.dumps({"start_time": start_time, "next_by_subj": subject})
        return await self._one(f"$JS.API.DIRECT.GET.{stream}", req, timeout_s)

    async def _one(self, api: str, payload: bytes, timeout_s: float) -> Msg | None:
        inbox = await shared_inbox(self._nc)
        try:
            msg = await inbox.request(api, payload, None, timeout_s)
        except TimeoutError:
            raise Unavailable(f"direct get {api} timed out") from None
        if _no_responders(msg):
            raise Unavailable("direct get: no responders")
        status = msg.headers.get("Status") if msg.headers else None
        if status == "404":
            return None
        if status is not None:
            raise Unavailable(f"direct get failed with status {status}")
        return msg
