"""The Python client: location-transparent agent handles, futures, retries, typed errors.

>>> async def main():  # doctest: +SKIP
...     async with await Client.connect("nats://127.0.0.1:4222") as client:
...         counter = client.proxy(Counter, "c1")
...         value = await counter.increment(by=2)          # exactly-once by default
...         fut = client.agent("counter", "c1").request_async("get")
...         print(value, await fut)

The parts: ``command.py`` builds one :class:`OutboundCommand` per send (pure),
``sender.py`` sends it (retries, breaker, span), ``ref.py`` holds the handles, ``reply.py``
reads replies; every NATS call goes through ``jetagents._nats.client_transport``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
from opentelemetry import metrics, trace

from .._core.agent import Agent, spec_of
from .._core.autostep import auto_step
from .._core.callchain import Frame, current_frame
from .._core.clock import SystemClock
from .._core.errors import AgentTimeout, JetAgentsError, Unavailable
from .._core.ids import AgentId, partition_of
from .._core.journal import effect_key
from .._core.outstream import ctoken
from .._core.retry import RetryPolicy
from .._core.wire import Delivery, Priority, Subjects
from .._nats.api import Topology, ensure_topology
from .._nats.client_transport import ClientTransport, NatsConnection
from .._obs.telemetry import ClientTelemetry
from .._settings import ClientSettings
from .admin import Admin
from .command import OutboundCommand, SendOptions, payload_limit
from .ref import AgentRef, Proxy
from .reply import Reply, decode_reply, no_responders, not_applied
from .sender import Sender
from .stream import AgentStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from .._core.pubsub import Subscription
    from .._nats.pubsub import TopicStream
    from .._state.store import SharedState
    from .coordination import Coordination, Lease
    from .events import EventTail
    from .projection import Projections
    from .pubsub import ClientPubSub
    from .workqueue import WorkQueue

__all__ = ["AgentRef", "AgentStream", "Client", "Reply"]

A = TypeVar("A", bound=Agent[Any])


class Client:
    """Talks to agents wherever they run. Create with :meth:`connect`.

    ``tracer_provider``/``meter_provider``: OpenTelemetry providers to use instead of the
    global ones (without an SDK provider no span or measurement is made).
    """

    def __init__(
        self,
        nc: NatsConnection,
        settings: ClientSettings | None = None,
        *,
        owns_connection: bool = True,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.nc = nc
        self.settings = settings or ClientSettings()
        self.subjects = Subjects(self.settings.subject_root)
        self.retry = RetryPolicy(self.settings.retry_attempts, self.settings.retry_base_s, self.settings.retry_max_s)
        self._owns = owns_connection
        self._transport = ClientTransport(nc)  # every NATS call; one reply inbox for all of them
        self._clock = SystemClock()
        self._shared: dict[str, Any] = {}
        self._pubsub_part: ClientPubSub | None = None
        self._coord_part: Coordination | None = None
        self._sender = Sender(
            self._transport, self.settings, self.retry, self._clock, ClientTelemetry(tracer_provider, meter_provider)
        )

    @classmethod
    async def connect(
        cls,
        nats_url: str | None = None,
        *,
        settings: ClientSettings | None = None,
        name: str = "jetagents-client",
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> Client:
        settings = settings or ClientSettings()
        if nats_url:
            settings = settings.model_copy(update={"nats_url": nats_url})
        nc = await ClientTransport.connect(
            settings.nats_url,
            name=name,
            connect_timeout_s=settings.connect_timeout_s,
            inbox_prefix=settings.inbox_prefix,
        )
        client = cls(nc, settings, tracer_provider=tracer_provider, meter_provider=meter_provider)
        await client._start()
        return client

    async def _start(self) -> None:
        await self._transport.start()

    async def close(self) -> None:
        for st in self._shared.values():
            await st.close()
        self._shared.clear()
        await self._transport.close(owns_connection=self._owns)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handles ---------------------------------------------------------------------------
    def agent(self, agent_type: str, agent_id: str) -> AgentRef:
        """A handle to one agent; no network call, no spawn needed."""
        return AgentRef(self, AgentId(agent_type, agent_id))

    def proxy(
        self,
        agent_cls: type[A],
        agent_id: str,
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        timeout: float | None = None,
        priority: Priority | str = Priority.NORMAL,
    ) -> A:
        """A typed stand-in for the agent: ``await proxy.increment(by=2)`` type-checks
        against the agent class and returns the action's declared result type.
        Only actions may be called on it."""
        spec = spec_of(agent_cls)
        ref = AgentRef(self, AgentId(spec.type_name, agent_id))
        return cast(A, Proxy(ref, spec, Delivery(delivery), timeout, Priority(priority)))

    def shared(self, name: str = "default", **options: Any) -> SharedState:
        """Shared state (``strong``, ``eventual``, ``session``, ``crdt``) over this connection.

        One instance (one replica) per ``name``; ``options`` are :class:`StateOptions` fields
        (``replicas``, ``partition``, ``resolver``, ...) used when it is first made.

        >>> await client.shared().strong.increment("hits")  # doctest: +SKIP
        """
        from .._state.options import StateOptions  # local import: state is optional
        from .._state.store import SharedState

        st = self._shared.get(name)
        if st is None:
            resolver = options.pop("resolver", None)
            opts = StateOptions(**options)
            st = self._shared[name] = SharedState(self.nc, opts, subjects=self.subjects, resolver=resolver)
        return cast("SharedState", st)

    async def ensure_topology(self, partitions: int | None = None, replicas: int = 1) -> None:
        """Create the streams and buckets if missing (hosts do this on start too)."""
        topo = Topology(
            self.subjects,
            partitions=partitions or self.settings.partitions,
            replicas=replicas,
            max_payload_bytes=self.settings.max_payload_bytes,
        )
        await ensure_topology(self.nc, topo, self.settings.request_timeout_s)

    async def spawn(self, agent_type: str, agent_id: str, metadata: dict[str, Any] | None = None) -> AgentRef:
        """Register an agent (with optional metadata) for types that require it."""
        aid = AgentId(agent_type, agent_id)
        await self._transport.kv_put(Topology(self.subjects).meta_bucket, aid.key, orjson.dumps(metadata or {}))
        return AgentRef(self, aid)

    async def spawn_on(
        self, agent_type: str, agent_id: str, host: str, metadata: dict[str, Any] | None = None
    ) -> AgentRef:
        """Spawn an agent with a placement hint: it runs on ``host`` (a cold start there)."""
        ref = await self.spawn(agent_type, agent_id, metadata)
        await self.migrate(agent_type, agent_id, host, strategy="cold")
        return ref

    @property
    def admin(self) -> Admin:
        """Operator actions on agents: quarantine records, release, rollback (ADR 0053)."""
        return Admin(self, self.subjects, self.settings.request_timeout_s)

    # -- the cluster -------------------------------------------------------------------------
    async def locate(self, agent_type: str, agent_id: str) -> str | None:
        """The host serving an agent now (its placement, else its partition's owner in the
        ring), read from the cluster bucket; None when nobody does."""
        from .._nats.kv import JetStreamStore  # local import: plain clients rarely need it

        store = JetStreamStore(self.nc, Topology(self.subjects).cluster_bucket, timeout_s=5.0)
        placed = await store.get(f"place.{agent_type}.{agent_id}")
        if placed is not None and placed.value.get("host"):
            return str(placed.value["host"])
        return await self._partition_owner(store, agent_type, agent_id)

    async def _partition_owner(self, store: Any, agent_type: str, agent_id: str) -> str | None:
        ring = await store.get("ring")
        if ring is None:
            return None
        owners = ring.value.get("owners") or []
        owner = owners[partition_of(agent_type, agent_id, len(owners))] if owners else ""
        return str(owner) or None

    async def migrate(
        self, agent_type: str, agent_id: str, target_host: str, *, strategy: str = "checkpoint", timeout: float = 15.0
    ) -> dict[str, Any]:
        """Move one agent to ``target_host``; no command is lost or reordered: the move is
        queued behind the agent's earlier commands at its partition's owner, which then
        forwards later ones to the target. ``strategy``: ``checkpoint`` (snapshot to KV,
        the target loads it), ``state`` (the state is handed over directly) or ``cold`` (the
        target replays the log)."""
        from .._nats.kv import JetStreamStore

        store = JetStreamStore(self.nc, Topology(self.subjects).cluster_bucket, timeout_s=5.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        body = orjson.dumps({"type": agent_type, "id": agent_id, "target": target_host, "strategy": strategy})
        attempt = 0
        while True:
            owner = await self._partition_owner(store, agent_type, agent_id)
            try:
                if owner is None:
                    raise Unavailable("no host owns the agent's partition yet", details={"applied": False})
                msg = await self._transport.request(
                    self.subjects.sys("host", owner, "migrate"), body, None, max(0.1, deadline - loop.time())
                )
                if no_responders(msg):
                    raise Unavailable(f"host {owner} is gone", details={"applied": False})
                return cast(dict[str, Any], decode_reply(msg).result)
            except TimeoutError:
                raise AgentTimeout(f"migration of {agent_type}/{agent_id} did not answer in time") from None
            except JetAgentsError as exc:
                if not (exc.retryable and not_applied(exc)):
                    raise
                err = exc
            await self._sender.backoff(attempt, deadline, err, until_deadline=True)
            attempt += 1

    # -- streamed output ---------------------------------------------------------------------
    def _stream(
        self,
        aid: AgentId,
        command_id: str,
        *,
        after: int,
        next_chunk: int | None = None,
        idle_timeout_s: float | None,
        send: Any = None,
    ) -> AgentStream:
        # an action may think (a model call, a step) for a while between two chunks: by default
        # a reader waits as long as a host lets an action run (action_timeout_s, 60 s)
        timeout_s = idle_timeout_s if idle_timeout_s is not None else max(self.settings.request_timeout_s, 60.0)
        subject = self.subjects.out(aid.type, aid.id, ctoken(command_id))
        stream = Topology(self.subjects).out_stream

        async def open_reader() -> Any:
            return await self._transport.out_reader(stream, subject, min(timeout_s, 5.0))

        return AgentStream(
            command_id, open_reader, send=send, after=after, next_chunk=next_chunk, idle_timeout_s=timeout_s
        )

    # -- pub-sub (ADR 0049; _client/pubsub.py) ------------------------------------------------
    @property
    def _pubsub(self) -> ClientPubSub:
        if self._pubsub_part is None:
            from .pubsub import ClientPubSub

            self._pubsub_part = ClientPubSub(
                self.nc,
                self.subjects,
                self._clock,
                timeout_s=self.settings.request_timeout_s,
                max_payload_bytes=self.settings.max_payload_bytes,
            )
        return self._pubsub_part

    async def publish(self, topic: str, data: Any, *, msg_id: str | None = None) -> int:
        """Publish ``data`` (JSON) on ``topic`` (``orders.created``); its sequence in the
        topic stream. With ``msg_id`` a re-publish within 120 s is stored once. Inside an
        action, a journaled step ``publish:<topic>`` (as ``Agent.publish``, ADR 0042 §12)."""

        async def run() -> int:
            return await self._pubsub.publish(topic, data, msg_id=msg_id or effect_key())

        return await auto_step(f"publish:{topic}", run)

    def subscribe(self, pattern: str, *, max_pending: int = 65536) -> TopicStream:
        """An ephemeral subscription (``*`` and ``>`` wildcards): what is published while it
        listens. ``async with client.subscribe("orders.*") as s: async for msg in s: ...``"""
        return self._pubsub.subscribe(pattern, max_pending=max_pending)

    async def subscribe_agent(
        self,
        agent_type: str,
        agent_id: str,
        pattern: str,
        *,
        action: str = "on_message",
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
    ) -> Subscription:
        """Subscribe an agent durably: each message published on a matching topic after this
        returns becomes a command ``action(msg)`` to the agent, in order per topic."""
        return await self._pubsub.subscribe_agent(agent_type, agent_id, pattern, action=action, delivery=delivery)

    async def unsubscribe_agent(self, agent_type: str, agent_id: str, pattern: str) -> None:
        await self._pubsub.unsubscribe_agent(agent_type, agent_id, pattern)

    # -- event logs and projections (ADR 0057; _client/events.py, _client/projection.py) ----
    def events(self, agent_type: str | None = None, agent_id: str | None = None, **options: Any) -> EventTail:
        """Agents' commits (all, one type, one agent) from ``after=`` a sequence (0: the
        start) or ``since_ms=``, history then live; ``decode=[Counter]`` upcasts events."""
        from .events import open_events

        return open_events(self, agent_type, agent_id, **options)

    @property
    def projections(self) -> Projections:
        """Run, read and rebuild projections: ``client.projections.runner(MyProjection())``."""
        from .projection import Projections

        return Projections(self)

    # -- coordination (_client/coordination.py) --------------------------------------------
    @property
    def _coord(self) -> Coordination:
        if self._coord_part is None:
            from .coordination import Coordination

            self._coord_part = Coordination(self.nc, self.subjects, timeout_s=self.settings.request_timeout_s)
        return self._coord_part

    def lease(self, name: str, *, ttl_s: float = 10.0, wait_s: float | None = None) -> Lease:
        """A lease (lock, leader election) fenced by its KV revision:
        ``async with client.lease("billing", ttl_s=5) as lease: await lease.put(k, v)``."""
        return self._coord.lease(name, ttl_s=ttl_s, wait_s=wait_s)

    async def barrier(self, name: str, *, parties: int, timeout_s: float) -> None:
        """Wait until ``parties`` callers reached barrier ``name`` (``BarrierTimeout`` otherwise)."""
        await self._coord.barrier(name, parties=parties, timeout_s=timeout_s)

    async def get_or_compute(self, key: str, fn: Callable[[], Awaitable[Any] | Any], *, ttl_s: float) -> Any:
        """The cached JSON value of ``key``, or ``fn()``'s, computed once for all concurrent
        misses in every process, kept for ``ttl_s``."""
        return await self._coord.get_or_compute(key, fn, ttl_s=ttl_s)

    def work_queue(
        self, name: str, *, visibility_s: float = 30.0, max_attempts: int = 5, max_in_flight: int = 1000
    ) -> WorkQueue:
        """A durable work queue shared by every worker that opens it (ADR 0050):
        ``await q.put(job)``; ``await q.process(handler, concurrency=4)`` in the workers."""
        from .._nats.workqueue import WorkStore
        from .workqueue import WorkQueue

        store = WorkStore(self.nc, self.subjects, timeout_s=self.settings.request_timeout_s)
        return WorkQueue(
            store,
            name,
            self._clock,
            visibility_s=visibility_s,
            max_attempts=max_attempts,
            retry=self.retry,
            max_in_flight=max_in_flight,
        )

    async def send_many(
        self,
        commands: Iterable[tuple[str, str, str, Mapping[str, Any] | None]],
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        timeout_s: float | None = None,
        compress: bool | None = None,
    ) -> list[str]:
        """Send many ``(type, id, action, params)`` commands at once (fire and forget):
        all written before any PubAck is awaited; their command ids, once all are stored.
        ``compress``: zstd above ``compress_min_bytes`` (None: the client's setting, ADR 0043)."""
        from .batch import send_many

        return await send_many(self, commands, delivery=delivery, timeout_s=timeout_s, compress=compress)

    @staticmethod
    async def gather(*aws: Awaitable[Any], timeout_s: float | None = None) -> list[Any]:
        """Every result in order; the first failure or the timeout cancels the rest."""
        from .futures import gather

        return await gather(*aws, timeout_s=timeout_s)

    @staticmethod
    async def first(*aws: Awaitable[Any], timeout_s: float | None = None) -> Any:
        """The first result to succeed; the others are cancelled."""
        from .futures import first

        return await first(*aws, timeout_s=timeout_s)

    @staticmethod
    async def then(aw: Awaitable[Any], fn: Callable[[Any], Any], *, timeout_s: float | None = None) -> Any:
        """``fn`` of ``aw``'s result (awaited if async); ``timeout_s`` bounds both."""
        from .futures import then

        return await then(aw, fn, timeout_s=timeout_s)

    # -- sending ---------------------------------------------------------------------------
    def _send(
        self,
        aid: AgentId,
        action: str,
        params: Mapping[str, Any] | None,
        options: SendOptions,
        body: bytes | None = None,
    ) -> Awaitable[Reply | str]:
        """Build the command (bad input raises here) and return its send to await. Not a
        coroutine itself: outside an action the send is returned as it is, one coroutine
        less on every call's path (ADR 0031)."""
        # inside an action (a host's client): the call names its chain and path (ADR 0042
        # section 7), and the action is marked as waiting on the callee while the reply is out
        frame = current_frame()
        s = self.settings
        compress = s.compression if options.compress is None else options.compress
        cmd = OutboundCommand.build(
            aid,
            action,
            params,
            options,
            subjects=self.subjects,
            timeout_s=options.timeout_s if options.timeout_s is not None else self.settings.request_timeout_s,
            limit_bytes=payload_limit(self.settings.max_payload_bytes, self._transport.max_payload),
            new_id=self._transport.new_id,
            wall_ms=self._clock.wall_ms(),
            chain=None if frame is None else frame.outgoing(aid.key, waits=options.want_reply),
            body=body,
            compress_min_bytes=s.compress_min_bytes if compress else 0,
        )
        if frame is None or not options.want_reply:
            return self._sender.send(cmd)
        return self._send_in_frame(cmd, frame)

    async def _send_in_frame(self, cmd: OutboundCommand, frame: Frame) -> Reply | str:
        key = cmd.agent.key
        frame.wait(key)  # before sending: the callee may call back before we await
        try:
            result = await self._sender.send(cmd)
        finally:
            frame.done(key)
        hold = frame.hold
        if hold is not None:  # a call that came back along the chain still runs on this agent
            await hold.wait()
        return result
