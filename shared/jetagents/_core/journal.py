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

import orjson

from .errors import NonDeterministic

STEP = "step"
BLOCKED = "blocked"
END = "end"
FIRE = "fire"  # the commit of a reminder's firing (ADR 0042 section 5): closes the firing's command
WAIT = "wait"  # the action suspended at cursor i on a signal name (or SLEEP)
SIGNAL = "signal"  # a signal resolved the wait at i of command ``for``
TIMEOUT = "timeout"  # the wait's timer fired first
INBOX = "inbox"  # a signal nobody waited for, buffered for a later wait of its name
PARK = "park"  # a write command that arrived while an action was suspended (``enqueue``)
SLEEP = "@sleep"  # the wait name of ``Agent.sleep``: its timeout is the normal result
_POSITIONED = (STEP, WAIT)  # the entries a re-run meets at its cursor
_RESOLUTIONS = (SIGNAL, TIMEOUT)


class Suspend(BaseException):
    """Raised by a wait nobody resolved yet: the host drops the run (nothing but the journal
    is kept) and answers ``suspended``. A ``BaseException``, so an action's ``except
    Exception`` cannot swallow it."""

    def __init__(self, waiting: dict[str, Any]) -> None:
        super().__init__(waiting)
        self.waiting = waiting


class Journal:
    """The open journal of one command: its entries by position (steps and waits), how its
    waits were resolved, what to run it with again once its command was acknowledged
    (``action``, ``params``, ``reply_to``), the last ``blocked`` entry if a re-run could
    not go on, and its ``park`` entry when it is a parked command (ADR 0042 sections 3-4)."""

    __slots__ = ("action", "blocked", "params", "parked", "reply_to", "resolved", "steps")

    def __init__(self, action: str = "") -> None:
        self.steps: list[dict[str, Any]] = []
        self.blocked: dict[str, Any] | None = None
        self.resolved: dict[int, dict[str, Any]] = {}
        self.action = action
        self.params: dict[str, Any] | None = None
        self.reply_to: str | None = None
        self.parked: dict[str, Any] | None = None

    def add(self, j: dict[str, Any]) -> None:
        """One entry of this journal (replayed or just appended)."""
        k = j.get("k")
        if "params" in j and self.params is None:
            self.params, self.reply_to = j["params"], j.get("reply_to")
        if k in _POSITIONED:
            # entries are gapless from 0 (the fence orders them); a repeat of a position
            # already held is not a second run of the step, the first one wins
            if int(j.get("i", -1)) == len(self.steps):
                self.steps.append(j)
        elif k in _RESOLUTIONS:
            self.resolved.setdefault(int(j.get("i", -1)), j)
        elif k == BLOCKED:
            self.blocked = j
        elif k == PARK:
            self.parked = j

    def waiting(self) -> dict[str, Any] | None:
        """The wait entry the action is suspended on (none resolved it yet), else None."""
        for entry in reversed(self.steps):
            if entry.get("k") == WAIT and int(entry["i"]) not in self.resolved:
                found: dict[str, Any] = entry
                return found
        return None

    @property
    def waited(self) -> bool:
        """Whether the action ever suspended: its command was acknowledged, so only this
        journal (and whoever resumes it) can finish it; it holds the agent's writes (§4)."""
        return any(e.get("k") == WAIT for e in self.steps)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps, "blocked": self.blocked}
        if self.resolved:
            out["resolved"] = list(self.resolved.values())
        if self.action:
            out["action"] = self.action
        if self.params is not None:
            out["params"], out["reply_to"] = self.params, self.reply_to
        if self.parked is not None:
            out["parked"] = self.parked
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        journal = cls(str(data.get("action", "")))
        for j in data.get("steps", []):
            journal.add(j)
        for j in data.get("resolved", []):
            journal.add(j)
        journal.blocked = data.get("blocked")
        if data.get("params") is not None:
            journal.params, journal.reply_to = data["params"], data.get("reply_to")
        journal.parked = data.get("parked")
        return journal


def closes(j: dict[str, Any] | None) -> bool:
    """Whether a commit with journal field ``j`` closes its command (feeds the record)."""
    return j is None or j.get("k") in (END, INBOX, FIRE)


def closes_command(cmd: str, j: dict[str, Any] | None) -> bool:
    """Whether a commit of command ``cmd`` with journal field ``j`` closes ``cmd``: ``closes``,
    or a signal or timer entry resolving another command's wait (written under its own id)."""
    return closes(j) or (j is not None and j.get("k") in _RESOLUTIONS and j.get("for") != cmd)


def fold(
    journals: dict[str, Journal],
    cmd: str,
    j: dict[str, Any] | None,
    action: str = "",
    inbox: list[dict[str, Any]] | None = None,
) -> bool:
    """Replay one commit of command ``cmd`` (of ``action``) into the open journals and the
    agent's signal ``inbox``; True when it closes ``cmd`` (the record answers it from now
    on). A signal or timeout entry belongs to the journal it resolves (``for``) and closes
    its own command unless that is the waiter itself (a buffered signal taken by the wait)."""
    if j is None:
        return True
    k = j.get("k")
    if k in (END, FIRE):
        journals.pop(cmd, None)
        return True
    if k == INBOX:
        if inbox is not None:
            inbox.append({**j, "cmd": cmd})
        return True
    if k in _RESOLUTIONS:
        target = str(j.get("for", ""))
        waiter = journals.get(target)
        if waiter is not None:
            waiter.add(j)
        taken = j.get("inbox")
        if taken is not None and inbox is not None:
            inbox[:] = [e for e in inbox if e.get("cmd") != taken]
        return target != cmd
    journal = journals.get(cmd)
    if journal is None:
        journal = journals[cmd] = Journal(action)
    journal.add(j)
    return False


