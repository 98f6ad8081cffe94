"""Per-agent health (ADR 0059): each action's time measured, and the type's policy acted on.

What is measured, per agent and per type on this host:

* **wall time** of every action run (``loop.time()`` from its first step to its outcome:
  waits included, the commit after it not);
* **CPU time** of the action's own code, for types whose policy bounds CPU (or every type
  with ``HostSettings.health_measure_all``): the thread CPU clock read around each slice of
  the action between two of its awaits (``Deadline`` drives those slices), so what other
  tasks run while it waits is not counted; what runs on its behalf elsewhere (the NATS
  client parsing its replies, the host encoding its commit) is not counted either;
* **instance memory**, for types whose policy bounds it (or every type with
  ``health_measure_all``): the bytes of the objects reachable from the agent instance's own
  attributes (not its state, not its context), every ``memory_every`` commands, by a walk
  bounded to ``_WALK_MAX`` objects (past it the figure is a lower bound). Python cannot say
  which allocations belong to which agent; this is what a restart frees;
* **state size**: the bytes of the agent's snapshot as last written (free: the snapshot is
  serialized anyway).

What is done (``HealthPolicy``): an agent (or a type) over its CPU share is throttled: its
new commands are refused at intake with ``throttled`` (calls; retryable, ``retry_after_s``)
or handed back (durable) until its decayed share is under the limit again; or the agent is
passivated or restarted after its command. An agent over its memory is restarted (instance
dropped, rebuilt from its snapshot and log at its next command) or passivated. Passivations
and restarts of one agent are at most one per ``min_interval_s``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import types
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .._core.clock import Timers
from .._core.errors import Throttled
from .._core.health import Decayed, HealthPolicy
from .._obs.metrics import Metrics
from .._obs.telemetry import AGENT_TYPE, HostTelemetry
from .._settings import HostSettings
from .deadline import NOT_RUN, Deadline

if TYPE_CHECKING:
    from .catalog import Activation, Catalog

__all__ = ["AgentHealth", "Health", "held_bytes"]

_WALK_MAX = 10_000  # objects visited per instance measurement (bounds its cost: a few ms)
# never walked into: shared by every instance, not held by one
_SHARED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    asyncio.AbstractEventLoop,
)
_LEAVES = (str, bytes, bytearray, int, float, bool, complex, type(None))
_MEASURE_ALL = HealthPolicy(memory_every=64)  # health_measure_all: measured, nothing bounded


def held_bytes(agent: Any, exclude: tuple[Any, ...] = ()) -> tuple[int, bool]:
    """Bytes of the objects reachable from ``agent``'s own attributes (``__dict__``), each
    counted once, skipping classes, modules, functions and ``exclude``; and whether the walk
    stopped at ``_WALK_MAX`` objects (the figure is then a lower bound)."""
    attrs = getattr(agent, "__dict__", None)
    if not attrs:
        return 0, False
    seen = {id(agent), id(attrs), *map(id, exclude)}
    total = sys.getsizeof(attrs)
    stack = list(attrs.values())
    visited = 0
    while stack:
        if visited >= _WALK_MAX:
            return total, True
        obj = stack.pop()
        oid = id(obj)
        if oid in seen or isinstance(obj, _SHARED):
            continue
        seen.add(oid)
        visited += 1
        total += sys.getsizeof(obj)
        if isinstance(obj, _LEAVES):
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        else:
            stack.extend(gc.get_referents(obj))
    return total, False


class AgentHealth:
    """One agent's figures (on its ``Activation``) and its policy's state."""

    __slots__ = (
        "acted_at",
        "commands",
        "cpu",
        "cpu_s",
        "due",
        "instance_bytes",
        "kind",
        "memory_every",
        "policy",
        "restarts",
        "state_bytes",
        "throttled",
        "wall_max_s",
        "wall_s",
    )

    def __init__(self, policy: HealthPolicy | None, kind: _TypeHealth) -> None:
        self.policy = policy
        self.kind = kind  # its type's figures on this host
        self.commands = 0
        self.wall_s = 0.0
        self.wall_max_s = 0.0
        self.cpu_s = 0.0
        every = policy is _MEASURE_ALL
        self.cpu = Decayed(policy.window_s) if policy is not None and (every or policy.measures_cpu) else None
        # instances measured every memory_every commands (0: never)
        self.memory_every = policy.memory_every if policy is not None and (every or policy.memory_bytes) else 0
        self.instance_bytes: int | None = None
        self.state_bytes: int | None = None
        self.throttled = False
        self.due: str | None = None  # "restart" or "passivate", carried out after its command
        self.acted_at = float("-inf")
        self.restarts = 0

    def to_json(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "commands": self.commands,
            "wall_s": round(self.wall_s, 6),
            "wall_max_s": round(self.wall_max_s, 6),
        }
        if self.cpu is not None:
            out["cpu_s"] = round(self.cpu_s, 6)
            out["cpu_share"] = round(self.cpu.share(now), 4)
        if self.instance_bytes is not None:
            out["instance_bytes"] = self.instance_bytes
        if self.state_bytes is not None:
            out["state_bytes"] = self.state_bytes
        out["throttled"] = self.throttled
        out["restarts"] = self.restarts
        return out


class _TypeHealth:
    __slots__ = ("avg_cpu_s", "commands", "cpu", "cpu_s", "throttled", "throttled_agents", "wall_s")

    def __init__(self, policy: HealthPolicy | None) -> None:
        self.commands = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.cpu = Decayed(policy.window_s) if policy is not None and policy.type_cpu_share is not None else None
        self.throttled = False  # the whole type (type_cpu_share): its last command was refused
        self.throttled_agents = 0  # its agents throttled one by one (cpu_share)
        # recent CPU per command (moving average): what an admitted command is expected to
        # use, reserved in ``cpu`` at admission so a burst cannot all pass before any has run
        self.avg_cpu_s = 0.0


class Health:
    """Measures each action run, keeps the figures, throttles, restarts and passivates."""

    def __init__(
        self, settings: HostSettings, catalog: Catalog, tel: HostTelemetry, metrics: Metrics, log: Any
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._clock = catalog.clock
        self._tel = tel
        self._metrics = metrics
        self._log = log
        self._policies: dict[str, HealthPolicy | None] = {}
        self._types: dict[str, _TypeHealth] = {}
        # types with a type_cpu_share or a throttled agent: intake asks only about them
        self.watched: set[str] = set()
        self._done = self._ran  # bound once: one less object per command
        m = tel.meter
        self._wall = m.create_histogram(
            "jetagents.host.action.duration", "s", "one action run, first step to outcome (waits included)"
        )
        self._cpu = m.create_histogram(
            "jetagents.host.action.cpu_time", "s", "thread CPU of one action run's own slices (types measured)"
        )
        self._memory = m.create_histogram(
            "jetagents.host.agent.memory", "By", "objects held by one agent instance besides its state, when measured"
        )
        metrics.add_counter(
            "throttled", m.create_counter("jetagents.host.throttled", "{command}", "refused: over a CPU share")
        )
        metrics.add_counter(
            "health_restarts", m.create_counter("jetagents.host.health.restarts", "{agent}", "restarted by policy")
        )
        metrics.add_counter(
            "health_passivations",
            m.create_counter("jetagents.host.health.passivations", "{agent}", "passivated by policy"),
        )

    def policy(self, agent_type: str, cls: type) -> HealthPolicy | None:
        """The type's policy: the settings', else its class's, else (``health_measure_all``)
        measure without limits."""
        try:
            return self._policies[agent_type]
        except KeyError:
            s = self._settings
            found = s.health.get(agent_type) or getattr(cls, "health", None)
            if found is None and s.health_measure_all:
                found = _MEASURE_ALL
            self._policies[agent_type] = found
            if found is not None and found.type_cpu_share is not None:
                self.watched.add(agent_type)
            return found

    def _kind(self, agent_type: str, policy: HealthPolicy | None) -> _TypeHealth:
        kind = self._types.get(agent_type)
        if kind is None:
            kind = self._types[agent_type] = _TypeHealth(policy)
        return kind

    # -- around each action run --------------------------------------------------------------
    def agent_health(self, act: Activation) -> AgentHealth:
        """``act``'s figures, made at its first action run."""
        h = act.health
        if h is None:
            agent_type = act.agent_id.type
            policy = self.policy(agent_type, act.spec.cls)
            h = act.health = AgentHealth(policy, self._kind(agent_type, policy))
        return h

    def start(self, act: Activation, coro: Coroutine[Any, Any, Any], loop: Timers) -> tuple[bool, Any, float]:
        """Run an action's first stretch here, unless ``act``'s health measures CPU (its
        ``Deadline`` does that): ``(True, result, started)`` when it ended in it (measured;
        what it raised propagates, measured too), else ``(False, first, started)``, the
        ``first`` and ``started`` its ``deadline`` goes on from. Most actions never wait,
        and need no ``Deadline``."""
        started = loop.time()
        if (act.health or self.agent_health(act)).cpu is not None:
            return False, NOT_RUN, started
        try:
            first = coro.send(None)
        except StopIteration as stop:  # it ended without waiting (the common case): measured
            self.ran(act, loop.time() - started, 0.0)
            return True, stop.value, started
        except BaseException:  # it raised without waiting: measured too
            self.ran(act, loop.time() - started, 0.0)
            raise
        return False, first, started

    def deadline(
        self,
        act: Activation,
        coro: Coroutine[Any, Any, Any],
        loop: Timers,
        limit_s: float,
        on_late: Callable[[], None],
        *,
        started: float,
        first: Any,
    ) -> Deadline:
        """The action's ``Deadline``, measuring it for ``act``: it goes on from what ``start``
        returned (``first`` is ``NOT_RUN`` when ``start`` left the first stretch to it)."""
        return Deadline(
            coro,
            loop,
            started + limit_s,
            on_late=on_late,
            cpu=self.agent_health(act).cpu is not None,
            done=self._done,
            tag=act,
            started=started,
            first=first,
        )

    def _ran(self, run: Deadline) -> None:
        self.ran(run.tag, run.wall_s, run.cpu_s)

    def ran(self, act: Activation, wall_s: float, cpu_s: float) -> None:
        """One action run of ``act`` ended: ``wall_s`` from its first step to its outcome,
        ``cpu_s`` of its own slices (0 unless its health measures CPU)."""
        h = act.health
        assert h is not None
        h.commands += 1
        h.wall_s += wall_s
        if wall_s > h.wall_max_s:
            h.wall_max_s = wall_s
        t = h.kind
        t.commands += 1
        t.wall_s += wall_s
        if self._tel.metering:
            self._wall.record(wall_s, {AGENT_TYPE: act.agent_id.type})
        if h.policy is None:  # most types: nothing more to measure
            return
        policy = h.policy
        metering = self._tel.metering  # read again only here: the common path above reads it once, unstored
        agent_type = act.agent_id.type
        now = self._clock.monotonic()
        if h.cpu is not None:
            h.cpu_s += cpu_s
            t.cpu_s += cpu_s
            h.cpu.add(cpu_s, now)
            if metering:
                self._cpu.record(cpu_s, {AGENT_TYPE: agent_type})
            limit = policy.cpu_share
            if limit is not None and h.cpu.share(now) > limit:
                if policy.on_cpu == "throttle":
                    if not h.throttled:
                        h.throttled = True
                        t.throttled_agents += 1
                        self.watched.add(agent_type)
                        self._log.info("agent_throttled", agent=str(act.agent_id), cpu_share=h.cpu.share(now))
                else:
                    self._due(act, h, policy.on_cpu, now)
            if t.cpu is not None:  # what it used, less what its admission reserved (about the average)
                t.cpu.add(cpu_s - t.avg_cpu_s, now)
                t.avg_cpu_s += (cpu_s - t.avg_cpu_s) * 0.2
        if h.memory_every and h.commands % h.memory_every == 0 and act.agent is not None:
            agent = act.agent
            size, _partial = held_bytes(agent, (agent.ctx, agent._state))
            h.instance_bytes = size
            if metering:
                self._memory.record(size, {AGENT_TYPE: agent_type})
            if policy.memory_bytes is not None and size > policy.memory_bytes:
                self._due(act, h, policy.on_memory, now)

    def _due(self, act: Activation, h: AgentHealth, what: str, now: float) -> None:
        policy = h.policy
        assert policy is not None
        if now - h.acted_at >= policy.min_interval_s:  # rate-limited: a policy that does not cure must not loop
            h.due = what

    # -- after its command (the scheduler) -----------------------------------------------------
    def act_on(self, act: Activation) -> None:
        """Carry out a restart or passivation decided during the agent's last command; the
        agent is between commands (none running, possibly more in its mailbox)."""
        h = act.health
        assert h is not None
        what, h.due = h.due, None
        if act.frames or act.agent is None:  # another of its actions still runs (re-entrant call)
            return
        catalog = self._catalog
        aid = act.agent_id
        h.acted_at = self._clock.monotonic()
        if what == "passivate" and not (act.scheduled or act.mailbox or act.held):
            if h.throttled:  # its throttle leaves with it
                h.kind.throttled_agents -= 1
            catalog.passivate(aid.key, act)
            self._metrics.inc("health_passivations", agent_type=aid.type)
            self._log.warning("agent_passivated_by_policy", agent=str(aid), instance_bytes=h.instance_bytes)
            return
        # a restart (or a passivation of an agent with commands waiting): its instance is
        # dropped; its next command rebuilds it from its snapshot and log, state intact
        catalog.evict(act)
        h.restarts += 1
        h.instance_bytes = None
        self._metrics.inc("health_restarts", agent_type=aid.type)
        self._log.warning("agent_restarted_by_policy", agent=str(aid), reason=what, restarts=h.restarts)

    # -- intake ---------------------------------------------------------------------------------
    def admit(self, agent_type: str, act: Activation | None) -> Throttled | None:
        """``throttled`` when the agent or its whole type is over its CPU share, else None
        (and, for a type with ``type_cpu_share``, its expected CPU reserved); called only for
        ``watched`` types. No timer lifts a throttle: the first command under the limit does."""
        now = self._clock.monotonic()
        policy = self._policies.get(agent_type)
        if policy is None:
            self.watched.discard(agent_type)
            return None
        t = self._kind(agent_type, policy)
        wait_s, reason = 0.0, ""
        limit = policy.type_cpu_share
        if limit is not None and t.cpu is not None:
            wait_s = t.cpu.under_in(limit, now)
            if (wait_s > 0) != t.throttled:
                t.throttled = wait_s > 0
                self._log.info("type_throttled" if t.throttled else "type_unthrottled", agent_type=agent_type)
            reason = "type_cpu"
        h = act.health if act is not None else None
        if h is not None and h.throttled and h.cpu is not None and policy.cpu_share is not None:
            agent_wait_s = h.cpu.under_in(policy.cpu_share, now)
            if agent_wait_s <= 0:
                h.throttled = False
                t.throttled_agents -= 1
            elif agent_wait_s > wait_s:
                wait_s, reason = agent_wait_s, "cpu"
        if limit is None and t.throttled_agents <= 0:
            self.watched.discard(agent_type)
        if wait_s <= 0:
            if limit is not None and t.cpu is not None:
                t.cpu.add(t.avg_cpu_s, now)
            return None
        self._metrics.inc("throttled", agent_type=agent_type)
        retry_after_s = round(max(wait_s, 0.001), 3)
        return Throttled(
            f"{agent_type} is over its CPU share ({reason}); retry in {retry_after_s:g} s",
            details={"applied": False, "reason": reason, "retry_after_s": retry_after_s},
        )

    # -- inspection -----------------------------------------------------------------------------
    def figures(self, agent_type: str) -> dict[str, Any]:
        """The type's figures on this host since it started."""
        t = self._types.get(agent_type)
        if t is None:
            return {"commands": 0, "wall_s": 0.0, "cpu_s": 0.0, "throttled": False}
        return {"commands": t.commands, "wall_s": t.wall_s, "cpu_s": t.cpu_s, "throttled": t.throttled}

    def of(self, key: str) -> dict[str, Any] | None:
        """An agent's figures and its type's on this host (``jetagents agent show``)."""
        act = self._catalog.activations.get(key)
        if act is None or act.health is None:
            return None
        now = self._clock.monotonic()
        out = act.health.to_json(now)
        t = self._types.get(act.agent_id.type)
        if t is not None:
            out["type"] = {"commands": t.commands, "wall_s": round(t.wall_s, 6), "throttled": t.throttled}
            if t.cpu is not None or act.health.cpu is not None:
                out["type"]["cpu_s"] = round(t.cpu_s, 6)
            if t.cpu is not None:
                out["type"]["cpu_share"] = round(t.cpu.share(now), 4)
        return out
