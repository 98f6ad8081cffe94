"""What the dashboard's newer pages read (ADR 0055, "Built later"), from durable records only,
never from a host's memory: the ring and its change log (``ringlog.*`` in the cluster bucket),
reminders and wait timers (the server's schedules in the command stream), suspended and parked
actions (the open journals in an agent's snapshot and the log after it). Every list is
bounded, and says when it stopped early.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from .._client.inspection import HISTORY_PAGE, Inspector, _doc
from .._core.ids import AgentId, is_valid_token
from .._core.journal import SLEEP, Journal, fold
from .._core.schedules import at_ms_of
from .._host.coordination.ringlog import RING_LOG_PREFIX
from .._nats.schedules import NatsSchedules

SCHEDULES_SHOWN = 200  # schedules one page reads (one request each)
AGENTS_SCANNED = 200  # agents the overall suspended list reads (snapshot + log tail each)
TAIL_MAX = 5 * HISTORY_PAGE  # commits after the snapshot one agent's scan reads at most
SCAN_PARALLEL = 8


async def ring(ins: Inspector) -> dict[str, Any]:
    """The cluster summary with the ring's owners, and the change log, newest first."""
    cluster = await ins.cluster()
    logged = await ins.io.kv_scan(ins.topology.cluster_bucket, RING_LOG_PREFIX)
    changes = sorted((_doc(e.data) for e in logged.values()), key=lambda c: -int(c.get("epoch", 0)))
    return {"cluster": cluster, "changes": changes}


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One schedule the server holds: a reminder of the agent's, or the timer of a wait."""

    agent: str
    name: str
    kind: str  # "reminder" or "timer"
    pattern: str
    at_ms: int | None  # when an "@at" schedule fires; None for "@every" and cron
    does: str  # what the firing delivers
    tz: str | None


def _schedule_row(subject: str, pattern: str, body: bytes, tz: str | None) -> ScheduleRow:
    tokens = subject.split(".")
    agent, name = f"{tokens[-3]}/{tokens[-2]}", tokens[-1]
    command = _doc(body)
    timer = command.get("timer")
    if isinstance(timer, dict):
        does = f"ends wait {timer.get('i')} of command {timer.get('for')}"
    else:
        does = f"{command.get('action', '?')}({orjson.dumps(command.get('params', {})).decode()})"
    kind = "timer" if isinstance(timer, dict) else "reminder"
    return ScheduleRow(agent, name, kind, pattern, at_ms_of(pattern), does, tz)


async def schedules(
    ins: Inspector, aid: AgentId | None = None, *, limit: int = SCHEDULES_SHOWN
) -> tuple[list[ScheduleRow], bool]:
    """The schedules of one agent, or of all (at most ``limit``), soonest ``@at`` first; and
    whether there were more."""
    s = ins.subjects
    subject_filter = s.rem_of(aid.type, aid.id) if aid is not None else s.rem_wildcard
    found = await ins.io.subjects(ins.topology.cmd_stream, subject_filter, limit + 1)
    reader = NatsSchedules(ins.io.nc, ins.topology.cmd_stream, ins.io.timeout_s)
    rows = []
    for subject in sorted(found)[:limit]:
        sched = await reader.get(subject)
        if sched is not None:  # a cancelled one is a tombstone until it expires
            rows.append(_schedule_row(sched.subject, sched.pattern, sched.body, sched.tz))
    rows.sort(key=lambda r: (r.at_ms is None, r.at_ms or 0, r.agent, r.name))
    return rows, len(found) > limit


@dataclass(frozen=True, slots=True)
class OpenAction:
    """An action of an agent that is not done: suspended on a wait, resolved and about to
    resume, blocked, or parked behind a suspended one."""

    agent: str
    command_id: str
    action: str
    status: str  # "suspended", "resuming", "blocked", "parked"
    waits_for: str  # a signal name, "sleep", or ""
    until_ms: int | None
    since_ms: int


@dataclass(slots=True)
class _Scan:
    journals: dict[str, Journal] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)
    complete: bool = True


async def _journals(ins: Inspector, aid: AgentId) -> _Scan:
    entry = await ins.io.kv_get(ins.topology.snap_bucket, aid.key)
    snap = _doc(entry.data) if entry else {}
    scan = _Scan()
    for cmd, data in (snap.get("journals") or {}).items():
        if isinstance(data, dict):
            scan.journals[str(cmd)] = Journal.from_json(data)
    start = int(snap.get("seq", 0)) + 1
    subject = ins.subjects.evt(aid.type, aid.id)
    read = 0
    while read < TAIL_MAX:
        msgs, more = await ins.io.read(ins.topology.evt_stream, subject, start, HISTORY_PAGE)
        for m in msgs:
            c = _doc(m.data)
            cmd, j = str(c.get("cmd", "")), c.get("j")
            reset = c.get("reset")
            if isinstance(reset, dict):  # a reset commit (ADR 0053) carries the journals open as of then
                scan.journals = {str(k): Journal.from_json(v) for k, v in (reset.get("journals") or {}).items()}
            fold(scan.journals, cmd, j if isinstance(j, dict) else None, str(c.get("action", "")))
            if isinstance(j, dict) and cmd in scan.journals:
                scan.since.setdefault(cmd, int(c.get("ts_ms", 0)))
        read += len(msgs)
        if not more or not msgs:
            return scan
        start = msgs[-1].seq + 1
    scan.complete = False
    return scan


def _open_actions(aid: AgentId, scan: _Scan) -> list[OpenAction]:
    out = []
    for cmd, journal in scan.journals.items():
        waiting = journal.waiting()
        if journal.parked is not None:
            status = "parked"
        elif journal.blocked is not None:
            status = "blocked"
        elif waiting is not None:
            status = "suspended"
        elif journal.waited:
            status = "resuming"
        else:
            continue  # a run in progress (steps only): not suspended, nothing waits
        name = str(waiting.get("name", "")) if waiting else ""
        until = waiting.get("until_ms") if waiting else None
        action = journal.action or str((journal.parked or {}).get("action", ""))
        out.append(
            OpenAction(
                f"{aid.type}/{aid.id}",
                cmd,
                action,
                status,
                "sleep" if name == SLEEP else name,
                int(until) if until else None,
                scan.since.get(cmd, 0),
            )
        )
    return out


async def open_actions(ins: Inspector, aid: AgentId) -> list[OpenAction]:
    """The agent's suspended, resuming, blocked and parked actions, from its snapshot's
    journals and its log after the snapshot."""
    return _open_actions(aid, await _journals(ins, aid))


async def all_open_actions(ins: Inspector, *, limit: int = AGENTS_SCANNED) -> tuple[list[OpenAction], int, bool]:
    """Open actions of the first ``limit`` agents with a log; with how many agents were read
    and whether more were left out (the scan reads each one's log tail, so it is bounded)."""
    counts = await ins.io.subjects(ins.topology.evt_stream, ins.subjects.evt("*", "*"), limit + 1)
    keys = [subject.split(".")[-2:] for subject in sorted(counts)]
    aids = [AgentId(t, i) for t, i in keys if is_valid_token(t) and is_valid_token(i)][:limit]
    gate = asyncio.Semaphore(SCAN_PARALLEL)

    async def one(aid: AgentId) -> list[OpenAction]:
        async with gate:
            return await open_actions(ins, aid)

    found = await asyncio.gather(*(one(a) for a in aids))
    return [a for per in found for a in per], len(aids), len(counts) > limit
