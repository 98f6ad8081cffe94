"""Sending one command: a call (core request/reply) or a durable publish, retries, the
circuit breaker per agent type, and the send span and metrics around it."""

from __future__ import annotations

import asyncio
from typing import Any

from .._core.clock import Clock
from .._core.errors import AgentTimeout, JetAgentsError, Unavailable
from .._core.retry import CircuitBreaker, RetryPolicy
from .._core.wire import H_COMMAND_ID, H_MSG_ID, H_REPLY_TO, Delivery
from .._nats.api import ERR_DUPLICATE_IN_PROCESS, JSApiError
from .._nats.client_transport import ClientTransport
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
from .command import OutboundCommand
from .reply import Reply, decode_reply, not_applied

MIN_ATTEMPT_S = 0.25  # the least time worth a retry before the caller's deadline
MAX_PUBLISH_WAIT_S = 5.0  # one durable publish waits this long for its PubAck before trying again
# A store "in process" (10158) settles within a round trip of the stream's replicas; an id
# refused this long is taken to be stuck (a stream leader change can leave an id whose
# proposal was lost "in process" for the whole duplicate window): the command is sent again
# under a fresh stream id, and the host's record keeps it exactly-once (ADR 0061)
IN_PROCESS_PATIENCE_S = 5.0


