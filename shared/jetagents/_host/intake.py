"""Intake: received messages become ``Command``s, parsed once (ADR 0040 section 3).

Commands pulled from a partition's consumer and calls (core requests) arrive here; a body
over ``max_payload_bytes`` is refused before anything reads it, everything else goes to the
scheduler (the agent's mailbox). Pull statuses (``100``, ``503``, ``423``) are the puller's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._core.command import CALL, STREAM, Command, Kind, parse_command
from .._core.encoding import decode
from .._core.errors import JetAgentsError, PayloadTooLarge, Unavailable
from .._core.ids import is_valid_token, partition_of
from .._core.outcome import Result
from .._core.schedules import H_SCHEDULE, H_SCHEDULER
from .._core.wire import H_ENCODING, HIGH_STORED_TOKEN, encode_error
from .reminders import stray_schedule

if TYPE_CHECKING:
    from .host import Host
    from .ports import Received

# call subject -> route: bounded, so subjects a sender makes up cannot grow it for ever
_MAX_ROUTES = 65_536


class Intake:
    """Turns received messages into commands for the host's scheduler."""

    __slots__ = (
        "_bounds",
        "_high_bounds",
        "_host",
        "_max_payload",
        "_monotonic",
        "_reply_prefixes",
        "_routes",
        "_ttl_s",
    )

    def __init__(self, host: Host) -> None:
        self._host = host
        self._routes: dict[str, tuple[int, str, str]] = {}  # call subject -> partition, type, id
        # read for every call: worked out once (settings never change while a host runs).
        # The in-flight bounds (count, bytes) a call is refused past; a high call has the
        # high lane's reserve on top (ADR 0058), as its puller has
        s = host.settings
        reserve = s.high_lane_reserve
        self._bounds = (s.max_inflight, s.max_inflight_bytes)
        self._high_bounds = (s.max_inflight + reserve, s.max_inflight_bytes + reserve * (s.max_payload_bytes + 4096))
        self._ttl_s = s.member_ttl_s
        self._max_payload = s.max_payload_bytes
        self._reply_prefixes = s.reply_prefixes
        self._monotonic = host.clock.monotonic

    def parse(
        self,
        kind: Kind,
        subject: str,
        headers: Mapping[str, str] | None,
        data: bytes,
        reply: str | None,
        route: tuple[int, str, str],
        *,
        deliveries: int | None = None,
        stream_seq: int | None = None,
        high: bool = False,
    ) -> Command:
        """``high``: a durable command of the high-priority lane (ADR 0058), named after its
        own stream's position when it carries no id."""
        host = self._host
        partition, agent_type, agent_id = route
        host.loadmeter.seen(partition, len(data))
        cmd = parse_command(
            kind,
            subject,
            headers,
            data,
            reply=reply,
            agent_type=agent_type,
            agent_id=agent_id,
            partition=partition,
            received=host.clock.monotonic(),
            cepoch=host.cepoch_high if high else host.cepoch,
            reply_prefixes=host.settings.reply_prefixes,
            deliveries=deliveries,
            stream_seq=stream_seq,
        )
        if high:
            cmd.high = True
            cmd.priority_rank = 0
        return cmd

    async def on_pull_msg(self, msg: Received) -> None:
        """A message on the pull inbox: a status about one of our pull requests, or a command
        (the subscription's callback)."""
        host = self._host
        subject, headers, data, reply = msg.subject, msg.headers, msg.data, msg.reply
        if not reply:  # a status about one of our pull requests, sent to its inbox
            host.partitions.on_pull_status(subject, headers)
            return
        # a command; JetStream delivers it under its stored subject <root>.p.<partition>.<type>.<id>
        # (<root>.ph.<partition>.<type>.<id> on the high lane, ADR 0058)
        parts = subject.split(".")
        if len(parts) < 5 or not parts[-3].isdigit():
            return
        partition = int(parts[-3])
        high = parts[-4] == HIGH_STORED_TOKEN
        puller = host.partitions.get(partition, high)
        if puller is None:
            # not (or no longer) ours: the owner may have it at once; unsent (cut off), it
            # comes again after ack_wait all the same
            with contextlib.suppress(Exception):
                await host.publisher.publish(reply, b"-NAK")
            return
        puller.received()
        if headers:
            pin = headers.get("Nats-Pin-Id")
            if pin:
                puller.pin_id = pin
        cmd = self.parse(STREAM, subject, headers, data, reply, (partition, parts[-2], parts[-1]), high=high)
        if host.supervisor.stopping:
            host.scheduler.track(cmd)
            await host.outcomes.settle(cmd, Result.STOPPING, {})
            host.scheduler.untrack(cmd)
            return
        if len(data) > self._max_payload:
            self.refuse_oversized(cmd)
            return
        if headers and (H_SCHEDULE in headers or H_SCHEDULER in headers):
            # a client's schedule, or a firing of one: refused now, never queued behind the
            # agent's commands (a schedule fires for as long as it is stored)
            stray = stray_schedule(cmd, host.subjects.root)
            if stray is not None:
                host.scheduler.track(cmd)
                host.supervisor.spawn("side", host.scheduler.reject_unrouted(cmd, stray))
                return
        if headers and H_ENCODING in headers and not self.decoded(cmd):
            return
        if b'"cancel"' in cmd.body[:32]:  # seen now, not behind the command it cancels (ADR 0042 §8)
            key = f"{cmd.agent_type}.{cmd.agent_id}"
            host.pipeline.signals.note_cancel(host.catalog.activations.get(key), cmd.body)
        host.scheduler.dispatch(cmd)

    def route_of(self, subject: str) -> tuple[int, str, str]:
        """(partition, agent type, agent id) of a call subject, remembered for the next call."""
        route = self._routes.get(subject)
        if route is None:
            parts = subject.split(".")
            if not (is_valid_token(parts[-2]) and is_valid_token(parts[-1])):
                partition = 0  # the owner of partition 0 answers for unroutable subjects
            else:
                partition = partition_of(parts[-2], parts[-1], self._host.settings.partitions)
            route = (partition, parts[-2], parts[-1])
            if len(self._routes) >= _MAX_ROUTES:
                self._routes.clear()
            self._routes[subject] = route
        return route

    async def on_call(self, msg: Received) -> None:
        """A call (a core request on ``agt.call.<type>.<id>``): the subscription's callback."""
        host = self._host
        subject, reply = msg.subject, msg.reply
        # remembered: most calls go to agents called before
        route = self._routes.get(subject) or self.route_of(subject)
        partition = route[0]
        coord = host.coordinator
        now = self._monotonic()
        if coord is not None and now - coord.last_heartbeat_ok > self._ttl_s:
            # we have not reached the cluster for a whole TTL (paused, cut off): our
            # partitions may be someone else's by now; do not answer from memory. Not even
            # "retry, not applied": the new owner may be running it (the simulation's calls
            # found the caller's retry run twice so); its answer, or the caller's timeout
            return
        if partition not in host.partitions.owned_set:
            if reply and coord is not None and not host.supervisor.stopping:
                # Say "retry, not applied" only when no host takes the call: while this host
                # drains the partition it hands over (it stopped taking its calls, and holds
                # its claim until done, so no next owner has started), or starts it after its
                # previous owner released it (or is gone). Every host hears every call: said
                # while another host served it, the caller's retry would run it twice (found by
                # the simulation's calls). Otherwise silent: the owner answers.
                if partition in coord.releasing and partition in coord.claim_revs:
                    way = "away from"
                elif partition in coord.starting:
                    way = "to"
                else:
                    return
                err = Unavailable(f"the agent's partition is moving {way} this host; retry", details={"applied": False})
                await host.outcomes.reply(reply, encode_error(err), {}, None)
            return
        headers, data = msg.headers, msg.data
        size = len(data)
        host.loadmeter.seen(partition, size)
        # parsed here rather than by ``parse``: every call's, and a call has no stream position
        cmd = parse_command(
            CALL, subject, headers, data, reply, route[1], route[2], partition, now, "", self._reply_prefixes
        )
        scheduler = host.scheduler
        max_count, max_bytes = self._high_bounds if cmd.high else self._bounds
        if scheduler.inflight_count >= max_count or scheduler.inflight_bytes + size > max_bytes:
            if reply:
                err = Unavailable("host overloaded, retry", details={"applied": False})
                await host.outcomes.reply(reply, encode_error(err), {}, None)
            return
        if size > self._max_payload:
            self.refuse_oversized(cmd)
            return
        if headers and H_ENCODING in headers and not self.decoded(cmd):
            return
        scheduler.dispatch(cmd)

    async def refuse_dropped(self, subject: str, reply: str) -> None:
        """Answer a call the connection dropped unread (the host's pending bytes full under a
        flood): ``unavailable``, so its caller retries now rather than after its timeout. Only
        for a partition this host serves: every host hears every call, and "not applied" from
        one that does not serve it, while its owner runs it, would have the caller run it twice."""
        if self.route_of(subject)[0] not in self._host.partitions.owned_set:
            return
        err = Unavailable("host overloaded, the call was dropped unread; retry", details={"applied": False})
        await self._host.outcomes.reply(reply, encode_error(err), {}, None)

    def decoded(self, cmd: Command) -> bool:
        """Decode a body sent with ``Agt-Encoding`` (ADR 0043) in place, at most
        ``max_payload_bytes`` of it, and drop the header, so the command reads as if sent
        plain from here on (its dead letter, a forward). An unknown encoding, a body that
        decodes past the limit (a zip bomb) or is no frame: refused, dead-lettered as it
        came, once; returns False."""
        host = self._host
        try:
            body = decode(cmd.body, cmd.headers[H_ENCODING], limit_bytes=host.settings.max_payload_bytes)
        except JetAgentsError as err:
            host.scheduler.track(cmd)  # untracked by the refusal
            host.supervisor.spawn("side", host.scheduler.reject_unrouted(cmd, err))
            return False
        cmd.body = body
        cmd.headers = {k: v for k, v in cmd.headers.items() if k != H_ENCODING}
        return True

    def refuse_oversized(self, cmd: Command) -> None:
        """A body over ``max_payload_bytes``: refused as it arrives, never queued for its
        agent nor parsed; dead-lettered (bounded) and answered ``payload_too_large``."""
        host = self._host
        size, limit = len(cmd.body), host.settings.max_payload_bytes
        host.scheduler.track(cmd)  # its bytes count against max_inflight_bytes until the refusal is done
        err = PayloadTooLarge(f"payload of {size} bytes exceeds the limit of {limit}")
        host.supervisor.spawn("side", host.scheduler.reject_unrouted(cmd, err))
