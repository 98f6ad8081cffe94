"""An agent's state rebuilt from its log, outside a host: time travel and inspection.

The same appliers the host runs (``Agent._replay``), fed the same commits, in the same
order, with the same gap check; nothing here writes or performs I/O. ``rebuild`` stops at
``until_seq`` (a stream sequence of ``AGT_EVT``): the state as it was right after that commit.

>>> from jetagents.examples import Counter
>>> from jetagents._core.agent import spec_of
>>> from jetagents._core.ids import AgentId
>>> log = [(1, b'{"n":1,"cmd":"a","action":"increment","events":[{"type":"Incremented","data":{"by":2}}],'
...         b'"result":2,"cseq":1,"ts_ms":0}')]
>>> rebuild(spec_of(Counter), AgentId("counter", "c1"), log).state.value
2
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .agent import AgentContext, AgentSpec
from .clock import SystemClock
from .errors import InternalError
from .ids import AgentId
from .wire import Commit


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """The state after the last commit applied: its commit number ``n`` and sequence ``seq``."""

    state: BaseModel
    n: int
    seq: int


def rebuild(
    spec: AgentSpec,
    agent_id: AgentId,
    log: Iterable[tuple[int, bytes]],
    *,
    until_seq: int | None = None,
    state: Any = None,
    n: int = 0,
    seq: int = 0,
) -> Rebuilt:
    """Apply the commits of ``log`` (stream sequence, commit body), oldest first, to ``state``
    (the type's initial state when None, else a snapshot's state at commit ``n``).

    Raises ``InternalError`` on a gap in the commit numbers or an unreadable commit, as a host
    does when it activates the agent."""
    agent = spec.cls(AgentContext(agent_id, SystemClock()), state)
    for msg_seq, body in log:
        if until_seq is not None and msg_seq > until_seq:
            break
        try:
            commit = Commit.model_validate_json(body)
        except ValidationError as exc:
            raise InternalError(f"event log of {agent_id} is unreadable at sequence {msg_seq}: {exc}") from None
        if commit.n != n + 1:
            raise InternalError(f"event log of {agent_id} has a gap: commit {commit.n} after {n}")
        if commit.reset is not None:  # a reset commit (ADR 0053: a rollback, a lost tail): its state from here
            agent._state = spec.state_type.model_validate(commit.reset["state"])
        agent._replay(commit.events)
        n, seq = commit.n, msg_seq
    return Rebuilt(agent._state, n, seq)
