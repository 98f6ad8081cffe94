"""Durable work queues on JetStream (ADR 0050): stream ``<ROOT>_WORK`` (work-queue retention,
``<root>.work.<queue>``), one pull consumer per queue shared by every worker (an idle worker
pulls more: work stealing), and stream ``<ROOT>_WORKDLQ`` (``<root>.workdlq.<queue>``) for the
jobs that ran out of attempts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import FetchTimeoutError

from .._core.ids import validate_token
from .._core.wire import H_MSG_ID, Subjects
from .api import NS, JSApiError, ensure_stream, js_api, js_publish


@dataclass(frozen=True, slots=True)
class WorkNames:
    subjects: Subjects

    @property
    def prefix(self) -> str:
        return self.subjects.stream_prefix

    @property
    def stream(self) -> str:
        return f"{self.prefix}_WORK"

    @property
    def dlq_stream(self) -> str:
        return f"{self.prefix}_WORKDLQ"

    def subject(self, queue: str) -> str:
        return f"{self.subjects.root}.work.{queue}"

    def dlq_subject(self, queue: str) -> str:
        return f"{self.subjects.root}.workdlq.{queue}"

    @staticmethod
    def consumer(queue: str) -> str:
        return f"w_{queue}"


def work_stream_configs(names: WorkNames, *, replicas: int, max_msg_bytes: int) -> list[dict[str, Any]]:
    return [
        {
            "name": names.stream,
            "subjects": [f"{names.subjects.root}.work.*"],
            "retention": "workqueue",
            "storage": "file",
            "num_replicas": replicas,
            "duplicate_window": 120 * NS,
            "max_msg_size": max_msg_bytes,
        },
        {
            "name": names.dlq_stream,
            "subjects": [f"{names.subjects.root}.workdlq.*"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": replicas,
            "max_age": 14 * 24 * 3600 * NS,
            "max_msg_size": max_msg_bytes + 16 * 1024,
        },
    ]


@dataclass(frozen=True, slots=True)
class RawJob:
    msg: Msg
    seq: int
    deliveries: int

    @property
    def data(self) -> bytes:
        return self.msg.data

    async def ack(self) -> None:
        await self.msg.ack()

    async def nak(self, delay_s: float) -> None:
        await self.msg.nak(delay=delay_s)

    async def in_progress(self) -> None:
        await self.msg.in_progress()

    async def term(self) -> None:
        await self.msg.term()


class WorkStore:
    """One connection's access to the work queues."""

    def __init__(self, nc: NATS, subjects: Subjects, *, timeout_s: float, replicas: int = 1) -> None:
        self.nc = nc
        self.names = WorkNames(subjects)
        self.timeout_s = timeout_s
        self.replicas = replicas

    async def ensure(self, *, max_msg_bytes: int) -> None:
        for cfg in work_stream_configs(self.names, replicas=self.replicas, max_msg_bytes=max_msg_bytes):
            await ensure_stream(self.nc, cfg, self.timeout_s)

    async def put(self, queue: str, data: bytes, msg_id: str | None) -> int:
        headers = {H_MSG_ID: msg_id} if msg_id else {}
        ack = await js_publish(
            self.nc, self.names.subject(validate_token(queue, "queue")), data, headers, self.timeout_s
        )
        return int(ack["seq"])

    async def ensure_consumer(self, queue: str, *, visibility_s: float, max_ack_pending: int) -> None:
        name = self.names.consumer(validate_token(queue, "queue"))
        cfg = {
            "durable_name": name,
            "filter_subject": self.names.subject(queue),
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "ack_wait": int(visibility_s * NS),  # the visibility timeout: unacknowledged, it comes back
            "max_deliver": -1,  # attempts are counted by the workers, which dead-letter the job
            "max_ack_pending": max_ack_pending,
            "max_waiting": 512,
        }
        payload = {"stream_name": self.names.stream, "config": cfg, "action": ""}
        try:
            await js_api(self.nc, f"$JS.API.CONSUMER.CREATE.{self.names.stream}.{name}", payload, self.timeout_s)
        except JSApiError as exc:  # made by another worker with other settings: use it as it is
            if "already exists" not in exc.description and "already in use" not in exc.description:
                raise

    async def puller(self, queue: str) -> Any:
        js = self.nc.jetstream(timeout=self.timeout_s)
        return await js.pull_subscribe_bind(durable=self.names.consumer(queue), stream=self.names.stream)

    @staticmethod
    async def fetch(sub: Any, batch: int, expires_s: float) -> list[RawJob]:
        try:
            msgs = await sub.fetch(batch, timeout=expires_s)
        except (FetchTimeoutError, NatsTimeout, TimeoutError):
            return []
        return [RawJob(m, int(m.metadata.sequence.stream), int(m.metadata.num_delivered)) for m in msgs]

    @staticmethod
    async def close(sub: Any) -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def dead_letter(self, queue: str, job: RawJob, body: bytes) -> None:
        await js_publish(self.nc, self.names.dlq_subject(queue), body, {H_MSG_ID: f"wdl:{job.seq}"}, self.timeout_s)
