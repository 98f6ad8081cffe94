"""Pub-sub on JetStream (ADR 0049): the topic stream, the subscriptions bucket, one
consumer per subscribed pattern, and the publishes that turn a topic message into a
command for each subscriber.

* stream ``<ROOT>_PUB`` holds ``<root>.pub.<topic>`` (what publishers send) and
  ``<root>.pubctl.<pattern key>`` (a subscription changed: the key to read again);
* KV ``<root>_subs`` holds one ``Subscription`` per ``<pattern key>.<type>.<id>``;
* consumer ``s<pattern key>`` filters the pattern's topics and its control subject, with
  one message in flight (``max_ack_pending`` 1): the fan-out handles message n+1 only once
  message n reached every subscriber, whoever runs it and however often it restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import FetchTimeoutError

from .._core.errors import Unavailable
from .._core.pubsub import Message, Subscription, pattern_key, validate_pattern, validate_topic
from .._core.wire import H_MSG_ID, Subjects
from .api import ERR_CONSUMER_NOT_FOUND, NS, JSApiError, ensure_stream, js_api, js_publish
from .kv import JetStreamStore, cluster_bucket_config

PATTERN_META: Final = "jetagents_pattern"
CONTROL_HEADER: Final = "Agt-Sub-Key"


@dataclass(frozen=True, slots=True)
class PubSubNames:
    """Names of pub-sub's JetStream objects under a subject root."""

    subjects: Subjects

    @property
    def root(self) -> str:
        return self.subjects.root

    @property
    def stream(self) -> str:
        return self.subjects.stream("PUB")

    @property
    def subs_bucket(self) -> str:
        return self.subjects.bucket("subs")

    def topic_subject(self, topic: str) -> str:
        return f"{self.root}.pub.{topic}"

    def topic_of(self, subject: str) -> str:
        return subject[len(self.root) + 5 :]

    def control_subject(self, pkey: str) -> str:
        return f"{self.root}.pubctl.{pkey}"

    @staticmethod
    def consumer_name(pkey: str) -> str:
        return f"s{pkey}"


