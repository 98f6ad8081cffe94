"""The Python client: location-transparent agent handles, futures, retries, typed errors.

>>> async def main():  # doctest: +SKIP
...     async with await Client.connect("nats://127.0.0.1:4222") as client:
...         counter = client.proxy(Counter, "c1")
...         value = await counter.increment(by=2)          # exactly-once by default
...         fut = client.agent("counter", "c1").request_async("get")
...         print(value, await fut)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.nuid import NUID
from opentelemetry import metrics, trace
from pydantic_core import to_jsonable_python

from .._core.agent import Agent, AgentSpec, spec_of
from .._core.clock import SystemClock
from .._core.errors import (
    AgentTimeout,
    FencedError,
    InternalError,
    InvalidParams,
    JetAgentsError,
    PayloadTooLarge,
    Unavailable,
    error_from_wire,
)
from .._core.ids import AgentId, partition_of
from .._core.retry import CircuitBreaker, RetryPolicy
from .._core.wire import (
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_DEADLINE,
    H_MSG_ID,
    H_PRIORITY,
    H_REPLY_TO,
    Delivery,
    Priority,
    Subjects,
)
from .._nats.api import ERR_DUPLICATE_IN_PROCESS, Inbox, JSApiError, Topology, connect, ensure_topology, js_publish
from .._obs.propagation import inject_current
from .._obs.telemetry import (
    ACTION,
    AGENT_ID,
    AGENT_TYPE,
    DELIVERY,
    MESSAGING_CONVERSATION_ID,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    ClientTelemetry,
    fail_span,
)
from .._settings import ClientSettings

_MIN_ATTEMPT_S = 0.25  # the least time worth a retry before the caller's deadline

if TYPE_CHECKING:
    from .._state.store import SharedState

A = TypeVar("A", bound=Agent[Any])


class Reply:
    """A decoded reply: ``result`` plus the headers the host sent with it."""

    __slots__ = ("duplicate", "event_seq", "headers", "result")

    def __init__(self, result: Any, headers: Mapping[str, str]) -> None:
        self.result = result
        self.headers = dict(headers)
        self.duplicate = headers.get("Agt-Duplicate") == "true"
        seq = headers.get("Agt-Event-Seq")
        self.event_seq = int(seq) if seq and seq.isdigit() else None


def _decode_reply(msg: Msg) -> Reply:
    hdrs = msg.headers or {}
    if hdrs.get("Status") == "503":
        raise Unavailable("no host is serving this subject", details={"applied": False})
    try:
        body = orjson.loads(msg.data)
    except orjson.JSONDecodeError:
        raise InternalError(f"unreadable reply: {msg.data[:200]!r}") from None
    if not isinstance(body, dict) or "ok" not in body:
        raise InternalError(f"unexpected reply shape: {msg.data[:200]!r}")
    if body["ok"]:
        return Reply(body.get("result"), hdrs)
    raise error_from_wire(body.get("error"))


def _not_applied(err: JetAgentsError) -> bool:
    """True when the error proves the command was not applied (safe to retry at-most-once)."""
    return isinstance(err, FencedError) or (isinstance(err.details, dict) and err.details.get("applied") is False)


class Client:
    """Talks to agents wherever they run. Create with :meth:`connect`.

    ``tracer_provider``/``meter_provider``: OpenTelemetry providers to use instead of the
    global ones (without an SDK provider no span or measurement is made).
    """

    def __init__(
        self,
        nc: NATS,
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
        self._nuid = NUID()
        self._inbox = Inbox(nc)  # replies to calls and to durable commands
        self._breakers: dict[str, CircuitBreaker] = {}
        self._clock = SystemClock()
        self._shared: dict[str, Any] = {}
        self._tel = ClientTelemetry(tracer_provider, meter_provider)

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
        nc = await connect(
            settings.nats_url,
            name=name,
            connect_timeout_s=settings.connect_timeout_s,
            inbox_prefix=settings.inbox_prefix,
        )
        client = cls(nc, settings, tracer_provider=tracer_provider, meter_provider=meter_provider)
        await client._start()
        return client

    async def _start(self) -> None:
        await self._inbox.start()

    async def close(self) -> None:
        for st in self._shared.values():
            await st.close()
        self._shared.clear()
        await self._inbox.close()
        if self._owns:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001
                await self.nc.close()

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
        return cast(A, _Proxy(ref, spec, Delivery(delivery), timeout, Priority(priority)))

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
        topo = Topology(self.subjects)
        kv = await self.nc.jetstream().key_value(topo.meta_bucket)
        await kv.put(aid.key, orjson.dumps(metadata or {}))
        return AgentRef(self, aid)

    async def spawn_on(
        self, agent_type: str, agent_id: str, host: str, metadata: dict[str, Any] | None = None
    ) -> AgentRef:
        """Spawn an agent with a placement hint: it runs on ``host`` (a cold start there)."""
        ref = await self.spawn(agent_type, agent_id, metadata)
        await self.migrate(agent_type, agent_id, host, strategy="cold")
        return ref

    # -- the cluster -------------------------------------------------------------------------
    async def locate(self, agent_type: str, agent_id: str) -> str | None:
        """The host serving an agent now (its placement, else its partition's owner in the
        ring), read from the cluster bucket; None when nobody does."""
        from .._host.coordination import JetStreamStore  # local import: plain clients rarely need it

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
        from .._host.coordination import JetStreamStore

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
                msg = await self.nc.request(
                    self.subjects.sys("host", owner, "migrate"), body, timeout=max(0.1, deadline - loop.time())
                )
                reply = _decode_reply(msg)
                return cast(dict[str, Any], reply.result)
            except NoRespondersError:
                err: JetAgentsError = Unavailable(f"host {owner} is gone", details={"applied": False})
            except NatsTimeout:
                raise AgentTimeout(f"migration of {agent_type}/{agent_id} did not answer in time") from None
            except JetAgentsError as exc:
                if not (exc.retryable and _not_applied(exc)):
                    raise
                err = exc
            await self._backoff(attempt, deadline, err, until_deadline=True)
            attempt += 1

    # -- sending ---------------------------------------------------------------------------
    def _breaker(self, agent_type: str) -> CircuitBreaker:
        b = self._breakers.get(agent_type)
        if b is None:
            b = self._breakers[agent_type] = CircuitBreaker(
                self.settings.breaker_failures, self.settings.breaker_reset_s, self._clock
            )
        return b

    def _prepare(
        self,
        aid: AgentId,
        action: str,
        params: Mapping[str, Any] | None,
        delivery: Delivery,
        command_id: str | None,
        correlation_id: str | None,
        priority: Priority,
        timeout_s: float,
        deadline_s: float | None,
        want_reply: bool = True,
    ) -> tuple[bytes, dict[str, str], str]:
        # orjson writes plain JSON values itself; pydantic turns anything else (models,
        # sets, ...) into JSON values
        try:
            body = orjson.dumps(
                {"action": action, "params": params or {}}, default=to_jsonable_python, option=orjson.OPT_NON_STR_KEYS
            )
        except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError: e.g. an int past 64 bits
            raise InvalidParams(f"parameters of {action!r} cannot be written as JSON: {exc}") from None
        # the smaller of the configured limit and what the server takes (its max_payload,
        # less room for the headers): nats-py's own MaxPayloadError is not a JetAgentsError
        limit = self.settings.max_payload_bytes
        server_max = int(getattr(self.nc, "max_payload", 0) or 0)
        if server_max > 4096:
            limit = min(limit, server_max - 4096)
        if len(body) > limit:
            raise PayloadTooLarge(f"command of {len(body)} bytes exceeds the limit of {limit}")
        # Few headers on purpose: they cost more than the rest of a small message (ADR 0031).
        # The delivery mode is implied by the subject and Nats-Msg-Id, the correlation id
        # defaults to the command id and JSON is the only content type. A call awaiting
        # its reply gets no command id unless the caller gives one: it is never re-sent
        # once it may have run (so never deduplicated), its reply comes back on its own
        # inbox, and the trace context ties its log lines together.
        headers: dict[str, str] = {}
        if command_id:
            if len(command_id) > 256:
                raise ValueError("command_id longer than 256 characters")
            cmd_id = headers[H_COMMAND_ID] = command_id
        elif delivery is Delivery.AT_MOST_ONCE and want_reply:
            cmd_id = ""
        else:
            cmd_id = headers[H_COMMAND_ID] = self._nuid.next().decode()
        # A durable command outlives the caller's wait unless the caller sets a deadline;
        # a call (at-most-once) nobody waits for any more is pointless, so it gets one.
        if deadline_s is None and delivery is Delivery.AT_MOST_ONCE:
            deadline_s = timeout_s
        if deadline_s is not None:
            headers[H_DEADLINE] = str(self._clock.wall_ms() + int(deadline_s * 1000))
        if correlation_id and correlation_id != cmd_id:
            headers[H_CORRELATION_ID] = correlation_id
        if priority is not Priority.NORMAL:
            headers[H_PRIORITY] = priority.value
        return body, headers, cmd_id

    async def _send(
        self,
        aid: AgentId,
        action: str,
        params: Mapping[str, Any] | None,
        *,
        delivery: Delivery,
        timeout: float | None,
        command_id: str | None,
        correlation_id: str | None,
        priority: Priority,
        want_reply: bool,
        deadline: float | None = None,
    ) -> Reply | str:
        timeout_s = timeout if timeout is not None else self.settings.request_timeout_s
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        breaker = self._breaker(aid.type)
        if not breaker.allow():
            raise Unavailable(
                f"circuit open for agent type {aid.type!r}: recent calls failed", details={"applied": False}
            )
        body, headers, cmd_id = self._prepare(
            aid, action, params, delivery, command_id, correlation_id, priority, timeout_s, deadline, want_reply
        )
        tel = self._tel
        span = None
        if tel.tracing:  # the send span's context goes into the headers: the host's span is its child
            subject = (
                self.subjects.call(aid.type, aid.id)
                if delivery is Delivery.AT_MOST_ONCE
                else self.subjects.cmd(aid.type, aid.id)
            )
            attrs = {
                MESSAGING_OPERATION_NAME: "send",
                MESSAGING_MESSAGE_ID: cmd_id,
                MESSAGING_CONVERSATION_ID: correlation_id or cmd_id,
                AGENT_TYPE: aid.type,
                AGENT_ID: aid.id,
                ACTION: action,
                DELIVERY: delivery.value,
            }
            if not cmd_id:  # a call without a command id
                del attrs[MESSAGING_MESSAGE_ID]
                if not correlation_id:
                    del attrs[MESSAGING_CONVERSATION_ID]
            span, headers = tel.start_producer(f"send {aid.type}", subject, headers, attrs)
        else:
            inject_current(headers)
        started = loop.time()
        error = ""
        try:
            if delivery is Delivery.AT_MOST_ONCE:
                result: Reply | str = await self._call(aid, body, headers, until, want_reply)
            else:
                result = await self._durable(aid, body, headers, delivery, until, want_reply)
        except (Unavailable, AgentTimeout) as exc:
            breaker.record_failure()
            error = exc.code
            if span is not None:
                fail_span(span, exc)
            raise
        except JetAgentsError as exc:
            breaker.record_success()  # the agent answered: the path to it works
            error = exc.code
            if span is not None:
                fail_span(span, exc)
            raise
        except BaseException as exc:
            breaker.release()
            error = type(exc).__qualname__
            if span is not None:
                fail_span(span, exc)
            raise
        finally:
            if span is not None:
                span.end()
            if want_reply and tel.metering:
                tel.request_done(aid.type, action, delivery.value, error, loop.time() - started)
        breaker.record_success()
        return result if want_reply else cmd_id

    async def _backoff(
        self, attempt: int, deadline: float, err: JetAgentsError, *, until_deadline: bool = False
    ) -> None:
        """Sleep before the next attempt, or raise ``err`` when out of attempts or time.

        ``until_deadline``: the failure proves nothing was applied or re-sending is
        idempotent (no responders while a stream or partition changes hands, an
        unacknowledged publish with the same ``Nats-Msg-Id``): keep trying until the
        caller's timeout rather than for a fixed number of attempts.
        """
        loop = asyncio.get_running_loop()
        if not until_deadline and attempt + 1 >= self.retry.attempts:
            raise err
        delay = self.retry.delay(attempt)
        # no attempt that has no time left to be answered: its timeout would hide ``err``,
        # the reason the caller is still waiting (a loaded machine answers slowly)
        if loop.time() + delay + _MIN_ATTEMPT_S >= deadline:
            raise err
        await asyncio.sleep(delay)

    async def _call(
        self, aid: AgentId, body: bytes, headers: dict[str, str], deadline: float, want_reply: bool
    ) -> Reply | str:
        subject = self.subjects.call(aid.type, aid.id)
        if not want_reply:
            await self.nc.publish(subject, body, headers=headers)
            return headers[H_COMMAND_ID]
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            if deadline <= loop.time():
                raise AgentTimeout(f"no reply from {aid} in time")
            # A core request on the client's own reply inbox (the one durable replies use):
            # one subscription for all requests, one timer per request.
            try:
                msg = await self._inbox.request(subject, body, headers, deadline - loop.time())
            except TimeoutError:
                # at-most-once: the host may have run it, so it is never re-sent
                raise AgentTimeout(f"no reply from {aid} in time (at-most-once: not retried)") from None
            try:
                return _decode_reply(msg)
            except JetAgentsError as exc:
                # "no responders" (no host subscribed yet) and "partition moving here" prove
                # the call was not run: try again until the deadline
                if not (exc.retryable and _not_applied(exc)):
                    raise
                err = exc
            await self._backoff(attempt, deadline, err, until_deadline=True)
            attempt += 1

    async def _durable(
        self,
        aid: AgentId,
        body: bytes,
        headers: dict[str, str],
        delivery: Delivery,
        deadline: float,
        want_reply: bool,
    ) -> Reply | str:
        subject = self.subjects.cmd(aid.type, aid.id)
        loop = asyncio.get_running_loop()
        if delivery is Delivery.EXACTLY_ONCE:
            headers[H_MSG_ID] = headers[H_COMMAND_ID]
        reply = ""
        fut: asyncio.Future[Msg] | None = None
        if want_reply:
            reply, fut = self._inbox.expect()
            headers[H_REPLY_TO] = reply
        try:
            attempt = 0
            ours_maybe_stored = False  # a send of ours may be stored although its PubAck was lost
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._not_accepted(aid, headers, None)
                try:
                    ack = await js_publish(self.nc, subject, body, headers, min(remaining, 5.0))
                    if ack.get("duplicate") and not ours_maybe_stored and fut is not None:
                        # An earlier call stored this command id; its reply went to that
                        # call's inbox. Send a copy under a fresh stream id: it queues behind
                        # the original and the host answers it from the agent's record.
                        headers[H_MSG_ID] = f"{headers[H_COMMAND_ID]}.{self._nuid.next().decode()}"
                        ours_maybe_stored = True  # the copy is ours from now on
                        attempt += 1
                        continue
                    break
                except Unavailable as exc:
                    # Re-sending is safe for exactly-once (same Nats-Msg-Id); for
                    # at-least-once it may store the command twice, which that mode allows.
                    ours_maybe_stored = True
                    err: JetAgentsError = exc
                except JSApiError as exc:
                    if exc.err_code != ERR_DUPLICATE_IN_PROCESS:
                        raise
                    # 10158: a message with this Nats-Msg-Id is being stored right now (our
                    # own earlier send whose PubAck was lost, or another caller's): its
                    # outcome is not known yet. Ask again with the same id until the
                    # stream answers "stored" or "duplicate".
                    err = exc
                # until the caller's time is up (each retry is idempotent or allowed to
                # repeat); then it is a timeout: the outcome is not known
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._not_accepted(aid, headers, err)
                await asyncio.sleep(min(self.retry.delay(attempt), remaining))
                attempt += 1
            if fut is None:
                return headers[H_COMMAND_ID]
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    msg = await fut
            except TimeoutError:
                raise AgentTimeout(
                    f"no reply from {aid} in time; the command is stored and will run once "
                    f"(command id {headers[H_COMMAND_ID]})"
                ) from None
            return _decode_reply(msg)
        finally:
            if reply:
                self._inbox.forget(reply)

    @staticmethod
    def _not_accepted(aid: AgentId, headers: dict[str, str], cause: JetAgentsError | None) -> AgentTimeout:
        """The caller's time ran out before the stream said whether it stored the command:
        a timeout (retryable: re-send with the same command id), never a final error."""
        why = f" (last: {cause.message})" if cause is not None else ""
        return AgentTimeout(
            f"command to {aid} was not accepted by the stream in time{why}; it may be stored: "
            f"re-send with the same command id {headers[H_COMMAND_ID]}",
            details={"command_id": headers[H_COMMAND_ID]},
        )


class AgentRef:
    """A location-transparent handle to one agent."""

    __slots__ = ("client", "id")

    def __init__(self, client: Client, agent_id: AgentId) -> None:
        self.client = client
        self.id = agent_id

    async def send(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        command_id: str | None = None,
        correlation_id: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> str:
        """Fire and forget. Durable modes return once the stream has stored the command;
        at-most-once returns once it is written to the connection. Returns the command id."""
        out = await self.client._send(
            self.id,
            action,
            params,
            delivery=Delivery(delivery),
            timeout=timeout,
            command_id=command_id,
            correlation_id=correlation_id,
            priority=Priority(priority),
            want_reply=False,
            deadline=deadline,
        )
        return cast(str, out)

    async def request(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        timeout: float | None = None,
        command_id: str | None = None,
        correlation_id: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
    ) -> Any:
        """Send and await the reply; returns the action's JSON result or raises the typed error.

        ``timeout`` bounds the wait; ``deadline`` (seconds) tells the host not to start the
        command after that long (durable commands have none unless given)."""
        reply = await self.request_reply(
            action,
            params,
            delivery=delivery,
            timeout=timeout,
            command_id=command_id,
            correlation_id=correlation_id,
            priority=priority,
            deadline=deadline,
        )
        return reply.result

    async def request_reply(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
        timeout: float | None = None,
        command_id: str | None = None,
        correlation_id: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
    ) -> Reply:
        """Like :meth:`request` but returns the :class:`Reply` with its headers."""
        out = await self.client._send(
            self.id,
            action,
            params,
            delivery=Delivery(delivery),
            timeout=timeout,
            command_id=command_id,
            correlation_id=correlation_id,
            priority=Priority(priority),
            want_reply=True,
            deadline=deadline,
        )
        return cast(Reply, out)

    def request_async(self, action: str, params: Mapping[str, Any] | None = None, **opts: Any) -> asyncio.Task[Any]:
        """Start a request and return a future (an ``asyncio.Task``) to await or gather later."""
        return asyncio.ensure_future(self.request(action, params, **opts))

    def __repr__(self) -> str:
        return f"AgentRef({self.id})"


class _Proxy:
    __slots__ = ("_delivery", "_priority", "_ref", "_spec", "_timeout")

    def __init__(
        self, ref: AgentRef, spec: AgentSpec, delivery: Delivery, timeout: float | None, priority: Priority
    ) -> None:
        self._ref = ref
        self._spec = spec
        self._delivery = delivery
        self._timeout = timeout
        self._priority = priority

    def __getattr__(self, name: str) -> Any:
        action = self._spec.actions.get(name)
        if action is None:
            raise AttributeError(f"agent type {self._spec.type_name!r} has no action {name!r}")
        ref, delivery, timeout, priority = self._ref, self._delivery, self._timeout, self._priority

        async def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) > len(action.param_names):
                raise TypeError(f"{name}() takes {len(action.param_names)} arguments")
            params = dict(zip(action.param_names, args, strict=False))
            params.update(kwargs)
            result = await ref.request(name, params, delivery=delivery, timeout=timeout, priority=priority)
            return action.result_adapter.validate_python(result) if action.result_adapter else result

        call.__name__ = name
        return call

    def __repr__(self) -> str:
        return f"<proxy {self._ref.id}>"
