"""Durable work queues for plain workers (ADR 0050): put jobs, pull them from any number of
processes, with retries, a visibility timeout and dead letters.

>>> q = client.work_queue("emails", visibility_s=30, max_attempts=5)  # doctest: +SKIP
>>> await q.put({"to": "a@example.com"})  # doctest: +SKIP
>>> await q.process(send_email, concurrency=4)  # in each worker process  # doctest: +SKIP
>>> await run_stages([(client.work_queue("fetch"), fetch), (client.work_queue("parse"), parse)])  # doctest: +SKIP

A job is taken by one worker at a time; unacknowledged for ``visibility_s`` (the worker died
or hangs), it is handed to another. ``process`` acknowledges a job whose handler returned,
retries one whose handler raised (after the retry policy's delay), and after ``max_attempts``
deliveries moves it to the dead letters (``<ROOT>_WORKDLQ``, subject ``<root>.workdlq.<queue>``)
once, with the error.

A pipeline (``run_stages``) chains queues: each stage's handler result is put on the next
stage's queue before its job is acknowledged, under an id made of the job's sequence, so a
worker that dies between the two puts it once (within the 120 s duplicate window).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson

from .._core.clock import Clock
from .._core.errors import InternalError, JetAgentsError, MalformedCommand
from .._core.ids import validate_token
from .._core.retry import RetryPolicy
from .._core.wire import encode_dead_letter
from .._nats.workqueue import RawJob, WorkStore
from .pubsub import encode_data

__all__ = ["Job", "WorkQueue", "run_stages"]

PULL_EXPIRES_S = 1.0


class Job:
    """One delivery of a job: ``data`` (its JSON), ``attempt`` (1 on the first delivery)."""

    __slots__ = ("attempt", "data", "raw", "seq")

    def __init__(self, raw: RawJob, data: Any) -> None:
        self.raw = raw
        self.data = data
        self.seq = raw.seq
        self.attempt = raw.deliveries

    async def ack(self) -> None:
        """Done: the job leaves the queue."""
        await self.raw.ack()

    async def retry(self, delay_s: float = 0.0) -> None:
        """Hand it back, to be delivered again after ``delay_s``."""
        await self.raw.nak(delay_s)

    async def extend(self) -> None:
        """Still working: the visibility timeout starts again."""
        await self.raw.in_progress()


class WorkQueue:
    """A named queue; any number of workers (in any processes) share its consumer."""

    def __init__(
        self,
        store: WorkStore,
        queue: str,
        clock: Clock,
        *,
        visibility_s: float,
        max_attempts: int,
        retry: RetryPolicy,
        max_in_flight: int,
    ) -> None:
        self.store = store
        self.queue = validate_token(queue, "queue")
        self.clock = clock
        self.visibility_s = visibility_s
        self.max_attempts = max_attempts
        self.retry = retry
        self.max_in_flight = max_in_flight
        self._ready = False

    async def put(self, data: Any, *, msg_id: str | None = None) -> int:
        """Queue a job (JSON); its sequence. ``msg_id`` makes a re-put within 120 s a no-op."""
        return await self.store.put(self.queue, encode_data(data), msg_id)

    async def _consumer(self) -> None:
        if not self._ready:
            await self.store.ensure_consumer(
                self.queue, visibility_s=self.visibility_s, max_ack_pending=self.max_in_flight
            )
            self._ready = True

    async def jobs(self, *, batch: int = 1) -> AsyncIterator[Job]:
        """Jobs as they come (acknowledge, retry or extend each). Jobs that are not JSON, or
        were delivered more than ``max_attempts`` times (their workers kept dying), are
        dead-lettered here and never yielded."""
        await self._consumer()
        sub = await self.store.puller(self.queue)
        try:
            while True:
                for job in await self._take(sub, batch):
                    yield job
        finally:
            await self.store.close(sub)

    async def _take(self, sub: Any, batch: int) -> list[Job]:
        out = []
        for raw in await self.store.fetch(sub, batch, PULL_EXPIRES_S):
            try:
                data = orjson.loads(raw.data)
            except orjson.JSONDecodeError:
                await self._dead_letter(raw, MalformedCommand("a job must be JSON"))
                continue
            if raw.deliveries > self.max_attempts:
                err = InternalError(f"delivered {raw.deliveries} times: its workers did not finish it")
                await self._dead_letter(raw, err)
                continue
            out.append(Job(raw, data))
        return out

    async def process(
        self,
        handler: Callable[[Any], Any],
        *,
        concurrency: int = 1,
        stop: asyncio.Event | None = None,
        into: WorkQueue | None = None,
    ) -> None:
        """Run ``handler(data)`` on jobs, ``concurrency`` at a time, until ``stop`` is set (or
        cancelled). A handler that raises is retried with backoff; its last attempt's error
        dead-letters the job. With ``into``, the handler's result is put on that queue."""
        await self._consumer()
        sub = await self.store.puller(self.queue)
        running: set[asyncio.Task[None]] = set()
        try:
            while stop is None or not stop.is_set():
                free = concurrency - len(running)
                if free <= 0:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for job in await self._take(sub, free):
                    task = asyncio.create_task(self._handle(job, handler, into))
                    running.add(task)
                    task.add_done_callback(running.discard)
        except asyncio.CancelledError:
            for task in running:  # their jobs come back after the visibility timeout
                task.cancel()
            raise
        finally:
            if running:
                await asyncio.wait(running)
            await self.store.close(sub)

    async def _handle(self, job: Job, handler: Callable[[Any], Any], into: WorkQueue | None) -> None:
        ticker = asyncio.create_task(self._keep_visible(job))
        try:
            result = handler(job.data)
            if inspect.isawaitable(result):
                result = await result
            if into is not None:  # a failed put is the job's failure: retried like the handler
                await into.put(result, msg_id=f"{self.queue}.{job.seq}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the job's failure, recorded below
            if job.attempt >= self.max_attempts:
                err = exc if isinstance(exc, JetAgentsError) else InternalError(f"{type(exc).__name__}: {exc}")
                await self._dead_letter(job.raw, err)
            else:
                await job.retry(self.retry.delay(job.attempt - 1))
            return
        finally:
            ticker.cancel()
        await job.ack()

    async def _keep_visible(self, job: Job) -> None:
        while True:  # a long job stays ours while its handler runs
            await asyncio.sleep(max(0.2, self.visibility_s / 3))
            with contextlib.suppress(Exception):
                await job.extend()

    async def _dead_letter(self, raw: RawJob, error: JetAgentsError) -> None:
        body = encode_dead_letter(
            error=error,
            subject=self.store.names.subject(self.queue),
            headers={},
            payload=raw.data,
            host="",
            ts_ms=self.clock.wall_ms(),
            stream_seq=raw.seq,
            deliveries=raw.deliveries,
        )
        await self.store.dead_letter(self.queue, raw, body)
        await raw.term()


async def run_stages(
    stages: Sequence[tuple[WorkQueue, Callable[[Any], Any]]],
    *,
    concurrency: int = 1,
    stop: asyncio.Event | None = None,
) -> None:
    """Work a pipeline until ``stop`` is set: each ``(queue, handler)`` stage processes its
    queue and puts the handler's result on the next stage's queue (the last stage's result is
    dropped). Each stage keeps its own queue's retries and dead letters."""
    async with asyncio.TaskGroup() as tg:
        for i, (queue, handler) in enumerate(stages):
            into = stages[i + 1][0] if i + 1 < len(stages) else None
            tg.create_task(queue.process(handler, concurrency=concurrency, stop=stop, into=into))
