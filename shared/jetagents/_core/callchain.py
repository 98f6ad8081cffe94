"""Call chains (ADR 0042 section 7): re-entrancy and fast deadlock detection, pure.

Every call an action makes carries ``Agt-Call-Chain`` (the id of the command that started the
chain, kept along it) and ``Agt-Call-Path`` (the agents waiting on this call, oldest first,
``type.id`` keys separated by one space). An agent receiving a call compares the path with
what its running actions wait on (``Frame.waiting``):

* the path names this agent and one of its actions of the same chain waits: the call came
  back along its own chain (A -> B -> A), so it runs at once instead of queueing behind the
  action that waits for it (``REENTER``), or fails with ``call_cycle`` where re-entrancy is
  off;
* the path names an agent one of its actions waits on: queueing would close a wait-for cycle
  (A waits on B, B's running action waits, through the path, on this call), so it fails at
  once with ``deadlock`` (edge chasing, Chandy-Misra-Haas, with the path as the probe);
* otherwise it queues as any command does.

The headers come from whoever sent the message: they are bounded and checked here, and a
path naming agents that are not waiting changes nothing (``QUEUE``). A forged path can at
most get its own call refused, or run re-entrantly an action its agent allows re-entrantly.

>>> a = Frame("m1", (), "ping.a")
>>> a.outgoing("ping.b")
{'Agt-Call-Chain': 'm1', 'Agt-Call-Path': 'ping.a'}
>>> a.wait("ping.b")
>>> decide(parse("m1", "ping.a ping.b", 16), "ping.a", [a])[0].name
'REENTER'
>>> decide(parse("m2", "ping.b", 16), "ping.a", [a])
(<Verdict.DEADLOCK: 3>, 'ping.b')
>>> decide(parse("m2", "ping.c", 16), "ping.a", [a])[0].name
'QUEUE'
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .errors import CallCycle, CallTooDeep, Deadlock, JetAgentsError, MalformedCommand
from .wire import H_CALL_CHAIN, H_CALL_PATH

# the longest chain id (a command id is at most 256 characters)
MAX_CHAIN_ID_LEN = 256
# the most agents any path may name, whatever ``call_path_max`` says: it bounds the header
# (64 keys of at most 257 characters) before anything splits it
PATH_HARD_MAX = 64
_KEY_MAX_LEN = 257
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,128}\.[A-Za-z0-9_-]{1,128}")
# a chain id: printable ASCII without spaces (it is a header value)
_CHAIN_RE = re.compile(r"[!-~]{1,256}")


@dataclass(frozen=True, slots=True)
class CallChain:
    """A received command's chain: its id and the agents waiting on it, oldest first."""

    chain: str
    path: tuple[str, ...]


def parse(chain: str | None, path: str | None, path_max: int) -> CallChain | None:
    """The chain a command's headers name, None without ``Agt-Call-Chain``.

    ``MalformedCommand`` for a chain id or path that is not one (too long, a key that is no
    ``type.id``, a path without a chain); ``CallTooDeep`` past ``path_max`` agents.

    >>> parse("m1", "counter.c1 job.j-2", 16)
    CallChain(chain='m1', path=('counter.c1', 'job.j-2'))
    >>> parse(None, None, 16) is None
    True
    """
    if chain is None:
        if path is not None:
            raise MalformedCommand(f"{H_CALL_PATH} without {H_CALL_CHAIN}")
        return None
    if not _CHAIN_RE.fullmatch(chain):
        raise MalformedCommand(f"invalid {H_CALL_CHAIN}: 1-{MAX_CHAIN_ID_LEN} printable ASCII characters, no spaces")
    if not path:
        return CallChain(chain, ())
    limit = min(path_max, PATH_HARD_MAX)
    if len(path) > (limit + 1) * (_KEY_MAX_LEN + 1):  # bounded before it is split
        raise CallTooDeep(f"{H_CALL_PATH} names more than {limit} agents", details={"max": limit, "chain": chain})
    keys = tuple(path.split(" "))
    if len(keys) > limit:
        raise CallTooDeep(
            f"call path of {len(keys)} agents exceeds call_path_max {limit}",
            details={"max": limit, "chain": chain, "path": list(keys)},
        )
    for key in keys:
        if not _KEY_RE.fullmatch(key):
            raise MalformedCommand(f"invalid {H_CALL_PATH}: {key[:64]!r} is no agent key (type.id)")
    return CallChain(chain, keys)


