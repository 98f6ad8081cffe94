"""Agents whose type declares resources with quantities (ADR 0060): placed where they fit,
with a reservation that is the placement record itself.

At the partition's owner, an agent of such a type is always placed: on the host its record
names while that host is a member, else on the host ``choose_host`` picks from the members'
capacities, the reservations the records hold and the measured load. The record
(``place.<type>.<id>`` = ``{"host", "needs", "ts_ms"}``) is written with CAS, then checked
against the records older than it (``admitted``): of two owners that raced for the last room
on a host, the younger withdraws and chooses again. When nothing fits, a call is refused
``unavailable`` (``reason: insufficient_resources``, not applied) and a durable command stays
in the stream and is tried again (``-NAK`` with a delay): it is placed once room appears.

A reservation ends when its record stops naming a live host: a placed host that has not had
the agent in memory for ``placement_release_s`` (passivated, deleted) writes the record back
to ``{"host": ""}``; a host that dies leaves records naming a non-member, which count for
nobody and are overwritten when the agent is next placed. Nothing lives only in memory, so a
crash or a new leader sees exactly what the records say.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._core.balance import AgentMove, Shedder, movable_agents
from .._core.command import ACKED, Command
from .._core.errors import JetAgentsError, Unavailable
from .._core.ids import partition_of
from .._core.kv import CasConflict
from .._core.outcome import Result
from .._core.resources import admitted, choose_host, host_views, load_score, parse_needs, reservations

if TYPE_CHECKING:
    from .catalog import Activation
    from .coordination import Coordinator
    from .placement import Placement

ATTEMPTS = 3  # placements withdrawn after losing a race, before the command is tried later
# a migration's hold on its target lapses after this, should its owner die mid-move
HOLD_MS = 60_000


def needs_of(cls: type) -> dict[str, float]:
    """A type's declared resources; a type that declares junk fails loudly at its first command."""
    return parse_needs(getattr(cls, "resources", None) or {})