def pub_stream_config(names: PubSubNames, *, replicas: int, max_msg_bytes: int, max_age_s: float) -> dict[str, Any]:
    return {
        "name": names.stream,
        "subjects": [f"{names.root}.pub.>", f"{names.root}.pubctl.*"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "duplicate_window": 120 * NS,
        "max_msg_size": max_msg_bytes,
        "max_age": int(max_age_s * NS),
        "discard": "old",
        "allow_direct": True,
    }


def pattern_consumer_config(names: PubSubNames, pattern: str, *, ack_wait_s: float) -> dict[str, Any]:
    pkey = pattern_key(pattern)
    return {
        "durable_name": names.consumer_name(pkey),
        "filter_subjects": [names.topic_subject(pattern), names.control_subject(pkey)],
        "ack_policy": "explicit",
        # only what is published from now on: a subscription sees messages published after it
        "deliver_policy": "new",
        "ack_wait": int(ack_wait_s * NS),
        "max_deliver": -1,
        "max_ack_pending": 1,  # message n+1 waits for n: the order per topic, whoever pulls
        "max_waiting": 16,
        "metadata": {PATTERN_META: pattern},
    }


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message of a pattern consumer."""

    msg: Msg
    subject: str
    seq: int
    ts_ms: int
    control_key: str | None  # a subscription changed: read this key again


class PatternPuller:
    """Pulls one pattern consumer, one message at a time."""

    def __init__(self, names: PubSubNames, sub: Any) -> None:
        self._names = names
        self._sub = sub

    async def next(self, expires_s: float) -> Delivered | None:
        try:
            msgs = await self._sub.fetch(1, timeout=expires_s)
        except (FetchTimeoutError, NatsTimeout, TimeoutError):
            return None
        msg = msgs[0]
        meta = msg.metadata
        ts_ms = int(meta.timestamp.timestamp() * 1000) if meta.timestamp else 0
        control = None
        if msg.subject.startswith(f"{self._names.root}.pubctl."):
            control = (msg.headers or {}).get(CONTROL_HEADER, "")
        return Delivered(msg, msg.subject, int(meta.sequence.stream), ts_ms, control)

    @staticmethod
    async def ack(d: Delivered) -> None:
        await d.msg.ack()

    @staticmethod
    async def progress(d: Delivered) -> None:
        with contextlib.suppress(Exception):
            await d.msg.in_progress()

    @staticmethod
    async def term(d: Delivered) -> None:
        await d.msg.term()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


class PubSubStore:
    """The pub-sub objects of one deployment over one connection."""

    def __init__(self, nc: NATS, subjects: Subjects, *, timeout_s: float = 5.0, replicas: int = 1) -> None:
        self.nc = nc
        self.names = PubSubNames(subjects)
        self.timeout_s = timeout_s
        self.replicas = replicas
        self.subs = JetStreamStore(nc, self.names.subs_bucket, replicas=replicas, timeout_s=timeout_s)
        self._consumers: set[str] = set()  # patterns whose consumer this process made sure of

    async def ensure(self, *, max_msg_bytes: int, max_age_s: float) -> None:
        """Create the topic stream and the subscriptions bucket if missing."""
        cfg = pub_stream_config(self.names, replicas=self.replicas, max_msg_bytes=max_msg_bytes, max_age_s=max_age_s)
        await ensure_stream(self.nc, cfg, self.timeout_s)
        await ensure_stream(self.nc, cluster_bucket_config(self.names.subs_bucket, self.replicas), self.timeout_s)

    # -- publishing ----------------------------------------------------------------------
    async def publish(self, topic: str, data: bytes, msg_id: str | None = None) -> int:
        """Store ``data`` on ``topic``; its sequence in the topic stream. ``msg_id`` makes a
        re-publish within the duplicate window a no-op (the first copy's sequence)."""
        headers = {H_MSG_ID: msg_id} if msg_id else {}
        ack = await js_publish(self.nc, self.names.topic_subject(validate_topic(topic)), data, headers, self.timeout_s)
        return int(ack["seq"])

    # -- subscriptions ---------------------------------------------------------------------
    async def ensure_consumer(self, pattern: str, *, ack_wait_s: float = 30.0) -> str:
        """The pattern's consumer (created once; an existing one is left as it is)."""
        pkey = pattern_key(validate_pattern(pattern))
        name = self.names.consumer_name(pkey)
        if pattern not in self._consumers:
            cfg = pattern_consumer_config(self.names, pattern, ack_wait_s=ack_wait_s)
            payload = {"stream_name": self.names.stream, "config": cfg, "action": ""}
            try:
                await js_api(self.nc, f"$JS.API.CONSUMER.CREATE.{self.names.stream}.{name}", payload, self.timeout_s)
            except JSApiError as exc:
                if "already in use" not in exc.description and "already exists" not in exc.description:
                    raise
            self._consumers.add(pattern)
        return name

    async def save(self, sub: Subscription) -> None:
        """Store ``sub`` (replacing an earlier one of the same agent and pattern), then tell
        the pattern's consumer: messages published after this returns reach the agent."""
        await self.ensure_consumer(sub.pattern)
        await self.subs.put(sub.key, sub.model_dump(mode="json"))
        await self._signal(sub)

    async def add(self, sub: Subscription) -> bool:
        """Store ``sub`` unless the agent already has a subscription to the pattern; True if new."""
        await self.ensure_consumer(sub.pattern)
        from .._core.kv import CasConflict

        try:
            await self.subs.create(sub.key, sub.model_dump(mode="json"))
        except CasConflict:
            return False
        await self._signal(sub)
        return True

    async def remove(self, sub: Subscription) -> None:
        await self.subs.remove(sub.key)
        await self._signal(sub)

    async def _signal(self, sub: Subscription) -> None:
        pkey = pattern_key(sub.pattern)
        await js_publish(self.nc, self.names.control_subject(pkey), b"", {CONTROL_HEADER: sub.key}, self.timeout_s)

    async def get(self, key: str) -> Subscription | None:
        entry = await self.subs.get(key)
        return Subscription.model_validate(entry.value) if entry is not None else None

    async def load(self, pattern: str) -> list[Subscription]:
        """Every subscription to ``pattern`` (a watch's initial values: no page limit)."""
        js = self.nc.jetstream(timeout=self.timeout_s)
        kv = await js.key_value(self.names.subs_bucket)
        watcher = await kv.watch(f"{pattern_key(pattern)}.>", ignore_deletes=True)
        out: list[Subscription] = []
        try:
            while True:
                entry = await watcher.updates(timeout=self.timeout_s)  # type: ignore[no-untyped-call]
                if entry is None:
                    return out
                if entry.value:
                    with contextlib.suppress(ValueError):
                        out.append(Subscription.model_validate_json(entry.value))
        except NatsTimeout:
            raise Unavailable(f"reading the subscriptions of {pattern!r} timed out") from None
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def patterns(self) -> list[str]:
        """The patterns that have a consumer (anyone ever subscribed to them)."""
        out: list[str] = []
        offset = 0
        while True:
            resp = await js_api(
                self.nc, f"$JS.API.CONSUMER.LIST.{self.names.stream}", {"offset": offset}, self.timeout_s
            )
            infos = resp.get("consumers") or []
            for info in infos:
                pattern = ((info.get("config") or {}).get("metadata") or {}).get(PATTERN_META)
                if pattern:
                    with contextlib.suppress(ValueError):
                        out.append(validate_pattern(pattern))
            offset += len(infos)
            if not infos or offset >= int(resp.get("total", 0)):
                return out

    async def puller(self, pattern: str) -> PatternPuller:
        name = self.names.consumer_name(pattern_key(pattern))
        js = self.nc.jetstream(timeout=self.timeout_s)
        try:
            sub = await js.pull_subscribe_bind(durable=name, stream=self.names.stream)
        except JSApiError as exc:  # pragma: no cover - nats-py raises its own types
            if exc.err_code == ERR_CONSUMER_NOT_FOUND:
                raise Unavailable(f"consumer {name} is gone") from None
            raise
        return PatternPuller(self.names, sub)

    async def deliver(self, subject: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """One command to a subscriber (a JetStream publish; its PubAck)."""
        return await js_publish(self.nc, subject, body, headers, self.timeout_s)


class TopicStream:
    """An ephemeral subscription of a plain client: core NATS on the topic subjects, so it
    sees what is published while it listens and nothing is kept for it."""

    def __init__(self, nc: NATS, names: PubSubNames, pattern: str, max_pending: int) -> None:
        self._nc = nc
        self._names = names
        self._subject = names.topic_subject(validate_pattern(pattern))
        self._max_pending = max_pending
        self._sub: Any = None

    async def start(self) -> TopicStream:
        self._sub = await self._nc.subscribe(self._subject, pending_msgs_limit=self._max_pending)
        await self._nc.flush()  # the server knows the interest before start() returns
        return self

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def __aenter__(self) -> TopicStream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def __aiter__(self) -> AsyncIterator[Message]:
        if self._sub is None:
            await self.start()
        try:
            while True:
                msg = await self._sub.next_msg(timeout=None)
                try:
                    data = orjson.loads(msg.data) if msg.data else None
                except orjson.JSONDecodeError:
                    continue  # not JSON: not a message of the contract
                topic = self._names.topic_of(msg.subject)
                yield Message(topic=topic, data=data)
        except asyncio.CancelledError:
            raise
        finally:
            await self.close()
