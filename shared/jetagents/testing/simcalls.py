"""Calls in the simulation: core requests, at most once (``jetagents.testing.simulation``).

A call goes to every host that is up and connected, as every host subscribes to
``<root>.call.*.*``; each host's real ``Intake.on_call`` decides whether it answers (it serves
the partition; or the ring names it and the partition is on its way, when it says "retry, not
applied"). The caller takes the first reply, and does what the client does
(``_client/sender.py``): an error that proves the call was not applied (``applied: false``,
retryable) is sent again, as a new request, a round later; anything else is its answer.

Each call runs ``tag`` (``simhost.HoldingCounter``), whose one event names the call, so the log
shows every time a call was applied. At the end: no call was applied twice, a call answered
``ok`` was applied once, and a call whose every answer said "not applied" was not applied.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import orjson

from .._client.command import OutboundCommand, SendOptions
from .._core.ids import AgentId
from .._core.wire import Delivery
from .invariants import Violation
from .simworld import SUBJECTS
from .streams import PublishedMessage

if TYPE_CHECKING:
    from .simulation import Simulation

__all__ = ["CallMsg", "Calls"]

_INBOX = "_INBOX.sim"
MAX_ATTEMPTS = 6


class CallMsg(NamedTuple):
    """A call as the call subscription hands it to a host (a ``Received``)."""

    subject: str
    headers: Mapping[str, str]
    data: bytes
    reply: str


@dataclass
class _Call:
    agent_no: int
    attempts: int = 0
    answers: list[tuple[str, bool]] = field(default_factory=list)  # (code, proved not applied), per attempt answered


class Calls:
    """The callers of one run."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.calls: dict[int, _Call] = {}
        self.again: list[int] = []  # calls to send once more next round (not applied, retryable)
        self._answered: set[tuple[int, int]] = set()  # (call, attempt) with its first reply in
        sim.world.bus.subscribe(f"{_INBOX}.>", self._on_reply)

    def send(self, n: int | None = None) -> None:
        """A new call (``n`` None), or call ``n`` once more."""
        sim = self.sim
        if n is None:
            n = len(self.calls) + 1
            self.calls[n] = _Call(sim.rnd.randrange(sim.cfg.agents))
        call = self.calls[n]
        call.attempts += 1
        agent = AgentId(sim.cfg.agent_type, f"a{call.agent_no}")
        out = OutboundCommand.build(
            agent,
            "tag",
            {"tag": f"t{n}"},
            SendOptions(delivery=Delivery.AT_MOST_ONCE),
            subjects=SUBJECTS,
            timeout_s=30.0,
            limit_bytes=64 * 1024,
            new_id=lambda: "",
            wall_ms=sim.clock.wall_ms(),
        )
        msg = CallMsg(out.subject, out.headers, out.body, f"{_INBOX}.{n}.{call.attempts}")
        sim.world.record("call", n, call.attempts, agent.id)
        now = sim.clock.monotonic()
        for h in sim.hosts:  # every host connected hears it, paused or not (its socket buffers it)
            if h.alive and not h.faults.crashed and now >= h.faults.cut_until:
                sim._spawn(h, h.node.call(msg), "call")

    def round(self, faulty: bool) -> list[Callable[[], None]]:
        """This round's steps: the calls to send again, and (faulty rounds) new ones."""
        again, self.again = self.again, []
        steps: list[Callable[[], None]] = [functools.partial(self.send, n) for n in again]
        if faulty:
            per = self.sim.cfg.calls_per_round
            steps += [self.send] * (int(per) + (self.sim.rnd.random() < per % 1))
        return steps

    async def _on_reply(self, msg: PublishedMessage) -> None:
        n, attempt = (int(x) for x in msg.subject.rsplit(".", 2)[1:])
        if (n, attempt) in self._answered:  # a second host answered too; the caller has its answer
            self.sim.world.record("call_reply_ignored", n, attempt)
            return
        self._answered.add((n, attempt))
        reply = orjson.loads(msg.data)
        error = reply.get("error") or {}
        code = "ok" if reply.get("ok") else str(error.get("code"))
        # what the client takes for proof that the call was not applied (``reply.not_applied``)
        details = error.get("details")
        not_applied = not reply.get("ok") and (
            code == "fenced" or (isinstance(details, dict) and details.get("applied") is False)
        )
        call = self.calls[n]
        call.answers.append((code, not_applied))
        self.sim.world.record("call_answer", n, attempt, code, str(error.get("message", ""))[:80])
        if not_applied and error.get("retryable") and call.attempts < MAX_ATTEMPTS:
            self.again.append(n)

    def check_end(self) -> None:
        """Each call applied at most once; once if answered ``ok``; never if every answer said
        it was not."""
        applied: dict[str, int] = {}
        for m in self.sim.world.events.messages:
            for event in orjson.loads(m.data).get("events") or ():
                if event.get("type") == "Tagged":
                    tag = event["data"]["tag"]
                    applied[tag] = applied.get(tag, 0) + 1
        for n, call in sorted(self.calls.items()):
            times = applied.get(f"t{n}", 0)
            trail = [e for e in self.sim.world.history if e[1].startswith("call") and e[2] == n]
            if times > 1:
                raise Violation(f"call {n} (at most once) was applied {times} times: {trail}")
            if times == 0 and any(code == "ok" for code, _ in call.answers):
                raise Violation(f"call {n} was answered ok but never applied: {trail}")
            if times and call.answers and len(call.answers) == call.attempts and all(na for _, na in call.answers):
                raise Violation(f"call {n} was applied, but every answer said it was not: {trail}")