class Reserving:
    """Placement with reservations, for the ``Placement`` part of one host."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self._idle_since: dict[str, float] = {}
        self._shedder: Shedder | None = None  # made at the first interval, from the cluster's policy

    @property
    def me(self) -> str:
        return self.placement.settings.host_id

    async def route(self, coord: Coordinator, act: Activation, work: Command, needs: Mapping[str, float]) -> bool:
        """At the partition's owner: True when ``work`` was forwarded or settled, False to
        run it here (the agent is placed on this host)."""
        key = act.agent_id.key
        placed = coord.placements.get(key)
        pl = self.placement
        if placed is not None and placed[0] and placed[0] in coord.members_cache:
            if placed[0] == self.me:
                return False
            await pl.forward(work, placed[0])
            return True
        try:
            target = await self.place(coord, key, needs)
        except (JetAgentsError, CasConflict) as exc:
            pl.log.warning("placement_failed", agent=str(act.agent_id), error=str(exc))
            await pl.pipeline.settle(work, Result.PLACEMENT_FAILED, {})
            return True
        if target is None:
            err = Unavailable(
                f"no host has room for {dict(needs)} ({act.agent_id.type!r}); the command is queued"
                if work.kind in ACKED
                else f"no host has room for {dict(needs)} ({act.agent_id.type!r}); retry later",
                details={
                    "applied": False,
                    "queued": work.kind in ACKED,
                    "reason": "insufficient_resources",
                    "needs": dict(needs),
                },
            )
            await pl.pipeline.settle(work, Result.NO_CAPABLE_HOST, {}, error=err)
            return True
        host, rev = target
        await pl._event("agent.placed", {"agent": str(act.agent_id), "to": host, "needs": dict(needs)})
        if host == self.me:
            return False
        try:
            await pl.request(host, "adopt", {"agent": key, "rev": rev, "snapshot": None})
        except JetAgentsError as exc:
            pl.log.warning("placement_failed", agent=str(act.agent_id), target=host, error=str(exc))
            await pl.pipeline.settle(work, Result.PLACEMENT_FAILED, {})
            return True
        await pl.forward(work, host)
        return True

    async def place(self, coord: Coordinator, key: str, needs: Mapping[str, float]) -> tuple[str, int] | None:
        """Choose a host, write the record, keep it if it stands beside the older ones."""
        s = self.placement.settings
        store = coord.store
        record_key = f"place.{key}"
        for _ in range(ATTEMPTS):
            records = await store.scan("place.")
            others = [(e.value, e.rev) for k, e in records.items() if k != record_key]
            now_ms = coord.clock.wall_ms()
            views = host_views(coord.members_cache, others, s.load_weights, now_ms)
            host = choose_host(key, needs, views, eps=s.placement_eps)
            if host is None:
                return None
            value = {"host": host, "needs": dict(needs), "ts_ms": now_ms}
            mine = records.get(record_key)
            rev = await (store.create(record_key, value) if mine is None else store.update(record_key, value, mine.rev))
            try:
                after = await store.scan("place.", after_rev=rev)  # every record older than ours
            except BaseException:
                # never checked, it must not stand: every host reads the records and would run
                # the agent there (the store away for the withdrawal too: it stands, see ADR 0060)
                with contextlib.suppress(JetAgentsError, CasConflict):
                    await self._release(coord, key, rev)
                raise
            others = [(e.value, e.rev) for k, e in after.items() if k != record_key]
            older = reservations(others, below_rev=rev, now_ms=now_ms)
            if admitted(needs, views[host].capacity, older.get(host, {})):
                coord.learn_placement(key, host, rev)  # only once it stands
                return host, rev
            # a younger placement than one that took the same room: give it back, choose again
            await self._release(coord, key, rev)
        return None

    async def hold(self, coord: Coordinator, key: str, needs: Mapping[str, float], target: str) -> int:
        """Before a migration, while the agent keeps its place: reserve ``needs`` on
        ``target`` (the record's ``to``, CAS on its revision) and keep the hold only if it fits
        beside the reservations older than it there, as ``place`` does. Returns the hold's
        revision (the order of the reservation on ``target``, ``since`` once moved); no room:
        the hold is taken off and ``Unavailable`` raised. Checking before writing let two
        moves (or a move and a placement) both see the last room and both take it."""
        store = coord.store
        record_key = f"place.{key}"
        now_ms = coord.clock.wall_ms()
        mine = await store.get(record_key)
        value: dict[str, Any] = dict(mine.value) if mine is not None else {"host": ""}
        if mine is not None and value.get("host") and not value.get("since"):
            value["since"] = mine.rev  # the reservation where it runs keeps its order
        value.update(needs=dict(needs), to=target, to_until_ms=now_ms + HOLD_MS)
        try:
            rev = await (store.create(record_key, value) if mine is None else store.update(record_key, value, mine.rev))
        except CasConflict:
            raise Unavailable(f"{key} was placed again meanwhile; ask again", details={"applied": False}) from None
        try:
            records = await store.scan("place.", after_rev=rev)
        except BaseException:  # unchecked: taken off rather than left reserving for HOLD_MS
            with contextlib.suppress(JetAgentsError):
                await self.unhold(coord, key, rev)
            raise
        others = [(e.value, e.rev) for k, e in records.items() if k != record_key]
        view = host_views(coord.members_cache, others, self.placement.settings.load_weights, now_ms).get(target)
        older = reservations(others, below_rev=rev, now_ms=now_ms).get(target, {})
        if view is not None and admitted(needs, view.capacity, older):
            return rev
        await self.unhold(coord, key, rev)
        raise Unavailable(
            f"host {target!r} has no room for {dict(needs)}",
            details={"applied": False, "reason": "insufficient_resources", "needs": dict(needs)},
        )

    async def move(self, coord: Coordinator, key: str, target: str, needs: Mapping[str, float], held: int) -> int:
        """A migration's last write, once its hold stood and the source let the agent go: the
        record names ``target``, its reservation ordered by the hold (``since``). The write is
        a compare-and-set on the hold's own revision: a record rewritten since has lost the
        hold (the placed host released the idle agent: ``{"host": ""}``), and placements on
        ``target`` checked meanwhile did not count it, so claiming the hold's order then
        would put a reservation on ``target`` that no check saw. Raises ``Unavailable`` (not
        applied: the agent is where its record says, the mover asks again) instead."""
        value = {"host": target, "needs": dict(needs), "since": held, "ts_ms": coord.clock.wall_ms()}
        try:
            rev = await coord.store.update(f"place.{key}", value, held)
        except CasConflict:
            raise Unavailable(
                f"{key}'s room on {target!r} was given back while it moved; ask again", details={"applied": False}
            ) from None
        coord.learn_placement(key, target, rev)
        return rev

    async def unhold(self, coord: Coordinator, key: str, rev: int) -> None:
        """Take a migration's hold off its record (the move did not happen); a record
        rewritten since has lost the hold already, and an unreachable store lets it lapse."""
        entry = await coord.store.get(f"place.{key}")
        if entry is None or entry.rev != rev:
            return
        value = {k: v for k, v in entry.value.items() if k not in ("to", "to_until_ms")}
        with contextlib.suppress(CasConflict):
            coord.learn_placement(key, str(value.get("host", "")), await coord.store.update(f"place.{key}", value, rev))

    async def shed(self, coord: Coordinator) -> list[AgentMove]:
        """Rebalancing placed agents (ADR 0044): while this host stays hot, ask the owners
        of some of its placed agents' partitions to migrate them (``checkpoint``) to cooler
        hosts with room. A migration is a command in the agent's mailbox at its owner,
        behind the commands before it, and the placed host refuses to release an agent
        that is running one: nothing moves mid-step."""
        cfg = coord.cfg
        if cfg.balance is None or cfg.balance_interval_s <= 0 or coord.ring is None:
            return []
        if self._shedder is None:
            self._shedder = Shedder(cfg.balance)
        s = self.placement.settings
        members = coord.members_cache
        scores = {h: load_score(m, s.load_weights) for h, m in members.items() if not m.get("draining")}
        if not self._shedder.ready(self.me, scores):
            return []
        records = await coord.store.scan("place.")
        hold_ms = cfg.balance.cooldown * cfg.balance_interval_s * 1000
        placed = ((k.removeprefix("place."), e.value) for k, e in records.items())
        mine = movable_agents(placed, self.me, coord.clock.wall_ms(), hold_ms)
        views = host_views(members, [(e.value, e.rev) for e in records.values()], s.load_weights)
        # what follows what the host runs: CPU and network, not the process's memory
        movable = load_score(members.get(self.me, {}), {k: w for k, w in s.load_weights.items() if k != "memory"})
        moves = self._shedder.plan(self.me, scores, movable, mine, views, eps=s.placement_eps)
        pl = self.placement
        for m in moves:
            agent_type, _, agent_id = m.agent.partition(".")
            owner = coord.ring.owners[partition_of(agent_type, agent_id, s.partitions)]
            body = {"type": agent_type, "id": agent_id, "target": m.target, "strategy": "checkpoint"}
            try:
                await pl.request(owner, "migrate", body)
            except JetAgentsError as exc:  # busy, no room any more, owner away: next interval
                pl.log.info("agent_shed_failed", agent=m.agent, target=m.target, error=str(exc))
                continue
            pl.log.info("agent_shed", agent=m.agent, source=m.source, target=m.target, score=scores[self.me])
        return moves

    async def _release(self, coord: Coordinator, key: str, rev: int) -> None:
        value = {"host": "", "needs": {}, "ts_ms": coord.clock.wall_ms(), "released_by": self.me}
        new = await coord.store.update(f"place.{key}", value, rev)
        coord.learn_placement(key, "", new)

    async def run(self) -> None:
        """The host's background: every quarter of ``placement_release_s``
        ``release_idle``; every ``rebalance_interval_s`` (when on) ``shed``."""
        pl = self.placement
        release_every_s = max(0.5, pl.settings.placement_release_s / 4)
        shed_every_s = pl.settings.rebalance_interval_s
        start = pl.clock.monotonic()
        next_release, next_shed = start + release_every_s, start + shed_every_s
        while True:
            due = min(next_release, next_shed) if shed_every_s > 0 else next_release
            await pl.clock.sleep(max(0.05, due - pl.clock.monotonic()))
            coord = pl._coordinator()
            now = pl.clock.monotonic()
            if coord is None:
                continue
            try:
                if now >= next_release:
                    next_release = now + release_every_s
                    for key in await self.release_idle(coord, pl.catalog.activations, now):
                        await pl._event("agent.unplaced", {"agent": key, "host": self.me})
                if shed_every_s > 0 and now >= next_shed:
                    next_shed = now + shed_every_s
                    for m in await self.shed(coord):
                        await pl._event("agent.shed", {"agent": m.agent, "from": m.source, "to": m.target})
            except (JetAgentsError, CasConflict) as exc:  # the store is away: next round
                pl.log.debug("placement_release_failed", error=str(exc))

    async def release_idle(self, coord: Coordinator, active: Mapping[str, Any], now: float) -> list[str]:
        """On a placed host: give back the reservations of agents out of memory for
        ``placement_release_s`` (passivated or deleted). Returns the agents released."""
        grace = self.placement.settings.placement_release_s
        released: list[str] = []
        mine = {k for k, (h, _) in coord.placements.items() if h == self.me}
        for key in list(self._idle_since):
            if key not in mine or key in active:
                del self._idle_since[key]
        for key in sorted(mine - set(active)):
            since = self._idle_since.setdefault(key, now)
            if now - since < grace:
                continue
            entry = await coord.store.get(f"place.{key}")
            if entry is None or entry.value.get("host") != self.me or not entry.value.get("needs"):
                self._idle_since.pop(key, None)
                continue
            try:
                await self._release(coord, key, entry.rev)
            except CasConflict:
                continue  # placed again meanwhile: look again next round
            self._idle_since.pop(key, None)
            released.append(key)
        return released