def recorded(journal: Journal | None, i: int, name: str, action: str, kind: str = STEP) -> dict[str, Any] | None:
    """The entry of the step (or wait, ``kind``) at cursor ``i`` named ``name``: its
    recorded entry, or None when the journal has none yet (new work: steps added after the
    last journaled one are fine). An entry of another name or kind at ``i`` means the code
    changed while the action was in flight."""
    if journal is None or i >= len(journal.steps):
        return None
    entry = journal.steps[i]
    if entry.get("name") != name or entry.get("k", STEP) != kind:
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


def end_entry(i: int, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``j`` of the commit that closes a journaled command (``i`` steps were run);
    ``error`` when it ended refused (a domain error after a wait, ``cancelled``)."""
    if error is not None:
        return {"i": i, "k": END, "error": error}
    return {"i": i, "k": END}


def wait_entry(i: int, name: str, until_ms: int | None) -> dict[str, Any]:
    """The ``j`` of a wait at cursor ``i`` for signal ``name`` (``SLEEP``), until ``until_ms``."""
    return {"i": i, "k": WAIT, "name": name, "until_ms": until_ms}


def resolution_entry(
    k: str, for_cmd: str, i: int, name: str, value: Any = None, taken: str | None = None
) -> dict[str, Any]:
    """The ``j`` of a signal (``k=SIGNAL``) or timer (``TIMEOUT``) resolving the wait at
    ``i`` of ``for_cmd``; ``taken``: the buffered signal (its command id) the wait took."""
    j: dict[str, Any] = {"k": k, "for": for_cmd, "i": i, "name": name, "value": value}
    if taken is not None:
        j["inbox"] = taken
    return j


def inbox_entry(name: str, value: Any, to: str | None) -> dict[str, Any]:
    """The ``j`` of a signal with nobody waiting for it: buffered for a later wait."""
    return {"k": INBOX, "name": name, "value": value, "to": to}


def park_entry(action: str, params: Any, reply_to: str | None) -> dict[str, Any]:
    """The ``j`` of a write command parked while another action is suspended."""
    return {"k": PARK, "action": action, "params": params, "reply_to": reply_to}


def timer_name(cmd: str, i: int) -> str:
    """The schedule name of the timer of the wait at ``i`` of ``cmd``: ``_w<16 hex>-<i>``
    (``agt.rem.<type>.<id>._w...``; hashed: a command id may hold any character)."""
    return f"_w{hashlib.sha256(cmd.encode()).hexdigest()[:16]}-{i}"


def timer_body(cmd: str, i: int) -> bytes:
    """What the timer's firing delivers on ``agt.cmd.<type>.<id>``."""
    return orjson.dumps({"timer": {"for": cmd, "i": i}})


def take_inbox(inbox: list[dict[str, Any]] | None, name: str, cmd: str) -> dict[str, Any] | None:
    """The oldest buffered signal of ``name`` meant for ``cmd`` (or for any waiter)."""
    for entry in inbox or ():
        if entry.get("name") == name and entry.get("to") in (None, cmd):
            return entry
    return None


def blocked_entry(i: int, error: dict[str, Any]) -> dict[str, Any]:
    """The ``j`` of a run that could not go on at cursor ``i`` (the journal stays open)."""
    return {"i": i, "k": BLOCKED, "error": error}


def key_of(agent_key: str, cmd: str, i: int) -> str:
    """The idempotency key of step ``i`` of command ``cmd``: the same on every re-run."""
    return f"{agent_key}:{cmd}#{i}"


# the key of the step whose function runs now (a context variable: each task sees its own)
_STEP_KEY: ContextVar[str | None] = ContextVar("jetagents_step_key", default=None)
# how many effects (calls, publishes, writes) the running step's function has made so far
_EFFECTS: ContextVar[list[int] | None] = ContextVar("jetagents_step_effects", default=None)


def enter_step(key: str) -> tuple[Any, Any]:
    """Mark the step ``key`` as running in this context (its effects counted from 0); hand
    the result to ``leave_step``."""
    return _STEP_KEY.set(key), _EFFECTS.set([0])


def leave_step(tokens: tuple[Any, Any]) -> None:
    _STEP_KEY.reset(tokens[0])
    _EFFECTS.reset(tokens[1])


def effect_key() -> str | None:
    """The idempotency key of the next effect the running step's function makes (a call's
    command id, a publish's ``Nats-Msg-Id``, a shared-state write's tag); None outside a step.

    The step's key for its first effect, ``<key>+<n>`` for the n-th after it: a step that
    makes several (two increments, two calls) must not have the second deduplicated into the
    first, and a re-run of the step, making them in the same order, gets the same keys.

    >>> t = enter_step("c.1:m#0"); [effect_key(), effect_key(), effect_key()]
    ['c.1:m#0', 'c.1:m#0+1', 'c.1:m#0+2']
    >>> leave_step(t); effect_key() is None
    True
    """
    key = _STEP_KEY.get()
    if key is None:
        return None
    count = _EFFECTS.get()
    if count is None:
        return key
    n = count[0]
    count[0] = n + 1
    return key if n == 0 else f"{key}+{n}"


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
    close its command: ``#<i>`` for a step or a wait, ``#park`` for a park, ``#blocked@<n>``
    for a block (one per re-run)."""
    k = j.get("k")
    if k in _POSITIONED:
        return f"#{j['i']}"
    if k in _RESOLUTIONS:  # the waiter took a buffered signal: once per wait
        return f"#{j['i']}@{k}"
    if k == PARK:  # once per command: a re-send parked again is a duplicate (answered from the log)
        return "#park"
    return f"#{k}@{n}"
