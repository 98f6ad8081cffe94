"""Durable steps (ADR 0042 sections 1-2): the journal an action keeps in its agent's log.

A journal entry is a commit with no events and a ``j`` object. Only a commit without ``j``
(every commit before durable steps) or with ``j.k == "end"`` closes its command, so only those
feed the exactly-once record: a command whose journal is open has no answer yet, and its
redelivery must re-run the action from the journal, not be answered. Everything here is pure;
the host appends (``_host/steps.py``), the catalog folds the log into open journals.

>>> journals: dict[str, Journal] = {}
>>> fold(journals, "m1", step_entry(0, "reserve", "r-1")), fold(journals, "m1", None)
(False, True)
>>> recorded(journals["m1"], 0, "reserve", "checkout")["value"]
'r-1'
>>> recorded(journals["m1"], 1, "charge", "checkout") is None  # past the end: new work
True
>>> fold(journals, "m1", end_entry(1)), "m1" in journals
(True, False)
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from typing import Any

from .errors import NonDeterministic

STEP = "step"
BLOCKED = "blocked"
END = "end"
FIRE = "fire"  # the commit of a reminder's firing (ADR 0042 section 5): closes the firing's command
CLOSING = frozenset({END, FIRE})


class Journal:
    """The open journal of one command: its step entries by position, and the last
    ``blocked`` entry if a re-run could not go on (the journal stays open)."""

    __slots__ = ("blocked", "steps")

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.blocked: dict[str, Any] | None = None

    def add(self, j: dict[str, Any]) -> None:
        """One entry of this journal (replayed or just appended)."""
        k = j.get("k")
        if k == STEP:
            # entries are gapless from 0 (the fence orders them); a repeat of a position
            # already held is not a second run of the step, the first one wins
            if int(j.get("i", -1)) == len(self.steps):
                self.steps.append(j)
        elif k == BLOCKED:
            self.blocked = j

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "blocked": self.blocked}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        journal = cls()
        for j in data.get("steps", []):
            journal.add(j)
        journal.blocked = data.get("blocked")
        return journal


def closes(j: dict[str, Any] | None) -> bool:
    """Whether a commit with journal field ``j`` closes its command (feeds the record)."""
    return j is None or j.get("k") in CLOSING


def fold(journals: dict[str, Journal], cmd: str, j: dict[str, Any] | None) -> bool:
    """Replay one commit of command ``cmd`` into the open journals; True when it closes
    ``cmd`` (the record answers it from now on)."""
    if j is None:
        return True
    if j.get("k") in CLOSING:
        journals.pop(cmd, None)
        return True
    journal = journals.get(cmd)
    if journal is None:
        journal = journals[cmd] = Journal()
    journal.add(j)
    return False


def recorded(journal: Journal | None, i: int, name: str, action: str) -> dict[str, Any] | None:
    """The entry of the step at cursor ``i`` named ``name``: its recorded entry, or None when
    the journal has none yet (new work: steps added after the last journaled one are fine).
    An entry of another name at ``i`` means the code changed while the action was in flight."""
    if journal is None or i >= len(journal.steps):
        return None
    entry = journal.steps[i]
    if entry.get("name") != name:
        raise NonDeterministic(
            f"action {action!r} reached step {i} {name!r}, but its journal has step {i} "
            f"{entry.get('name')!r}: the code changed while the action was in flight",
            details={"step": name, "position": i, "journaled": entry.get("name")},
        )
    return entry


def step_entry(i: int, name: str, value: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``j`` of a finished step: its value, or the domain error it raised (re-raised
    on a re-run, like the value is returned)."""
    if error is not None:
        return {"i": i, "k": STEP, "name": name, "ok": False, "error": error}
    return {"i": i, "k": STEP, "name": name, "ok": True, "value": value}


def end_entry(i: int) -> dict[str, Any]:
    """The ``j`` of the commit that closes a journaled command (``i`` steps were run)."""
    return {"i": i, "k": END}


def blocked_entry(i: int, error: dict[str, Any]) -> dict[str, Any]:
    """The ``j`` of a run that could not go on at cursor ``i`` (the journal stays open)."""
    return {"i": i, "k": BLOCKED, "error": error}


def key_of(agent_key: str, cmd: str, i: int) -> str:
    """The idempotency key of step ``i`` of command ``cmd``: the same on every re-run."""
    return f"{agent_key}:{cmd}#{i}"


# the key of the step whose function runs now (a context variable: each task sees its own)
_STEP_KEY: ContextVar[str | None] = ContextVar("jetagents_step_key", default=None)


def callee_command_id(key: str) -> str:
    """The command id of a call made as a step (``Agent.call``): the step's key, so a call
    re-sent by a re-run is answered from the callee's record; hashed past 256 characters."""
    return key if len(key) <= 256 else "h" + hashlib.sha256(key.encode()).hexdigest()[:32]


def current_step_key() -> str | None:
    """The running step's key, None outside a journaled step."""
    return _STEP_KEY.get()


def step_key() -> str:
    """Inside a step's function: its idempotency key, ``<type>.<id>:<cmd>#<i>``, the same on
    every re-run of the step. Hand it to APIs that deduplicate (an ``Idempotency-Key``
    header, a ``Nats-Msg-Id``): the effect of a step whose host died before its result was
    journaled is then not done twice."""
    key = _STEP_KEY.get()
    if key is None:
        raise RuntimeError("step_key() may only be called inside a step's function")
    return key


def entry_tag(j: dict[str, Any], n: int) -> str:
    """What follows ``<type>.<id>:<cmd>`` in the ``Nats-Msg-Id`` of an entry that does not
    close its command: ``#<i>`` for a step, ``#blocked@<n>`` for a block (one per re-run)."""
    if j.get("k") == STEP:
        return f"#{j['i']}"
    return f"#{j.get('k')}@{n}"