class Sender:
    """Sends built commands over the transport and returns the reply (or the command id)."""

    def __init__(
        self,
        transport: ClientTransport,
        settings: ClientSettings,
        retry: RetryPolicy,
        clock: Clock,
        telemetry: ClientTelemetry,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.retry = retry
        self._clock = clock
        self._tel = telemetry
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, agent_type: str) -> CircuitBreaker:
        b = self._breakers.get(agent_type)
        if b is None:
            b = self._breakers[agent_type] = CircuitBreaker(
                self.settings.breaker_failures, self.settings.breaker_reset_s, self._clock
            )
        return b

    async def send(self, cmd: OutboundCommand) -> Reply | str:
        loop = asyncio.get_running_loop()
        started = loop.time()  # read once: the send's span of time and its deadline start together
        until = started + cmd.timeout_s
        breaker = self._breakers.get(cmd.agent.type) or self.breaker(cmd.agent.type)
        if not breaker.allow():
            raise Unavailable(
                f"circuit open for agent type {cmd.agent.type!r}: recent calls failed", details={"applied": False}
            )
        headers = cmd.headers  # built for this send: ours to add to (no copy on the call path)
        tel = self._tel
        span = None
        if tel.tracing:  # the send span's context goes into the headers: the host's span is its child
            span, headers = tel.start_producer(f"send {cmd.agent.type}", cmd.subject, headers, _span_attributes(cmd))
        else:
            inject_current(headers)
        error = ""
        try:
            if cmd.delivery is not Delivery.AT_MOST_ONCE:
                result: Reply | str = await self._durable(cmd, headers, until)
            elif not cmd.want_reply:
                await self.transport.publish(cmd.subject, cmd.body, headers)
                result = cmd.command_id
            else:
                # the call's first attempt is made here, not in a coroutine of its own: the
                # sequential call path is dominated by such per-call costs (ADR 0031)
                try:
                    msg = await self.transport.request(cmd.subject, cmd.body, headers, cmd.timeout_s)
                except TimeoutError:
                    # at-most-once: the host may have run it, so it is never re-sent
                    raise AgentTimeout(f"no reply from {cmd.agent} in time (at-most-once: not retried)") from None
                try:
                    result = decode_reply(msg)
                except JetAgentsError as exc:
                    # "no responders" (no host subscribed yet) and "partition moving here"
                    # prove the call was not run: try again until the deadline
                    if not (exc.retryable and not_applied(exc)):
                        raise
                    result = await self._call_again(cmd, headers, until, exc)
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
            if cmd.want_reply and tel.metering:
                tel.request_done(cmd.agent.type, cmd.action, cmd.delivery.value, error, loop.time() - started)
        breaker.record_success()
        return result if cmd.want_reply else cmd.command_id

    async def backoff(
        self, attempt: int, deadline: float, err: JetAgentsError, *, until_deadline: bool = False
    ) -> None:
        """Sleep before the next attempt, or raise ``err`` when out of attempts or time.

        ``until_deadline``: the failure proves nothing was applied or re-sending is
        idempotent (no responders while a stream or partition changes hands, an
        unacknowledged publish with the same ``Nats-Msg-Id``): keep trying until the
        caller's timeout rather than for a fixed number of attempts. No attempt is made
        that has no time left to be answered: its timeout would hide ``err``, the reason
        the caller is still waiting (a loaded machine answers slowly).
        """
        remaining_s = deadline - asyncio.get_running_loop().time()
        delay = self.retry.next_delay(
            attempt, remaining_s, min_attempt_s=MIN_ATTEMPT_S, limit_attempts=not until_deadline
        )
        if delay is None:
            raise err
        # a throttled agent says when it takes commands again (ADR 0059): not sooner, and not
        # at all when that is past the caller's time
        details = err.details
        after_s = details.get("retry_after_s") if isinstance(details, dict) else None
        if isinstance(after_s, int | float) and after_s > delay:
            if after_s + MIN_ATTEMPT_S > remaining_s:
                raise err
            delay = float(after_s)
        await asyncio.sleep(delay)

    async def _call_again(
        self, cmd: OutboundCommand, headers: dict[str, str], deadline: float, err: JetAgentsError
    ) -> Reply:
        """Further attempts of a call whose last one was proved not run (``err``)."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            await self.backoff(attempt, deadline, err, until_deadline=True)
            attempt += 1
            if deadline <= loop.time():
                raise AgentTimeout(f"no reply from {cmd.agent} in time")
            # A core request on the client's own reply inbox (the one durable replies use):
            # one subscription and one timer for all requests.
            try:
                msg = await self.transport.request(cmd.subject, cmd.body, headers, deadline - loop.time())
            except TimeoutError:
                raise AgentTimeout(f"no reply from {cmd.agent} in time (at-most-once: not retried)") from None
            try:
                return decode_reply(msg)
            except JetAgentsError as exc:
                if not (exc.retryable and not_applied(exc)):
                    raise
                err = exc

    async def _durable(self, cmd: OutboundCommand, headers: dict[str, str], deadline: float) -> Reply | str:
        loop = asyncio.get_running_loop()
        reply = ""
        fut: asyncio.Future[Any] | None = None
        if cmd.want_reply:
            reply, fut = self.transport.expect()
            headers[H_REPLY_TO] = reply
        try:
            attempt = 0
            ours_maybe_stored = False  # a send of ours may be stored although its PubAck was lost
            in_process_since: float | None = None  # when the stream first said 10158 to this id
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _not_accepted(cmd, None)
                try:
                    ack = await self.transport.publish_durable(
                        cmd.subject, cmd.body, headers, min(remaining, MAX_PUBLISH_WAIT_S)
                    )
                    if ack.get("duplicate") and not ours_maybe_stored and fut is not None:
                        # An earlier call stored this command id; its reply went to that
                        # call's inbox. Send a copy under a fresh stream id: it queues behind
                        # the original and the host answers it from the agent's record.
                        headers[H_MSG_ID] = f"{headers[H_COMMAND_ID]}.{self.transport.new_id()}"
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
                    # stream answers "stored" or "duplicate", or the id looks stuck.
                    err = exc
                    now = loop.time()
                    if in_process_since is None:
                        in_process_since = now
                    elif now - in_process_since >= IN_PROCESS_PATIENCE_S:
                        headers[H_MSG_ID] = f"{headers[H_COMMAND_ID]}.{self.transport.new_id()}"
                        ours_maybe_stored = True
                        in_process_since = None
                # until the caller's time is up (each retry is idempotent or allowed to
                # repeat); then it is a timeout: the outcome is not known
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _not_accepted(cmd, err)
                await asyncio.sleep(min(self.retry.delay(attempt), remaining))
                attempt += 1
            if fut is None:
                return cmd.command_id
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    msg = await fut
            except TimeoutError:
                raise AgentTimeout(
                    f"no reply from {cmd.agent} in time; the command is stored and will run once "
                    f"(command id {cmd.command_id})"
                ) from None
            return decode_reply(msg)
        finally:
            if reply:
                self.transport.forget(reply)


def _span_attributes(cmd: OutboundCommand) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        MESSAGING_OPERATION_NAME: "send",
        MESSAGING_MESSAGE_ID: cmd.command_id,
        MESSAGING_CONVERSATION_ID: cmd.correlation_id or cmd.command_id,
        AGENT_TYPE: cmd.agent.type,
        AGENT_ID: cmd.agent.id,
        ACTION: cmd.action,
        DELIVERY: cmd.delivery.value,
    }
    if not cmd.command_id:  # a call without a command id
        del attrs[MESSAGING_MESSAGE_ID]
        if not cmd.correlation_id:
            del attrs[MESSAGING_CONVERSATION_ID]
    return attrs


def _not_accepted(cmd: OutboundCommand, cause: JetAgentsError | None) -> AgentTimeout:
    """The caller's time ran out before the stream said whether it stored the command:
    a timeout (retryable: re-send with the same command id), never a final error."""
    why = f" (last: {cause.message})" if cause is not None else ""
    return AgentTimeout(
        f"command to {cmd.agent} was not accepted by the stream in time{why}; it may be stored: "
        f"re-send with the same command id {cmd.command_id}",
        details={"command_id": cmd.command_id},
    )
