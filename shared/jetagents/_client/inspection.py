"""Inspection and repair for operators, from what is durable (streams and buckets): the
agents known and active, one agent's state and history, time travel, dead letters and
their redrive. Nothing here needs the agent to be active, and reads write nothing.

>>> async def main():  # doctest: +SKIP
...     async with await Client.connect() as client:
...         admin = Inspector(client, agents=[Counter])
...         for a in await admin.agents(agent_type="counter"):
...             print(a.type, a.id, a.commits, a.host)
...         past = await admin.state_at("counter", "c1", seq=12)   # replayed here, no writes
...         for dl in await admin.dead_letters(code="invalid_params"):
...             await admin.redrive(dl.seq)                          # same command id

Every NATS call goes through ``jetagents._nats.admin``. The CLI (``jetagents agents``,
``agent``, ``dlq``) and the dashboard are thin layers over this class.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from .._core.agent import Agent, AgentSpec, Registry
from .._core.errors import InternalError, JetAgentsError, MalformedCommand, UnknownAgentType
from .._core.ids import AgentId, is_valid_token, partition_of
from .._core.kv import Entry
from .._core.membership import cluster_summary
from .._core.replay import Rebuilt, rebuild
from .._core.upcast import state_from
from .._core.wire import (
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_HOST,
    H_MSG_ID,
    H_PRIORITY,
    H_REPLY_TO,
    Subjects,
)
from .._host.ports import StoredMessage
from .._nats.admin import AdminTransport
from .._nats.api import ERR_STREAM_NOT_FOUND, JSApiError, Topology
from .reply import decode_reply, no_responders

HISTORY_PAGE = 1000  # commits one history() call returns at most
REPLAY_MAX = 1_000_000  # commits a time travel replays at most (bounded, like everything)
_KEPT_HEADERS = (H_CORRELATION_ID, H_PRIORITY, "traceparent", "tracestate")


@dataclass(frozen=True, slots=True)
class AgentSummary:
    """An agent known from its log: commits stored, and the host serving it (``active``:
    in that host's memory now; else the partition's owner or placement from the ring)."""

    type: str
    id: str
    commits: int
    host: str | None = None
    active: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One commit of an agent's log, as stored."""

    seq: int
    n: int
    cmd: str
    action: str
    events: list[dict[str, Any]]
    result: Any
    ts_ms: int
    host: str | None = None
    j: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AgentDetail:
    """What ``agent show`` prints: state (rebuilt when the type is known here, else the
    snapshot's), position in the log, snapshot, the host serving it, the last commits."""

    type: str
    id: str
    state: Any
    state_source: str  # "replay", "snapshot" or "none"
    n: int
    last_seq: int
    commits_stored: int
    snapshot_seq: int | None
    host: str | None
    active: bool
    last_commits: list[HistoryEntry] = field(default_factory=list)
    # measured by the host that has it in memory (ADR 0059): action time, CPU, memory, throttle
    health: dict[str, Any] | None = None
    # commands stored for it and not yet acknowledged (AGT_CMD and the high lane AGT_CMDH)
    queued: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["last_commits"] = [c.to_json() for c in self.last_commits]
        return out


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter of ``AGT_DLQ`` (wire contract §8), with what a redrive needs."""

    seq: int
    type: str
    id: str
    code: str
    message: str
    command_id: str | None
    ts_ms: int
    host: str
    body: dict[str, Any]

    @property
    def redrivable(self) -> bool:
        return self.type != "_invalid" and not self.body.get("truncated", False)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "body"}
        out["redrivable"] = self.redrivable
        out["dead_letter"] = self.body
        return out


@dataclass(frozen=True, slots=True)
class Redriven:
    """A dead letter sent again: the command id it kept, where the stream stored it, the
    agent's answer when one was awaited, and whether the dead letter was removed."""

    dlq_seq: int
    agent: str
    command_id: str
    stream_seq: int
    duplicate: bool
    reply: dict[str, Any] | None
    removed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _history_entry(msg: StoredMessage) -> HistoryEntry:
    c = orjson.loads(msg.data)
    return HistoryEntry(
        seq=msg.seq,
        n=int(c.get("n", 0)),
        cmd=str(c.get("cmd", "")),
        action=str(c.get("action", "")),
        events=list(c.get("events") or []),
        result=c.get("result"),
        ts_ms=int(c.get("ts_ms", 0)),
        host=msg.headers.get(H_HOST),
        j=c.get("j"),
    )


