"""Call chains on the host (ADR 0042 section 7): each running action's frame, and what a
command arriving for a busy agent does: queue, run at once (re-entrant), or fail fast.

The scheduler processes every command inside a ``Frame`` (``enter``/``leave``): the chain it belongs
to, the path it was called along, and the agents it waits on, which the client's calls made
inside the action mark (``_client/client.py``). The scheduler asks ``admit`` about a command
carrying ``Agt-Call-Chain`` before queueing it behind the agent's running command; the
decision itself is ``_core/callchain.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import Token
from typing import TYPE_CHECKING, Any

from .._core.agent import Agent, _apply, _draft_of
from .._core.callchain import FRAME, CallChain, Frame, Verdict, decide, parse, refusal
from .._core.command import Command, Kind
from .._core.errors import JetAgentsError
from .._core.wire import H_CALL_CHAIN, H_CALL_PATH, decode_command
from .._settings import HostSettings

if TYPE_CHECKING:
    from .catalog import Activation
    from .outcomes import Outcomes
    from .supervisor import Supervisor


class CallChains:
    """Frames of running actions and the admission of chained commands: one per host."""

    def __init__(
        self,
        settings: HostSettings,
        log: Any,
        *,
        outcomes: Outcomes,
        supervisor: Supervisor,
        refuse: Callable[[Command, JetAgentsError], Coroutine[Any, Any, None]],
        untrack: Callable[[Command], None],
        process: Callable[[Activation, Command], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._log = log
        self._outcomes = outcomes
        self._supervisor = supervisor
        self._refuse = refuse
        self._untrack = untrack
        self._process = process
        self._path_max = settings.call_path_max
        # names the chains of commands without an id (calls): unique on this host
        self._seq = itertools.count()
        self._prefix = f"{settings.host_id}~"
        self._namer = self._new_chain  # bound once: one less object per command
        self._make = self._frame  # bound once: in every command's frame seed

    # -- the scheduler ---------------------------------------------------------------------
    def admit(self, act: Activation, cmd: Command) -> bool:
        """Called for a command carrying ``Agt-Call-Chain``, before it is queued. True when
        it was taken care of here: refused (a bad header, too deep, a cycle, a deadlock) or
        started at once (re-entrant); False: queue it as any command."""
        hdrs = cmd.headers
        try:
            chain = parse(hdrs.get(H_CALL_CHAIN), hdrs.get(H_CALL_PATH), self._settings.call_path_max)
        except JetAgentsError as err:
            self._supervisor.spawn("side", self._refuse(cmd, err))
            return True
        cmd.chain = chain
        frames = act.frames
        if not act.scheduled or not frames or cmd.kind == Kind.MIGRATE:
            return False
        me = act.agent_id.key
        verdict, waited = decide(chain, me, frames)
        if verdict is Verdict.QUEUE:
            return False
        assert chain is not None
        if verdict is Verdict.REENTER and not self._reentrant(act, cmd):
            verdict = Verdict.CYCLE
        if verdict is Verdict.REENTER:
            self._supervisor.spawn("workers", self._nested(act, cmd))
            return True
        refused = refusal(verdict, chain, me, waited)
        self._log.warning("call_refused", agent=me, code=refused.code, chain=chain.chain, path=list(chain.path))
        self._supervisor.spawn("side", self._refuse(cmd, refused))
        return True

    @staticmethod
    def _reentrant(act: Activation, cmd: Command) -> bool:
        """The called action's ``reentrant`` (its type's by default). The body is read here
        only for a call that came back along its chain; one that does not parse runs into the
        pipeline's own refusal."""
        spec = act.spec
        try:
            body = decode_command(cmd.body, len(cmd.body) + 1)
        except JetAgentsError:
            return spec.reentrant
        name = getattr(body, "action", None)  # a signal, cancel, ... is no action: the type decides
        action = spec.actions.get(name) if isinstance(name, str) else None
        return spec.reentrant if action is None or action.reentrant is None else action.reentrant

    async def _nested(self, act: Activation, cmd: Command) -> None:
        """Run a re-entrant command on ``act`` while its running action waits: that action
        is parked, and resumed on the state the nested command committed."""
        outer = act.agent
        parked = park(outer) if outer is not None else None
        done = asyncio.Event()
        held = [f for f in act.frames or () if f.waiting and f.hold is None]
        for f in held:  # their calls return only after this one is finished and they are resumed
            f.hold = done
        frame = self.enter(act, cmd)
        try:
            await self._process(act, cmd)
        except asyncio.CancelledError:
            await self._outcomes.settle_interrupted(cmd)
            raise
        except Exception:  # noqa: BLE001 - a bug here must not leave the outer action parked
            self._log.exception("process_failed", agent=str(act.agent_id))
            await self._outcomes.settle_crashed(cmd)
        finally:
            self.leave(act, frame)
            self._untrack(cmd)
            if outer is not None and parked is not None:
                now = act.agent
                if now is not None and now is not outer:  # the nested command rebuilt the agent
                    resume(outer, parked, now._state)
                    act.agent = outer
                else:
                    resume(outer, parked)
            for f in held:
                f.hold = None
            done.set()

    def enter(self, act: Activation, cmd: Command) -> tuple[list[Any], Token[list[Any] | None]]:
        """The frame ``cmd``'s action runs in (its calls read it), on ``act`` and in this task:
        its seed, made into the frame only if the action calls (``current_frame``)."""
        seed = [None, self._make, act, cmd]
        return seed, FRAME.set(seed)

    def _frame(self, act: Activation, cmd: Command) -> Frame:
        """The frame of ``cmd``'s action, made the first time one of its calls asks."""
        chain: CallChain | None = cmd.chain
        if chain is not None:
            return Frame(chain.chain, chain.path, act.agent_id.key, self._path_max, act)
        # it starts a chain, named only if its action calls (most call nobody)
        root = cmd.command_id or cmd.correlation_id
        return Frame(root, (), act.agent_id.key, self._path_max, act, name=None if root else self._namer)

    def _new_chain(self) -> str:
        """A chain id for a command without one: unique on this host."""
        return f"{self._prefix}{next(self._seq)}"

    @staticmethod
    def leave(act: Activation, entered: tuple[list[Any], Token[list[Any] | None]]) -> None:
        seed, token = entered
        FRAME.reset(token)
        frame: Frame | None = seed[0]
        if frame is not None and frame.waiting:  # left with calls still out (cancelled): it waits on nobody now
            frame.waiting.clear()
            frame.unlist()


def park(agent: Agent[Any]) -> tuple[Any, ...]:
    """Set ``agent``'s running action aside while a re-entrant command runs on it."""
    ctx = agent.ctx
    parked = (agent._draft, agent._pending, agent._cursor, ctx.command_id, ctx.correlation_id, ctx.action)
    agent._draft, agent._pending, agent._cursor = None, None, 0
    return parked


def resume(agent: Agent[Any], parked: tuple[Any, ...], state: Any = None) -> None:
    """Back to the parked action after a re-entrant command: its pending events are applied
    again onto the state the nested command left (``state``: the rebuilt agent's, when the
    nested command had to rebuild it), so its commit builds on what was committed meanwhile
    (appliers are pure)."""
    draft, pending, cursor, command_id, correlation_id, action_name = parked
    ctx = agent.ctx
    ctx.command_id, ctx.correlation_id, ctx.action = command_id, correlation_id, action_name
    if state is not None:
        agent._state = state
    agent._draft, agent._pending, agent._cursor = None, pending, cursor
    if pending and draft is not None:
        appliers = type(agent).__jetagents_spec__.appliers
        new = _draft_of(agent._state)
        for event in pending:
            new = _apply(appliers[type(event).event_type], agent, new, event)
        agent._draft = new
