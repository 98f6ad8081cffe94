"""Agents placed on a host other than their partition's owner: resource tags and migration.

A partition's owner receives every command of the partition. When the agent is placed on
another live host (migrated there, or its type requires resource tags this host lacks) the
owner forwards the command to that host and relays its acknowledgements; the placed host
checks the placement is still its own before running it. Migration moves one agent in its
mailbox order (``checkpoint``, ``state`` or ``cold``), through ``adopt``/``release`` requests
between hosts (``<root>.sys.host.<host>.<what>``). The host-to-host messages go through the
adapter (``jetagents._nats.hosts``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .._core.agent import Registry
from .._core.clock import Clock
from .._core.command import ACKED, Command, Kind
from .._core.errors import (
    InternalError,
    JetAgentsError,
    MalformedCommand,
    Unavailable,
    UnknownAgentType,
    error_from_wire,
)
from .._core.ids import AgentId, fnv1a_32, is_valid_token, partition_of
from .._core.outcome import Result
from .._core.wire import Subjects, encode_error, encode_ok, is_high_lane
from .._nats.api import NS
from .._nats.hosts import HostLink
from .._settings import HostSettings
from .catalog import Activation, Catalog, _busy
from .ports import Received
from .reserve import Reserving, needs_of
from .restore import rollback
from .tombstones import forget

if TYPE_CHECKING:
    from .coordination import Coordinator

# host-to-host headers of a forwarded command (<root>.sys.host.<host>.fwd)
H_FWD_SUBJECT = "Agt-Fwd-Subject"
H_FWD_REPLY = "Agt-Fwd-Reply"
H_FWD_DELIVERIES = "Agt-Fwd-Deliveries"
H_FWD_CSEQ = "Agt-Fwd-Cseq"
H_FWD_PARTITION = "Agt-Fwd-Partition"
STRATEGIES = ("checkpoint", "state", "cold")
AGENTS_LISTED = 10_000  # agents one ``agents`` request lists (``total`` counts them all)


@dataclass(frozen=True, slots=True)
class PipelineHooks:
    """What placement asks of the host's command pipeline: parse and queue a command it
    received, answer one, acknowledge one (to the stream or the forwarder), settle one by the
    outcome table (``Outcomes.settle``: rows 19-22)."""

    parse: Callable[..., Command]
    dispatch: Callable[[Command], None]
    reply: Callable[[str | None, bytes, dict[str, str], Command | None], Awaitable[None]]
    ack: Callable[[Command, bytes], Awaitable[None]]
    settle: Callable[..., Awaitable[None]]


class Placement:
    """Forwarding to placed agents, and the host-to-host requests that move them."""

    def __init__(
        self,
        settings: HostSettings,
        registry: Registry,
        subjects: Subjects,
        clock: Clock,
        log: Any,
        catalog: Catalog,
        pipeline: PipelineHooks,
        *,
        coordinator: Callable[[], Coordinator | None],
        owns: Callable[[int], bool],
        event: Callable[[str, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.subjects = subjects
        self.clock = clock
        self.log = log
        self.catalog = catalog
        self.pipeline = pipeline
        self._coordinator = coordinator  # set once the host has joined the cluster (ring membership)
        self._owns = owns
        self._event = event
        self.link: HostLink = None  # type: ignore[assignment]  # set by bind()
        self.reserving = Reserving(self)  # types with resources in quantities (ADR 0060)

    def bind(self, link: HostLink) -> None:
        self.link = link

    def token_of(self, aid: AgentId, partition: int) -> int:
        """This host's writer token for ``aid``: its claim on the partition, or the
        placement's revision when the agent is placed here (whichever is newer)."""
        coord = self._coordinator()
        if coord is None:
            return 0
        claim = coord.claim_revs.get(partition, 0)
        placed = coord.placements.get(aid.key)
        if placed is None:
            return claim
        host, rev = placed
        return max(claim, rev) if host == self.settings.host_id else 0

    def fence_token(self, aid: AgentId, partition: int) -> int | None:
        """``token_of``, or None without cluster membership (no writer fences this host)."""
        return None if self._coordinator() is None else self.token_of(aid, partition)

    def subject(self, host: str, what: str) -> str:
        return self.subjects.sys("host", host, what)

    def may_route(self, act: Activation) -> bool:
        """Whether ``route_elsewhere`` has anything to look at (cluster membership, and the
        agent placed somewhere or its type requiring tags); checked first, without a
        coroutine, because almost no command has."""
        coord = self._coordinator()
        if coord is None:  # a host alone: nothing is placed anywhere
            return False
        cls = act.spec.cls
        if cls.requires or cls.resources:
            return True
        return act.agent_id.key in coord.placements  # its values are (host, revision), never None

    async def route_elsewhere(self, act: Activation, work: Command) -> bool:
        """At the partition's owner: forward ``work`` when the agent is placed on another
        live host, or must be (its type requires resource tags this host lacks). True when
        the work was handed on (or queued), False to process it here."""
        coord = self._coordinator()
        assert coord is not None
        key = act.agent_id.key
        placed = coord.placements.get(key)
        requires = act.spec.cls.requires
        if act.spec.cls.resources:
            return await self.reserving.route(coord, act, work, needs_of(act.spec.cls))
        if placed is None and not requires:  # the common case: one dict lookup
            return False
        me = self.settings.host_id
        alive = coord.members_cache
        able_here = requires <= frozenset(self.settings.tags)
        if placed is not None and placed[0] not in (me, "") and placed[0] in alive:
            await self.forward(work, placed[0])
            return True
        if placed is not None and placed[0] != me and placed[0] not in alive and able_here:
            # the host it was placed on is gone: take it back (a newer token than its own)
            await coord.place(key, me)
            return False
        if able_here:
            return False
        capable = sorted(
            h for h, m in alive.items() if requires <= frozenset(m.get("tags") or ()) and not m.get("draining")
        )
        pipeline = self.pipeline
        if not capable:
            # nobody can run it now: keep it in the stream and tell the caller once
            err = Unavailable(
                f"no host offers {sorted(requires)} for {act.agent_id.type!r}; the command is queued",
                details={"applied": False, "queued": work.kind in ACKED, "requires": sorted(requires)},
            )
            await pipeline.settle(work, Result.NO_CAPABLE_HOST, {}, error=err)
            return True
        target = max(capable, key=lambda h: fnv1a_32(f"{h}/{key}".encode()))  # rendezvous choice
        try:
            rev = await coord.place(key, target)
            await self.request(target, "adopt", {"agent": key, "rev": rev, "snapshot": None})
        except JetAgentsError as exc:
            self.log.warning("placement_failed", agent=str(act.agent_id), target=target, error=str(exc))
            await pipeline.settle(work, Result.PLACEMENT_FAILED, {})
            return True
        await self._event("agent.placed", {"agent": str(act.agent_id), "to": target, "requires": sorted(requires)})
        await self.forward(work, target)
        return True

    async def request(self, host: str, what: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            data = await self.link.request(self.subject(host, what), orjson.dumps(body), self.settings.op_timeout_s)
        except Exception as exc:  # noqa: BLE001 - no responders, timeout, connection
            raise Unavailable(f"host {host} did not answer {what}: {exc!r}") from None
        reply: dict[str, Any] = orjson.loads(data)
        if not reply.get("ok"):
            raise error_from_wire(reply.get("error"))
        return reply

    async def forward(self, work: Command, target: str) -> None:
        """Hand a command to the host its agent is placed on. A durable command is
        acknowledged here only when that host says it finished (``+ACK``/``+TERM``);
        progress (``+WPI``) is relayed; silence means ``-NAK`` and redelivery (the target's
        exactly-once record makes the repeat harmless)."""
        hdrs = dict(work.headers)
        hdrs[H_FWD_SUBJECT] = work.subject
        hdrs[H_FWD_PARTITION] = str(work.partition)
        subject = self.subject(target, "fwd")
        if work.kind == Kind.CALL:
            reply = work.reply_to or work.reply_refused  # the target refuses one it may not answer
            if reply:
                hdrs[H_FWD_REPLY] = reply
            await self.link.publish(subject, work.body, headers=hdrs)
            return
        hdrs[H_FWD_DELIVERIES] = str(work.deliveries)
        hdrs[H_FWD_CSEQ] = str(work.stream_seq)
        pipeline = self.pipeline
        async with self.link.answers() as (inbox, answers):
            await self.link.publish(subject, work.body, reply=inbox, headers=hdrs)
            while True:
                try:
                    async with asyncio.timeout(self.settings.ack_wait_s):
                        answer = await answers.get()
                except TimeoutError:
                    await pipeline.settle(work, Result.FORWARD_LOST, {})
                    return
                if not answer.startswith((b"+ACK", b"+TERM", b"-NAK", b"+WPI")):
                    # never relay anything else: an empty payload would acknowledge it
                    await pipeline.settle(work, Result.FORWARD_LOST, {})
                    return
                await pipeline.ack(work, answer)
                if answer != b"+WPI":
                    return

    async def on_host_msg(self, msg: Received) -> None:
        what = msg.subject.rsplit(".", 1)[1]
        try:
            if what == "fwd":
                await self._on_forwarded(msg)
            elif what == "adopt":
                await self._on_adopt(msg)
            elif what == "release":
                await self._on_release(msg)
            elif what == "migrate":
                await self._on_migrate(msg)
            elif what == "agents":
                await self._on_agents(msg)
            elif what == "evict":
                await self._on_evict(msg)
            elif what == "rollback":  # an operator's (ADR 0053): only hosts and admin publish agt.sys
                await self._on_rollback(msg)
        except Exception as exc:  # noqa: BLE001 - answer, never crash the subscription
            self.log.warning("host_request_failed", what=what, error=repr(exc))
            if msg.reply:
                err = exc if isinstance(exc, JetAgentsError) else InternalError(repr(exc))
                await self.pipeline.reply(msg.reply, encode_error(err), {}, None)

    async def _on_forwarded(self, msg: Received) -> None:
        hdrs = msg.headers or {}
        parts = hdrs.get(H_FWD_SUBJECT, "").split(".")
        if len(parts) < 2:
            return
        agent_type, agent_id = parts[-2], parts[-1]
        partition = int(hdrs.get(H_FWD_PARTITION, "0") or 0)
        coord = self._coordinator()
        placed = coord.placements.get(f"{agent_type}.{agent_id}") if coord is not None else None
        mine = placed is not None and placed[0] == self.settings.host_id
        pipeline = self.pipeline
        route = (partition, agent_type, agent_id)
        if H_FWD_REPLY in hdrs or not msg.reply:  # a call
            if not mine:
                if hdrs.get(H_FWD_REPLY):
                    err = Unavailable("the agent is moving; retry", details={"applied": False})
                    await pipeline.reply(hdrs[H_FWD_REPLY], encode_error(err), {}, None)
                return
            work = pipeline.parse(Kind.CALL, msg.subject, hdrs, msg.data, hdrs.get(H_FWD_REPLY), route)
        else:
            if not mine:  # not (yet) ours: the owner redelivers it shortly
                await pipeline.reply(msg.reply, b"-NAK " + orjson.dumps({"delay": int(0.5 * NS)}), {}, None)
                return
            work = pipeline.parse(
                Kind.FORWARDED,
                msg.subject,
                hdrs,
                msg.data,
                msg.reply,
                route,
                deliveries=int(hdrs.get(H_FWD_DELIVERIES, "1") or 1),
                stream_seq=int(hdrs.get(H_FWD_CSEQ, "0") or 0),
                high=is_high_lane(hdrs.get(H_FWD_SUBJECT, "")),
            )
        pipeline.dispatch(work)

    async def _on_agents(self, msg: Received) -> None:
        """The agents in this host's memory (``jetagents agents ls``), bounded: inspection
        must not turn a host with a million agents into one huge reply."""
        keys = list(self.catalog.activations)
        body: dict[str, Any] = {"host": self.settings.host_id, "total": len(keys), "agents": keys[:AGENTS_LISTED]}
        try:  # one agent's health too (ADR 0059)
            asked = orjson.loads(msg.data or b"{}").get("agent")
        except (orjson.JSONDecodeError, AttributeError):  # not an object: the list only, as before
            asked = None
        if isinstance(asked, str):
            body["health"] = self.catalog.health.of(asked)
        await self.pipeline.reply(msg.reply, encode_ok(body), {}, None)

    async def _on_evict(self, msg: Received) -> None:
        """Forget an agent (deleted, ADR 0052): its next command rebuilds it, and finds the
        tombstone. One still busy keeps its activation, emptied, so its queue runs into it."""
        try:
            key = str(orjson.loads(msg.data)["agent"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise MalformedCommand('an evict request is a JSON object {"agent": "<type>.<id>"}') from None
        body = encode_ok({"host": self.settings.host_id, "evicted": forget(self.catalog, key)})
        await self.pipeline.reply(msg.reply, body, {}, None)

    # -- migration ----------------------------------------------------------------------------
    async def _on_adopt(self, msg: Received) -> None:
        body = orjson.loads(msg.data)
        key, rev = str(body["agent"]), int(body["rev"])
        coord = self._coordinator()
        assert coord is not None
        coord.learn_placement(key, self.settings.host_id, rev)
        activated = False
        snap = body.get("snapshot")
        agent_type, _, agent_id = key.partition(".")
        spec = self.registry.get(agent_type)
        activations = self.catalog.activations
        if snap and spec is not None and key not in activations:
            act = Activation(AgentId(agent_type, agent_id), spec)
            await self.catalog.activate(act, given=snap)
            act.last_used = self.clock.monotonic()
            activations[key] = act
            activated = True
        await self._event("agent.adopted", {"agent": key, "token": rev, "warm": activated})
        if msg.reply:
            await self.pipeline.reply(msg.reply, orjson.dumps({"ok": True, "activated": activated}), {}, None)

    async def _on_release(self, msg: Received) -> None:
        body = orjson.loads(msg.data)
        key, strategy = str(body["agent"]), str(body.get("strategy", "checkpoint"))
        held = self.catalog.activations.get(key)
        if held is not None and _busy(held):
            # a call forwarded here may be running (calls are not acknowledged back to the
            # owner's mailbox): never hand over an agent mid-step; the mover asks again
            raise Unavailable(f"{key} is running a command; ask again", details={"applied": False})
        act = self.catalog.activations.pop(key, None)
        snapshot = None
        if act is not None and act.agent is not None:
            snapshot = await self._hand_over(act, strategy)
        if msg.reply:
            await self.pipeline.reply(msg.reply, orjson.dumps({"ok": True, "snapshot": snapshot}), {}, None)

    async def _hand_over(self, act: Activation, strategy: str) -> dict[str, Any] | None:
        """Let go of an agent in memory: ``checkpoint`` snapshots it first, ``state``
        returns its state for the next host; then forget it (the next command rebuilds it)."""
        snapshot = None
        if strategy == "checkpoint" and act.since_snapshot:
            await self.catalog.snapshot(act)
        elif strategy == "state":
            snapshot = self.catalog.snapshot_body(act)
        self.catalog.evict(act)
        return snapshot

    async def _on_migrate(self, msg: Received) -> None:
        try:
            body = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise MalformedCommand('a migrate request is a JSON object {"type", "id", "target", "strategy"}')
        agent_type, agent_id, target = body.get("type"), body.get("id"), body.get("target")
        if not (is_valid_token(agent_type) and is_valid_token(agent_id)):
            raise MalformedCommand("migrate needs a valid type and id")
        if not is_valid_token(target):
            raise MalformedCommand("migrate needs a valid target host id")
        if body.get("strategy", "checkpoint") not in STRATEGIES:
            raise MalformedCommand(f"strategy must be one of {', '.join(STRATEGIES)}")
        partition = partition_of(agent_type, agent_id, self.settings.partitions)
        if not self._owns(partition):
            raise Unavailable("this host does not own the agent's partition; ask its owner", details={"applied": False})
        # queued behind the agent's earlier commands, so none of them is lost or reordered
        route = (partition, agent_type, agent_id)
        pipeline = self.pipeline
        pipeline.dispatch(pipeline.parse(Kind.MIGRATE, msg.subject, msg.headers, msg.data, msg.reply, route))

    async def _on_rollback(self, msg: Received) -> None:
        body = orjson.loads(msg.data)
        agent_type, agent_id, to_seq = body.get("type"), body.get("id"), body.get("to")
        if not (is_valid_token(agent_type) and is_valid_token(agent_id) and isinstance(to_seq, int)):
            raise MalformedCommand('a rollback request is a JSON object {"type", "id", "to": <sequence>, "by"}')
        spec = self.registry.get(agent_type)
        if spec is None:
            raise UnknownAgentType(f"no agent type {agent_type!r} here")
        if not self._owns(partition_of(agent_type, agent_id, self.settings.partitions)):
            raise Unavailable("this host does not own the agent's partition; ask its owner", details={"applied": False})
        key = f"{agent_type}.{agent_id}"
        act = self.catalog.activations.get(key) or Activation(AgentId(agent_type, agent_id), spec)
        if _busy(act):
            raise Unavailable(f"{key} is running a command; ask again", details={"applied": False})
        scratch = Activation(act.agent_id, spec)
        result = await rollback(self.catalog, act, scratch, to_seq, str(body.get("by", ""))[:200])
        if msg.reply:
            await self.pipeline.reply(msg.reply, encode_ok(result), {}, None)

    async def migrate(self, act: Activation, work: Command) -> None:
        """Move one agent to another host (at its partition's owner, in mailbox order):
        ``checkpoint`` snapshots it to KV first, ``state`` hands the state over directly,
        ``cold`` lets the target rebuild it from the log. Later commands are forwarded."""
        try:
            body = orjson.loads(work.body)
            target, strategy = str(body["target"]), str(body.get("strategy", "checkpoint"))
            coord = self._coordinator()
            if coord is None:
                raise Unavailable("migration needs cluster membership (membership=ring)")
            if target not in coord.members_cache or coord.members_cache[target].get("draining"):
                raise Unavailable(f"host {target!r} is not a live member", details={"applied": False})
            me = self.settings.host_id
            key = act.agent_id.key
            needs = needs_of(act.spec.cls) if act.spec.cls.resources else None
            # its reservation moves with it: held on the target first, only if it has room (ADR 0060)
            held = await self.reserving.hold(coord, key, needs, target) if needs else None
            try:
                placed = coord.placements.get(key)
                source = placed[0] if placed and placed[0] in coord.members_cache else me
                snapshot: dict[str, Any] | None = None
                if source == me:
                    if act.agent is not None:
                        snapshot = await self._hand_over(act, strategy)
                elif source != target:
                    released = await self.request(source, "release", {"agent": key, "strategy": strategy})
                    snapshot = released.get("snapshot")
            except BaseException:  # re-raised: the hold is taken off, unless the store is away too (it lapses)
                if held:
                    with contextlib.suppress(JetAgentsError):
                        await self.reserving.unhold(coord, key, held)
                raise
            if needs and held:  # on the hold's own revision: the move stands only if the hold did
                rev = await self.reserving.move(coord, key, target, needs, held)
            else:
                rev = await coord.place(key, target)
            if target != me:
                await self.request(target, "adopt", {"agent": key, "rev": rev, "snapshot": snapshot})
            elif snapshot is not None:
                await self.catalog.activate(act, given=snapshot)
            result = {"agent": str(act.agent_id), "from": source, "to": target, "strategy": strategy, "token": rev}
            self.log.info("agent_migrated", **result)
            await self._event("agent.migrated", result)
            reply = encode_ok(result)
        except JetAgentsError as err:
            reply = encode_error(err)
        except (KeyError, ValueError) as exc:
            reply = encode_error(MalformedCommand(f"bad migrate request: {exc!r}"))
        await self.pipeline.reply(work.reply_to, reply, {}, work)