def _dead_letter(msg: StoredMessage, root: str) -> DeadLetter:
    body = orjson.loads(msg.data)
    tokens = msg.subject.split(".")
    agent_type, agent_id = (tokens[-2], tokens[-1]) if len(tokens) == len(root.split(".")) + 3 else ("", "")
    if not (is_valid_token(agent_type) and is_valid_token(agent_id)):
        agent_type, agent_id = "_invalid", "_invalid"
    error = body.get("error") or {}
    headers = body.get("headers") or {}
    return DeadLetter(
        seq=msg.seq,
        type=agent_type,
        id=agent_id,
        code=str(error.get("code", "")),
        message=str(error.get("message", "")),
        command_id=headers.get(H_COMMAND_ID) or headers.get(H_MSG_ID),
        ts_ms=int(body.get("ts_ms", 0)),
        host=str(body.get("host", "")),
        body=body,
    )


class Inspector:
    """Operator operations over one client connection. ``agents``: the agent classes whose
    state this process may rebuild (time travel, ``show``); others show their snapshot."""

    def __init__(
        self,
        client: Any,
        *,
        agents: Iterable[type[Agent[Any]]] | Registry = (),
        timeout_s: float = 5.0,
    ) -> None:
        self.subjects: Subjects = client.subjects
        self.topology = Topology(self.subjects)
        self.registry = agents if isinstance(agents, Registry) else Registry(list(agents))
        self.io = AdminTransport(client.nc, timeout_s)

    # -- the cluster ---------------------------------------------------------------------------
    async def cluster(self) -> dict[str, Any]:
        """Members, leader, ring, claims as ``jetagents status`` shows them, plus the raw
        ring owners and each live member's heartbeat (load, partitions)."""
        bucket = self.topology.cluster_bucket
        scanned = await self.io.kv_scan(bucket, "member.")
        members = {k.removeprefix("member."): _doc(e.data) for k, e in scanned.items()}
        claims = {k: Entry(_doc(e.data), e.revision) for k, e in (await self.io.kv_scan(bucket, "claim.")).items()}
        leader, ring = await self.io.kv_get(bucket, "leader"), await self.io.kv_get(bucket, "ring")
        summary = cluster_summary(
            members,
            Entry(_doc(leader.data), leader.revision) if leader else None,
            Entry(_doc(ring.data), ring.revision) if ring else None,
            claims,
        )
        summary["owners"] = list(_doc(ring.data).get("owners", [])) if ring else []
        summary["members"] = members
        return summary

    async def active_agents(self, hosts: Iterable[str]) -> dict[str, str]:
        """Agent key -> the host that has it in memory, asked of each host (hosts that do
        not answer in time are left out)."""

        async def ask(h: str) -> dict[str, str]:
            if not is_valid_token(h):
                return {}
            try:
                msg = await self.io.request(self.subjects.sys("host", h, "agents"), b"{}", self.io.timeout_s)
            except (TimeoutError, JetAgentsError):
                return {}
            if no_responders(msg):
                return {}
            try:
                result = decode_reply(msg).result
            except JetAgentsError:
                return {}
            return {str(k): h for k in (result or {}).get("agents", [])}

        out: dict[str, str] = {}
        for found in await asyncio.gather(*(ask(h) for h in hosts)):
            out.update(found)
        return out

    # -- agents --------------------------------------------------------------------------------
    async def agents(
        self, agent_type: str | None = None, host: str | None = None, *, limit: int = 10_000
    ) -> list[AgentSummary]:
        """The agents with a log, by type and id, with the host serving each."""
        if agent_type is not None and not is_valid_token(agent_type):
            raise MalformedCommand(f"invalid agent type {agent_type!r}")
        pattern = self.subjects.evt(agent_type or "*", "*")
        counts = await self.io.subjects(self.topology.evt_stream, pattern, limit)
        cluster = await self.cluster()
        active = await self.active_agents([h["host"] for h in cluster["hosts"] if h["alive"]])
        placed = {
            k.removeprefix("place."): str(_doc(e.data).get("host", ""))
            for k, e in (await self.io.kv_scan(self.topology.cluster_bucket, "place.")).items()
        }
        owners: list[str] = cluster["owners"]
        out = []
        for subject, commits in sorted(counts.items()):
            t, i = subject.split(".")[-2:]
            key = f"{t}.{i}"
            serving = active.get(key) or placed.get(key) or (owners[partition_of(t, i, len(owners))] if owners else "")
            summary = AgentSummary(t, i, commits, serving or None, key in active)
            if host is None or summary.host == host:
                out.append(summary)
        return out

    async def show(self, agent_type: str, agent_id: str, *, last: int = 5) -> AgentDetail:
        aid = AgentId(agent_type, agent_id)
        subject = self.subjects.evt(aid.type, aid.id)
        counts = await self.io.subjects(self.topology.evt_stream, subject, 1)
        snap_entry = await self.io.kv_get(self.topology.snap_bucket, aid.key)
        snap = _doc(snap_entry.data) if snap_entry else {}
        last_msg = await self.io.last(self.topology.evt_stream, subject)
        spec = self.registry.get(aid.type)
        state: Any = snap.get("state")
        source = "snapshot" if snap else "none"
        n = int(snap.get("n", 0))
        last_seq = int(snap.get("seq", 0))
        if spec is not None:
            rebuilt = await self._rebuild(spec, aid, None)
            state, source, n, last_seq = rebuilt.state.model_dump(mode="json"), "replay", rebuilt.n, rebuilt.seq
        elif last_msg is not None:
            n, last_seq = int(orjson.loads(last_msg.data).get("n", n)), last_msg.seq
        history = await self.history(aid.type, aid.id, from_seq=max(1, last_seq - 10 * last), limit=10 * last)
        cluster = await self.cluster()
        active = await self.active_agents([h["host"] for h in cluster["hosts"] if h["alive"]])
        owners = cluster["owners"]
        placed = await self.io.kv_get(self.topology.cluster_bucket, f"place.{aid.key}")
        host = (
            active.get(aid.key)
            or (str(_doc(placed.data).get("host", "")) if placed else "")
            or (owners[partition_of(aid.type, aid.id, len(owners))] if owners else "")
        )
        return AgentDetail(
            type=aid.type,
            id=aid.id,
            state=state,
            state_source=source,
            n=n,
            last_seq=last_seq,
            commits_stored=counts.get(subject, 0),
            snapshot_seq=int(snap["seq"]) if "seq" in snap else None,
            host=host or None,
            active=aid.key in active,
            last_commits=history[-last:],
            health=await self._health(active[aid.key], aid.key) if aid.key in active else None,
            queued=await self.queued(aid.type, aid.id),
        )

    async def queued(self, agent_type: str, agent_id: str) -> int:
        """Commands stored for the agent and not yet acknowledged: both command streams
        are work queues, so what they hold on its subjects (any partition) is its queue."""
        aid = AgentId(agent_type, agent_id)
        root, total = self.subjects.root, 0
        for stream, lane in ((self.topology.cmd_stream, "p"), (self.topology.cmd_high_stream, "ph")):
            try:
                counts = await self.io.subjects(stream, f"{root}.{lane}.*.{aid.type}.{aid.id}", 1000)
            except JSApiError as exc:
                if exc.err_code != ERR_STREAM_NOT_FOUND:  # a deployment without the high lane
                    raise
                continue
            total += sum(counts.values())
        return total

    async def _health(self, host: str, key: str) -> dict[str, Any] | None:
        """The agent's health figures, asked of the host that has it in memory (None when it
        does not answer in time)."""
        try:
            msg = await self.io.request(
                self.subjects.sys("host", host, "agents"), orjson.dumps({"agent": key}), self.io.timeout_s
            )
            if no_responders(msg):
                return None
            result = decode_reply(msg).result
        except (TimeoutError, JetAgentsError):
            return None
        health = result.get("health") if isinstance(result, dict) else None
        return health if isinstance(health, dict) else None

    async def history(
        self, agent_type: str, agent_id: str, *, from_seq: int = 1, limit: int = 100
    ) -> list[HistoryEntry]:
        """The agent's commits from stream sequence ``from_seq``, oldest first (at most
        ``limit``, itself at most ``HISTORY_PAGE``)."""
        aid = AgentId(agent_type, agent_id)
        msgs, _ = await self.io.read(
            self.topology.evt_stream, self.subjects.evt(aid.type, aid.id), from_seq, min(limit, HISTORY_PAGE)
        )
        return [_history_entry(m) for m in msgs]

    async def follow(
        self, agent_type: str, agent_id: str, *, from_seq: int = 1, poll_s: float = 0.5
    ) -> AsyncIterator[HistoryEntry]:
        """The history from ``from_seq``, then every new commit as it is stored (polled by
        direct get: a reader needs no consumer and no subscription on the log)."""
        seq = from_seq
        while True:
            page = await self.history(agent_type, agent_id, from_seq=seq, limit=HISTORY_PAGE)
            for entry in page:
                yield entry
                seq = entry.seq + 1
            if len(page) < HISTORY_PAGE:
                await asyncio.sleep(poll_s)

    async def state_at(self, agent_type: str, agent_id: str, seq: int | None = None) -> Rebuilt:
        """Time travel: the state right after the commit at stream sequence ``seq`` (the
        latest when None), replayed here from the start of the log with the agent's own
        appliers. Reads only; needs the agent class (``agents=``)."""
        aid = AgentId(agent_type, agent_id)
        spec = self.registry.get(aid.type)
        if spec is None:
            raise UnknownAgentType(
                f"agent type {aid.type!r} is not known to this process; pass its class to rebuild its state",
                details={"types": self.registry.types()},
            )
        return await self._rebuild(spec, aid, seq)

    async def _rebuild(self, spec: AgentSpec, aid: AgentId, until_seq: int | None) -> Rebuilt:
        subject = self.subjects.evt(aid.type, aid.id)
        log: list[tuple[int, bytes]] = []
        start = 1
        while len(log) < REPLAY_MAX:
            msgs, more = await self.io.read(self.topology.evt_stream, subject, start, HISTORY_PAGE)
            log.extend((m.seq, m.data) for m in msgs if until_seq is None or m.seq <= until_seq)
            if not more or not msgs or (until_seq is not None and msgs[-1].seq >= until_seq):
                break
            start = msgs[-1].seq + 1
        first_n = int(orjson.loads(log[0][1]).get("n", 1)) if log else None
        if first_n == 1:
            return rebuild(spec, aid, log, until_seq=until_seq)
        # no first commit: a new agent, or a log cut by retention (ADR 0052) after a snapshot
        entry = await self.io.kv_get(self.topology.snap_bucket, aid.key)
        snap = _doc(entry.data) if entry else {}
        if not snap and first_n is None:
            return rebuild(spec, aid, log, until_seq=until_seq)
        snap_n, snap_seq = int(snap.get("n", -1)), int(snap.get("seq", 0))
        log = [(q, body) for q, body in log if q > snap_seq]  # retention keeps the last commit (the fence)
        first_n = int(orjson.loads(log[0][1]).get("n", 1)) if log else snap_n + 1
        if first_n != snap_n + 1 or (until_seq is not None and until_seq < snap_seq):
            raise InternalError(f"the log of {aid} before commit {snap_n + 1} was purged (retention); no state there")
        state = state_from(spec, aid, snap["state"], int(snap.get("sv", 1)))
        return rebuild(spec, aid, log, until_seq=until_seq, state=state, n=snap_n, seq=snap_seq)

    # -- dead letters --------------------------------------------------------------------------
    async def dead_letters(
        self,
        agent_type: str | None = None,
        agent_id: str | None = None,
        *,
        code: str | None = None,
        from_seq: int = 1,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters from ``from_seq``, oldest first, filtered by agent and error code."""
        for token in (agent_type, agent_id):
            if token is not None and not is_valid_token(token):
                raise MalformedCommand(f"invalid token {token!r}")
        subject = self.subjects.dlq(agent_type or "*", agent_id or "*")
        out: list[DeadLetter] = []
        seq = from_seq
        while len(out) < limit:
            msgs, more = await self.io.read(self.topology.dlq_stream, subject, seq, HISTORY_PAGE)
            for m in msgs:
                dl = _dead_letter(m, self.subjects.root)
                if code is None or dl.code == code:
                    out.append(dl)
            if not more or not msgs:
                break
            seq = msgs[-1].seq + 1
        return out[:limit]

    async def dead_letter(self, seq: int) -> DeadLetter | None:
        msg = await self.io.at(self.topology.dlq_stream, seq)
        if msg is None or not msg.subject.startswith(f"{self.subjects.root}.dlq."):
            return None
        return _dead_letter(msg, self.subjects.root)

    async def redrive(self, seq: int, *, wait_s: float = 0.0) -> Redriven:
        """Send dead letter ``seq`` again as a durable command to its agent, under its
        original command id (the agent's record then answers a second redrive instead of
        applying it twice), with a message id of its own (the original may still be in the
        stream's duplicate window). ``wait_s`` > 0 waits that long for the agent's answer.
        The dead letter is removed once the stream has stored the command."""
        dl = await self.dead_letter(seq)
        if dl is None:
            raise MalformedCommand(f"no dead letter at sequence {seq}")
        if not dl.redrivable:
            raise MalformedCommand(
                f"dead letter {seq} cannot be redriven: "
                + ("its agent address is invalid" if dl.type == "_invalid" else "its payload was truncated")
            )
        body = dl.body
        payload = str(body.get("payload", ""))
        data = base64.b64decode(payload) if body.get("payload_encoding") == "base64" else payload.encode()
        command_id = dl.command_id or f"redrive-{seq}"
        original = body.get("headers") or {}
        headers = {k: str(original[k]) for k in _KEPT_HEADERS if k in original}
        headers[H_COMMAND_ID] = command_id
        headers[H_MSG_ID] = f"{command_id}.redrive-{seq}"
        reply_subject, fut = (await self.io.expect()) if wait_s > 0 else ("", None)
        if reply_subject:
            headers[H_REPLY_TO] = reply_subject
        try:
            ack = await self.io.publish_durable(self.subjects.cmd(dl.type, dl.id), data, headers)
            reply = None
            if fut is not None:
                try:
                    async with asyncio.timeout(wait_s):
                        answer = await fut
                    reply = orjson.loads(answer.data)
                except TimeoutError:
                    reply = None
        finally:
            if reply_subject:
                await self.io.forget(reply_subject)
        removed = True
        try:
            await self.io.delete_message(self.topology.dlq_stream, seq)
        except JetAgentsError:
            removed = False  # without the right to delete: the command went, the letter stays
        return Redriven(
            seq, f"{dl.type}/{dl.id}", command_id, int(ack["seq"]), bool(ack.get("duplicate")), reply, removed
        )

    async def redrive_where(
        self,
        agent_type: str | None = None,
        agent_id: str | None = None,
        *,
        code: str | None = None,
        limit: int = 1000,
        wait_s: float = 0.0,
    ) -> list[Redriven]:
        """Redrive every redrivable dead letter that matches (all of them without a filter)."""
        letters = await self.dead_letters(agent_type, agent_id, code=code, limit=limit)
        return [await self.redrive(dl.seq, wait_s=wait_s) for dl in letters if dl.redrivable]


def _doc(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