class Frame:
    """One running action of an agent: its chain, the path it was called along, and the
    agents it waits on now (calls awaiting their reply, by key, with their number)."""

    __slots__ = ("_chain", "_name", "hold", "me", "owner", "path", "path_max", "waiting")

    def __init__(
        self,
        chain: str,
        path: tuple[str, ...],
        me: str,
        path_max: int = 16,
        owner: Any = None,
        *,
        name: Callable[[], str] | None = None,
    ) -> None:
        # an empty ``chain`` with ``name``: named by ``name()`` the first time it is asked
        # for, as most actions call nobody (a call without a command id starts a chain)
        self._chain = chain
        self._name = name
        self.path = path
        self.me = me
        self.path_max = path_max if path_max < PATH_HARD_MAX else PATH_HARD_MAX  # the host's call_path_max
        self.waiting: dict[str, int] = {}
        # whatever lists the frames that wait (the host's activation: ``owner.frames``): a
        # frame is listed there only while it waits, so a command that calls nobody costs
        # no list
        self.owner = owner
        # set by the host while a re-entrant call runs on this agent (an ``asyncio.Event``):
        # a call that returns waits for it before the action goes on, the agent is parked
        self.hold: Any = None

    @property
    def chain(self) -> str:
        """The chain's id: the command's, or one this host made up for it."""
        chain = self._chain
        if not chain and self._name is not None:
            chain = self._chain = self._name()
        return chain

    def outgoing(self, target: str, *, waits: bool = True) -> dict[str, str]:
        """The headers of a call this action makes to ``target``. A call nobody waits for
        (``waits=False``: a send) names the chain only: nothing holds a mailbox for it.
        ``CallTooDeep`` when the path would pass ``path_max``."""
        if not waits:
            return {H_CALL_CHAIN: self.chain}
        path = (*self.path, self.me)
        limit = self.path_max
        if len(path) > limit:
            raise CallTooDeep(
                f"call from {self.me} to {target} would make a path of {len(path)} agents, past call_path_max {limit}",
                details={"max": limit, "chain": self.chain, "path": list(path)},
            )
        return {H_CALL_CHAIN: self.chain, H_CALL_PATH: " ".join(path)}

    def wait(self, target: str) -> None:
        """A call to ``target`` is about to be sent (before: its answer may come at once)."""
        waiting = self.waiting
        if not waiting and self.owner is not None:
            frames = self.owner.frames
            if frames is None:
                self.owner.frames = [self]
            else:
                frames.append(self)
        waiting[target] = waiting.get(target, 0) + 1

    def done(self, target: str) -> None:
        waiting = self.waiting
        left = waiting.get(target, 0) - 1
        if left > 0:
            waiting[target] = left
            return
        waiting.pop(target, None)
        if not waiting:
            self.unlist()

    def unlist(self) -> None:
        """Off the owner's list of waiting frames (its action waits on nobody any more)."""
        owner = self.owner
        frames = owner.frames if owner is not None else None
        if frames is not None and self in frames:
            frames.remove(self)
            if not frames:
                owner.frames = None


class Verdict(enum.IntEnum):
    QUEUE = 0  # as any command: behind the running one
    REENTER = 1  # back along its own chain: run at once
    CYCLE = 2  # back along its own chain, where re-entrancy is off: call_cycle
    DEADLOCK = 3  # queueing would close a wait-for cycle: deadlock


def decide(
    incoming: CallChain | None, me: str, frames: Iterable[Frame], *, reentrant: bool = True
) -> tuple[Verdict, str | None]:
    """What agent ``me``, whose running actions are ``frames``, does with a call of chain
    ``incoming``; the second item names the agent waited on that closes a cycle."""
    if incoming is None or not incoming.path:
        return Verdict.QUEUE, None
    path = incoming.path
    waiting = [f for f in frames if f.waiting]
    if not waiting:
        return Verdict.QUEUE, None
    if me in path:
        for f in waiting:
            if f.chain == incoming.chain:
                return (Verdict.REENTER if reentrant else Verdict.CYCLE), None
    for f in waiting:
        for target in f.waiting:
            if target in path:
                return Verdict.DEADLOCK, target
    return Verdict.QUEUE, None


def refusal(verdict: Verdict, incoming: CallChain, me: str, waited: str | None) -> JetAgentsError:
    """The error a refused call gets (``CYCLE`` or ``DEADLOCK``)."""
    path = [*incoming.path, me]
    if verdict is Verdict.CYCLE:
        return CallCycle(
            f"call came back to {me} along its own chain {incoming.chain!r}, and {me} is not re-entrant",
            details={"chain": incoming.chain, "path": path},
        )
    return Deadlock(
        f"deadlock: {me} waits on {waited}, which waits (through {' -> '.join(incoming.path)}) on this call",
        details={"chain": incoming.chain, "path": path, "waiting_on": waited},
    )


# the running action's frame (a context variable: each task sees its own); the client's
# calls made inside an action read it to name the chain and mark what the action waits on.
# It holds a seed, ``[frame or None, make, *args]``: most actions call nobody (ADR 0042
# section 7), so the frame is made by ``make(*args)`` only when a call first asks for it, and
# kept in the seed, which the action's own tasks share (as they shared the frame itself)
FRAME: ContextVar[list[Any] | None] = ContextVar("jetagents_call_frame", default=None)


def current_frame() -> Frame | None:
    """The frame of the action running in this task, None outside an action."""
    seed = FRAME.get()
    if seed is None:
        return None
    frame: Frame | None = seed[0]
    if frame is None:
        frame = seed[0] = seed[1](*seed[2:])
    return frame
