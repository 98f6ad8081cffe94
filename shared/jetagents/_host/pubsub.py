"""Pub-sub on the host (ADR 0049): the fan-out that turns each topic message into one
durable command per subscribed agent, and the subscriptions agent classes declare.

The cluster leader (a lone host, or host 0 of a static set) runs one runner per subscribed
pattern. A runner pulls its pattern's consumer one message at a time; for a topic message
it publishes ``{"action": handler, "params": {"msg": ...}}`` to ``<root>.cmd.<type>.<id>`` of
every subscriber, with the id ``pub:<seq>:<type>.<id>`` (``Nats-Msg-Id`` and command id for
exactly-once subscribers), and acknowledges the message only when every PubAck came. A
crash anywhere re-sends the same ids: the command stream and each agent's record drop the
copies. The subscriber list comes from the subscriptions bucket when the runner starts, and
is updated in stream order by the control messages ``subscribe``/``unsubscribe`` publish
after writing the bucket, so a subscription covers exactly what is published after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from .._core.agent import AgentSpec
from .._core.clock import Clock
from .._core.errors import JetAgentsError, MalformedCommand, Unavailable
from .._core.ids import AgentId
from .._core.pubsub import (
    Subscription,
    command_body,
    declared_subscriptions,
    delivery_id,
    pattern_partition,
    validate_topic,
)
from .._core.retry import RetryPolicy
from .._core.wire import H_COMMAND_ID, H_MSG_ID, Delivery, Subjects, encode_dead_letter
from .._nats.api import ERR_DUPLICATE_IN_PROCESS, JSApiError
from .._nats.coordination import CoordStore, coord_bucket_name
from .._nats.pubsub import Delivered, PatternPuller, PubSubStore
from .._nats.workqueue import WorkStore
from .._obs.metrics import Metrics
from .supervisor import Supervisor

if TYPE_CHECKING:
    from .host import Host

GROUP = "pubsub"
SCAN_S = 1.0  # how often the leader looks for newly subscribed patterns
PULL_EXPIRES_S = 1.0
IN_FLIGHT = 256  # commands of one message being published at once
DECLARED_MEMORY = 100_000  # agents whose declared subscriptions this host made sure of
TOPIC_MAX_AGE_S = 7 * 24 * 3600.0
_RETRY = RetryPolicy(attempts=1_000_000, base_s=0.05, max_s=2.0)


class HostPubSub:
    """The host's pub-sub part: declared subscriptions on activation, the leader's fan-out."""

    def __init__(
        self,
        store: PubSubStore,
        subjects: Subjects,
        supervisor: Supervisor,
        metrics: Metrics,
        clock: Clock,
        log: Any,
        *,
        host_id: str,
        ack_wait_s: float,
        max_payload_bytes: int,
        runs: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.subjects = subjects
        self.supervisor = supervisor
        self.metrics = metrics
        self.clock = clock
        self.log = log
        self.host_id = host_id
        self.ack_wait_s = ack_wait_s
        self.max_payload_bytes = max_payload_bytes
        self.runs = runs
        self._running: set[str] = set()
        self._declared: dict[type, list[tuple[str, str, Delivery]]] = {}
        self._made_sure: OrderedDict[str, None] = OrderedDict()
        self._ready = asyncio.Event()  # the topic stream and the buckets exist

    async def start(self) -> None:
        """Create pub-sub's objects in the background (host start does not wait: a first
        host of an R3 cluster spends ~0.5 s on them), then lead the fan-out when leader."""
        self.supervisor.spawn(GROUP, self._prepare())

    async def _prepare(self) -> None:
        nc, replicas, timeout_s = self.store.nc, self.store.replicas, self.store.timeout_s
        coord = CoordStore(nc, coord_bucket_name(self.subjects), replicas=replicas, timeout_s=timeout_s)
        work = WorkStore(nc, self.subjects, timeout_s=timeout_s, replicas=replicas)
        while True:
            try:
                await asyncio.gather(
                    # the wrapped command must fit the command body limit: room for the envelope
                    self.store.ensure(
                        max_msg_bytes=max(1024, self.max_payload_bytes - 1024), max_age_s=TOPIC_MAX_AGE_S
                    ),
                    # clients may use these, not create them (ops/nats/accounts.conf)
                    coord.ensure(),
                    work.ensure(max_msg_bytes=self.max_payload_bytes),
                )
                break
            except JetAgentsError as exc:
                self.log.warning("pubsub_objects_not_created", error=str(exc))
                await self.clock.sleep(_RETRY.max_s)
        self._ready.set()
        await self._lead()

    # -- declared subscriptions -------------------------------------------------------------
    async def on_activate(self, aid: AgentId, spec: AgentSpec) -> None:
        """Subscribe an agent to its class's ``@subscribe`` patterns (once per agent: a
        subscription that exists is left as it is, ``unsubscribe`` at run time included)."""
        declared = self._declared.get(spec.cls)
        if declared is None:
            declared = self._declared[spec.cls] = declared_subscriptions(spec.cls)
        if not declared or aid.key in self._made_sure:
            return
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(self.store.timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                raise Unavailable("the topic stream is not created yet") from None
        for pattern, handler, delivery in declared:
            sub = Subscription(pattern=pattern, type=aid.type, id=aid.id, action=handler, delivery=delivery)
            await self.store.add(sub.model_copy(update={"ts_ms": self.clock.wall_ms()}))
        self._made_sure[aid.key] = None
        if len(self._made_sure) > DECLARED_MEMORY:
            self._made_sure.popitem(last=False)

    # -- the leader's fan-out ---------------------------------------------------------------
    async def _lead(self) -> None:
        while True:
            try:
                for pattern in await self.store.patterns():
                    if pattern not in self._running and self.runs(pattern):
                        self._running.add(pattern)
                        self.supervisor.spawn(GROUP, self._runner(pattern), key=pattern)
            except JetAgentsError as exc:
                self.log.debug("pubsub_scan_failed", error=str(exc))
            await self.clock.sleep(SCAN_S)

    async def _runner(self, pattern: str) -> None:
        try:
            while self.runs(pattern):
                try:
                    await self._serve(pattern)
                except (JetAgentsError, OSError, ExceptionGroup) as exc:
                    self.log.warning("pubsub_runner_failed", pattern=pattern, error=repr(exc))
                    await self.clock.sleep(_RETRY.max_s)
        finally:
            self._running.discard(pattern)

    async def _serve(self, pattern: str) -> None:
        puller = await self.store.puller(pattern)
        try:
            subs: dict[str, Subscription] = {}
            for sub in await self.store.load(pattern):
                self._keep(subs, sub)
            self.log.info("pubsub_runner_started", pattern=pattern, subscribers=len(subs))
            while self.runs(pattern):
                d = await puller.next(PULL_EXPIRES_S)
                if d is None:
                    continue
                try:
                    if d.control_key is not None:
                        await self._refresh(subs, d.control_key)
                        await puller.ack(d)
                    else:
                        await self._fan_out(puller, d, subs)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(d.msg.nak())  # the next runner takes it at once
                    raise
        finally:
            await puller.close()

    def _keep(self, subs: dict[str, Subscription], sub: Subscription) -> None:
        try:
            subs[sub.key] = sub.checked()
        except ValueError as exc:  # the bucket is writable by hosts only, but never trust a subject
            self.log.warning("pubsub_subscription_invalid", key=sub.key, error=str(exc))

    async def _refresh(self, subs: dict[str, Subscription], key: str) -> None:
        if not key or len(key) > 300:
            return
        sub = await self.store.get(key)
        subs.pop(key, None)
        if sub is not None and sub.key == key:
            self._keep(subs, sub)

    async def _fan_out(self, puller: PatternPuller, d: Delivered, subs: dict[str, Subscription]) -> None:
        try:
            topic = validate_topic(self.store.names.topic_of(d.subject))
            orjson.loads(d.msg.data)
        except (ValueError, orjson.JSONDecodeError) as exc:
            await self._dead_letter(d, f"a topic message must be JSON on a valid topic: {exc}")
            await puller.term(d)
            return
        targets = sorted(subs.values(), key=lambda s: (s.type, s.id))
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(sub: Subscription) -> None:
            async with sem:
                await self._deliver(sub, topic, d)

        progress = self.supervisor.spawn(GROUP, self._keep_alive(puller, d))
        try:
            async with asyncio.TaskGroup() as tg:
                for sub in targets:
                    tg.create_task(one(sub))
        finally:
            progress.cancel()
        await puller.ack(d)
        self.metrics.inc("pubsub_messages")

    async def _keep_alive(self, puller: PatternPuller, d: Delivered) -> None:
        while True:
            await self.clock.sleep(max(0.2, self.ack_wait_s / 3))
            await puller.progress(d)

    async def _deliver(self, sub: Subscription, topic: str, d: Delivered) -> None:
        body = command_body(sub.action, topic, d.msg.data, d.seq, d.ts_ms)
        headers: dict[str, str] = {}
        if sub.delivery == Delivery.EXACTLY_ONCE:
            headers[H_MSG_ID] = headers[H_COMMAND_ID] = delivery_id(d.seq, sub.type, sub.id)
        subject = self.subjects.cmd(sub.type, sub.id)
        attempt = 0
        while True:
            try:
                await self.store.deliver(subject, body, headers)
                self.metrics.inc("pubsub_deliveries")
                return
            except Unavailable:
                pass  # no PubAck: the same id again is safe
            except JetAgentsError as exc:
                if not (isinstance(exc, JSApiError) and exc.err_code == ERR_DUPLICATE_IN_PROCESS):
                    # refused for good (too large for the command stream, ...): the subscriber
                    # misses this one message; logged and counted, never retried in a loop
                    self.log.error("pubsub_delivery_refused", subscriber=sub.key, seq=d.seq, error=str(exc))
                    self.metrics.inc("pubsub_refused")
                    return
            await self.clock.sleep(_RETRY.delay(min(attempt, 8)))
            attempt += 1

    async def _dead_letter(self, d: Delivered, why: str) -> None:
        err = MalformedCommand(why)
        body = encode_dead_letter(
            error=err,
            subject=d.subject,
            headers=dict(d.msg.headers or {}),
            payload=d.msg.data,
            host=self.host_id,
            ts_ms=self.clock.wall_ms(),
            stream_seq=d.seq,
        )
        subject = self.subjects.dlq("pubsub", "topics")
        with contextlib.suppress(JetAgentsError):
            await self.store.deliver(subject, body, {H_MSG_ID: f"pubdl:{d.seq}"})
        self.metrics.inc("pubsub_dead_letters")
        self.log.warning("pubsub_dead_letter", subject=d.subject, seq=d.seq, error=why)


async def start_pubsub(host: Host) -> HostPubSub:
    """The host's pub-sub, started: the host runs the fan-out of the patterns whose partition
    (``pattern_partition``) it serves, and the catalog subscribes agents on activation."""
    s = host.settings

    def runs(pattern: str) -> bool:
        if host.supervisor.stopping:
            return False
        return pattern_partition(pattern, s.partitions) in host.partitions.owned_set

    store = PubSubStore(host.nc, host.subjects, timeout_s=s.op_timeout_s, replicas=s.replicas)
    part = HostPubSub(
        store,
        host.subjects,
        host.supervisor,
        host.metrics,
        host.clock,
        structlog.get_logger("jetagents.pubsub").bind(host=s.host_id),
        host_id=s.host_id,
        ack_wait_s=s.ack_wait_s,
        max_payload_bytes=s.max_payload_bytes,
        runs=runs,
    )
    await part.start()
    host.catalog.on_activate = part.on_activate
    return part
