"""The agents a host has in memory: activation (snapshot + replay), passivation, snapshots.

The ``Catalog`` owns ``activations`` (agent key -> ``Activation``, least recently used first)
and decides when an agent leaves memory: idle for ``idle_passivate_s``, over the
``max_active_agents`` budget, its partition handed over, or its log moved on without it
(``evict``: the next command rebuilds it). It reads the event log through the replay side of
the ``EventStream`` port (``LogReader``) and the snapshot and metadata buckets through the
``Bucket`` port, never through nats.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pydantic import ValidationError

from .._core.agent import Agent, AgentContext, AgentSpec
from .._core.blobref import BlobUnreadable
from .._core.callchain import Frame
from .._core.clock import Clock
from .._core.dedup import DedupRecord
from .._core.errors import AgentDeleted, FencedError, InternalError, JetAgentsError, Unavailable, UnknownAgent
from .._core.ids import AgentId, partition_of
from .._core.journal import Journal, fold
from .._core.upcast import state_from
from .._core.wire import H_COMMAND_ID, H_HOST, H_MSG_ID, Commit, Subjects
from .._obs.metrics import Metrics
from .._obs.telemetry import HostTelemetry
from .._settings import HostSettings
from .blobs import Blobs
from .ports import Bucket, Schedules, StoredMessage
from .quarantine import Quarantine
from .reminders import BoundReminders, Reminders
from .restore import older_snapshots, reset_commit, reset_state
from .supervisor import Supervisor

if TYPE_CHECKING:
    from .._core.command import Command
    from .health import AgentHealth, Health


class LogReader(Protocol):
    """What the catalog reads of the event log (the replay side of ``ports.EventStream``)."""

    async def read_subject(self, subject: str, start_seq: int, batch: int) -> list[StoredMessage]: ...


@dataclass(slots=True, eq=False)
class Activation:
    """An agent in memory, or about to be: its mailbox, log position and dedup record."""

    agent_id: AgentId
    spec: AgentSpec
    agent: Agent[Any] | None = None
    last_seq: int = 0  # stream sequence of this agent's last commit (the fence)
    n: int = 0  # commits so far, gapless from 1
    # command id -> (event seq or 0, ok, result or wire error): applied commands (from the
    # log, durable) and domain refusals (in memory only), so a redelivery or a re-send gets
    # the first answer and is not applied again
    records: DedupRecord | None = None  # created on demand (~200 B)
    own: int = 0  # the largest writer claim seen in this agent's log
    mailbox: deque[Command] | None = None  # created on demand: an empty deque costs ~600 B per agent
    scheduled: bool = False
    since_snapshot: int = 0
    snapshotting: bool = False
    last_used: float = 0.0
    # durable commands handed back because the mailbox was full: stream sequence ->
    # (times handed back, when last); later commands wait (are handed back) behind them
    held: dict[int, tuple[int, float]] | None = None
    # command id -> its open journal (ADR 0042): commands whose durable steps are in the log
    # but whose closing commit is not; created on demand
    journals: dict[str, Journal] | None = None
    # the call-chain frames of its running actions while they wait on a call (ADR 0042
    # section 7): the running command's, a re-entrant one's; created on demand
    frames: list[Frame] | None = None
    # signals that came with nobody waiting for them, oldest first (their ``inbox`` entries,
    # with ``cmd``: the signal's command id); created on demand
    inbox: list[dict[str, Any]] | None = None
    # command ids a ``cancel`` named while they may be running: their next step boundary
    # raises ActionCancelled (ADR 0042 §8); created on demand
    cancelling: set[str] | None = None
    health: AgentHealth | None = None  # its measured figures and policy's state (ADR 0059)

    def dedup(self, limit: int) -> DedupRecord:
        """Its record of command ids (at most ``limit``), made on demand: most agents never
        see a repeat."""
        if self.records is None:
            self.records = DedupRecord(limit)
        return self.records


def _busy(act: Activation) -> bool:
    """Whether the agent has commands running, queued or handed back (it stays in memory)."""
    return act.scheduled or bool(act.mailbox) or bool(act.held)


class Catalog:
    """The activations of one host, and the snapshots that make the next activation cheap."""

    def __init__(
        self,
        settings: HostSettings,
        subjects: Subjects,
        clock: Clock,
        supervisor: Supervisor,
        metrics: Metrics,
        tel: HostTelemetry,
        log: Any,
        token_of: Callable[[AgentId, int], int | None],
    ) -> None:
        self.settings = settings
        self.subjects = subjects
        self.clock = clock
        self.supervisor = supervisor
        self.metrics = metrics
        self.tel = tel
        self.log = log
        # this host's writer token for an agent, None without cluster membership (no fence)
        self.token_of = token_of
        self.activations: OrderedDict[str, Activation] = OrderedDict()
        self.steps: Any = None  # the host's durable steps (``_host/steps.py``), set by the pipeline
        self.blobs = Blobs(settings, log)  # payloads by reference (ADR 0042 section 9); bound by the host
        self.schedules: Schedules | None = None  # the server's timers and reminders, set by the host
        self._snap_sem = asyncio.Semaphore(16)
        self._events: LogReader = None  # type: ignore[assignment]  # set by bind()
        self._snapshots: Bucket = None  # type: ignore[assignment]
        self._meta: Bucket = None  # type: ignore[assignment]
        self._client: Any = None
        self._tombs: Bucket | None = None  # tombstones of deleted agents (ADR 0052)
        self.quarantine: Quarantine | None = None  # set by the host (ADR 0053)
        self.health: Health = None  # type: ignore[assignment]  # set by the pipeline (ADR 0059)
        # called before an agent's first command of an activation (declared subscriptions)
        self.on_activate: Callable[[AgentId, AgentSpec], Awaitable[None]] | None = None

    def bind(
        self, events: LogReader, snapshots: Bucket, meta: Bucket, client: Any, tombs: Bucket | None = None
    ) -> None:
        """Connected: the event log, the buckets, and the client the agents call others with."""
        self._events, self._snapshots, self._meta, self._client = events, snapshots, meta, client
        self._tombs = tombs

    def bind_quarantine(self, bucket: Bucket, event: Any = None) -> None:
        """The quarantine bucket (ADR 0053); unbound, or ``quarantine_after`` 0, nothing is
        quarantined and activations skip the read of the bucket."""
        s = self.settings
        if s.quarantine_after <= 0:
            return
        self.quarantine = Quarantine(bucket, event, s, clock=self.clock, metrics=self.metrics, log=self.log)

    async def activate(self, act: Activation, given: dict[str, Any] | None = None) -> None:
        """Rebuild the agent: snapshot (if any and readable) + replay of later commits; a
        quarantined agent is refused, and one that keeps failing is quarantined (ADR 0053)."""
        quarantine = self.quarantine
        # read beside the snapshot: no round trip more per activation
        checking = asyncio.ensure_future(quarantine.check(act.agent_id)) if quarantine is not None else None
        try:
            tail = await self._checked(act, given, checking)
            if tail is not None:
                await self._restore_tail(act, *tail)
        except InternalError as err:  # its log or snapshot cannot be read or applied
            if given is not None or not await self._from_older(act, err):
                if quarantine is not None:
                    await quarantine.failed(act.agent_id, err)
                raise
        if quarantine is not None:
            quarantine.succeeded(act.agent_id)

    async def _checked(
        self, act: Activation, given: dict[str, Any] | None, checking: asyncio.Future[None] | None
    ) -> tuple[int, int] | None:
        """``_activate``, refused when ``checking`` (the quarantine read) says quarantined."""
        try:
            tail = await self._activate(act, given)
        except asyncio.CancelledError:
            if checking is not None:
                checking.cancel()
            raise
        except BaseException:
            if checking is not None:
                await checking  # a quarantined agent's failure is "quarantined"
            raise
        if checking is not None:
            try:
                await checking
            except BaseException:
                act.agent = None
                raise
        return tail

    async def _from_older(self, act: Activation, err: InternalError) -> bool:
        """Rebuild the agent from an older snapshot (newest first) and the log after it."""
        aid = act.agent_id
        try:
            older = await older_snapshots(self._snapshots, aid.key)
        except Exception as exc:  # noqa: BLE001 - nats-py raises several types here
            self.log.warning("snapshot_history_unreadable", agent=str(aid), error=str(exc))
            return False
        for snap in older:
            try:
                tail = await self._activate(act, snap)
                if tail is not None:
                    await self._restore_tail(act, *tail, counted=True)
            except InternalError:
                act.agent = None
                continue
            self.metrics.inc("restores", agent_type=aid.type)
            self.log.warning("agent_restored", agent=str(aid), snapshot_seq=snap.get("seq"), error=err.message)
            return True
        return False

    async def _restore_tail(
        self, act: Activation, unreadable_from: int, tail_end: int, *, counted: bool = False
    ) -> None:
        """The log of ``act`` cannot be read from ``unreadable_from`` on: append a reset
        commit (after ``tail_end``, the subject's last message: the fence) with the state as
        of its last good commit, so every later replay continues from it."""
        aid = act.agent_id
        token = self.token_of(aid, partition_of(aid.type, aid.id, self.settings.partitions)) or act.own
        n = act.n + 1
        cmd, body = reset_commit(
            n=n,
            own=token,
            ts_ms=self.clock.wall_ms(),
            body=self.snapshot_body(act),
            extra={"unreadable_from": unreadable_from},
        )
        hdrs = {H_MSG_ID: f"{aid.key}:{cmd}", H_COMMAND_ID: cmd, H_HOST: self.settings.host_id}
        events: Any = self._events
        try:
            ack = await events.append(
                self.subjects.evt(aid.type, aid.id), body, hdrs, expected_last_subject_seq=tail_end
            )
        except Exception as exc:  # noqa: BLE001 - fenced, or the store is down: not restored
            act.agent = None
            raise Unavailable(f"cannot append the reset commit of {aid}: {exc!r}") from None
        act.n, act.last_seq, act.own = n, ack.seq, max(act.own, token)
        if not counted:  # from an older snapshot: that restore counts it
            self.metrics.inc("restores", agent_type=aid.type)
        self.log.warning(
            "log_tail_reset", agent=str(aid), unreadable_from=unreadable_from, tail_end=tail_end, reset_seq=ack.seq
        )

    async def _activate(
        self, act: Activation, given: dict[str, Any] | None, until_seq: int = 0
    ) -> tuple[int, int] | None:
        """The rebuild; ``(first unreadable sequence, last sequence)`` when the log's tail
        after its last good commit cannot be read (the caller appends a reset commit)."""
        s = self.settings
        aid = act.agent_id
        started = self.clock.monotonic()
        metadata: dict[str, Any] = {}
        try:
            if act.spec.spawn_required:
                value = await self._meta.get(aid.key)
                if value is None:
                    raise UnknownAgent(f"{aid} was never spawned (type {aid.type!r} requires spawn)")
                metadata = orjson.loads(value) if value else {}
            state = None
            n = 0
            last_seq = 0
            kept: list[tuple[Any, ...]] = []  # the snapshot's exactly-once record (4th: ok, ADR 0042)
            journals: dict[str, Journal] = {}
            inbox: list[dict[str, Any]] = []
            refused: list[tuple[str, int, Any]] = []  # journals closed with an error (ADR 0042)
            replayed: list[tuple[str, int, Any]] = []
            raw_snap: bytes | None = None
            snap: Any = None
            try:
                if given is not None:  # handed over by the previous host (state transfer)
                    snap = given
                elif self._tombs is not None:  # read together: a deleted agent costs no round trip more
                    raw_snap, tomb = await asyncio.gather(self._snapshots.get(aid.key), self._tombs.get(aid.key))
                    if tomb is not None:
                        raise AgentDeleted(f"{aid} was deleted", details={"agent": str(aid)})
                    raw_snap = raw_snap or None
                else:
                    raw_snap = await self._snapshots.get(aid.key) or None
            except AgentDeleted:
                raise
            except Exception as exc:  # noqa: BLE001 - nats-py raises several types here
                raise Unavailable(f"cannot read the snapshot of {aid}: {exc!r}") from None
            if raw_snap is not None:
                try:  # unreadable (not JSON): ignored like one that does not fit the state
                    snap = orjson.loads(raw_snap)
                except orjson.JSONDecodeError as exc:
                    self.log.warning("snapshot_unusable", agent=str(aid), error=str(exc))
            own = 0
            if snap:
                try:
                    if not isinstance(snap, dict):
                        raise TypeError(f"a snapshot is a JSON object, not {type(snap).__name__}")
                    raw_state = await self.blobs.resolve(snap["state"], f"the snapshot of {aid}")
                    state = state_from(act.spec, aid, raw_state, int(snap.get("sv", 1)))
                    last_seq = int(snap["seq"])
                    n = int(snap["n"])
                    own = int(snap.get("own", 0))
                    kept = [(str(r[0]), int(r[1]), r[2], *r[3:4]) for r in snap.get("records", [])]
                    journals = {str(c): Journal.from_json(j) for c, j in snap.get("journals", {}).items()}
                    inbox = [dict(e) for e in snap.get("inbox", [])]
                except (ValidationError, KeyError, TypeError, ValueError, BlobUnreadable, InternalError) as exc:
                    # (an old state without its upcaster too: the log is the truth, replayed whole)
                    self.log.warning("snapshot_unusable", agent=str(aid), error=str(exc))
                    state, n, last_seq = None, 0, 0
                    kept, journals, inbox = [], {}, []
            ctx = AgentContext(aid, self.clock, client=self._client, metadata=metadata)
            if self.steps is not None:
                ctx.steps = self.steps.bind(act)
            if self.schedules is not None:
                ctx.reminders = BoundReminders(Reminders(self.subjects, self.schedules), act.spec, aid.type, aid.id)
            agent = act.spec.cls(ctx, state)
            msgs = await self._events.read_subject(self.subjects.evt(aid.type, aid.id), last_seq + 1, 256)
            unreadable = tail_end = 0
            if until_seq:  # as of that commit (a rollback, ADR 0053)
                msgs = [m for m in msgs if m.seq <= until_seq]
            for m in msgs:
                try:
                    commit = Commit.model_validate_json(m.data)
                except ValidationError:  # the tail from here is lost, unless a reset commit follows
                    unreadable, tail_end = unreadable or m.seq, m.seq
                    continue
                if unreadable:
                    tail_end = m.seq
                    if commit.reset is None or commit.n != n + 1:
                        continue
                    unreadable = 0
                if commit.n != n + 1:
                    raise InternalError(f"event log of {aid} has a gap: commit {commit.n} after {n}")
                if commit.reset is not None:  # a reset commit (ADR 0053): the state as of then
                    agent._state, kept, journals, inbox = reset_state(act.spec, commit.reset)
                    replayed, refused = [], []
                events = commit.events
                if self.blobs.refers(events):  # large event data by reference (ADR 0042 section 9)
                    events = await self.blobs.resolve_events(events, f"commit {commit.n} of {aid}")
                try:
                    agent._replay(events)
                except (JetAgentsError, ValidationError):
                    raise
                except Exception as exc:  # noqa: BLE001 - an applier raised: the log cannot be applied
                    raise InternalError(f"replay of {aid} failed at commit {commit.n}: {exc!r}") from None
                n = commit.n
                own = max(own, commit.own)
                last_seq = m.seq or last_seq
                # only a closing commit answers its command; a journal entry keeps it open
                j = commit.j
                agent._fired_replay(j)  # a reminder's last firing (ADR 0042 §5)
                if j is None or fold(journals, commit.cmd, j, commit.action, inbox):
                    if j is not None and j.get("error") is not None:
                        refused.append((commit.cmd, last_seq, j["error"]))
                    else:
                        replayed.append((commit.cmd, last_seq, commit.result))
            records = DedupRecord.rebuilt(kept, replayed, s.dedup_records_per_agent)
            for cmd, seq, error in refused:  # in the log, answered with their error
                records.refused(cmd, error, seq)
        except ValidationError as exc:
            raise InternalError(f"event log of {aid} is unreadable: {exc}") from None
        partition = partition_of(aid.type, aid.id, s.partitions)
        token = self.token_of(aid, partition)
        if token is not None and own > token:
            # A host with a newer claim on this partition has written this agent: ours is
            # stale (we were paused or cut off). Never write after it.
            raise FencedError(f"{aid} was written by a newer owner of partition {partition}")
        if self.on_activate is not None:
            await self.on_activate(aid, act.spec)
        act.agent = agent
        act.own = own
        act.n, act.last_seq, act.records = n, last_seq, records if len(records) else None
        act.journals = journals or None
        act.inbox = inbox or None
        act.since_snapshot = len(msgs)
        self.metrics.inc("activations", agent_type=aid.type)
        self.tel.activated(aid.type, len(msgs), self.clock.monotonic() - started)
        if len(self.activations) > s.max_active_agents:
            self.evict_lru()
        return (unreadable, tail_end) if unreadable else None

    async def read_log(self, aid: AgentId, start_seq: int) -> list[tuple[int, Commit]]:
        """The agent's commits from ``start_seq`` on, with their sequences (a duplicate's
        search for its command's closing commit, ADR 0042)."""
        msgs = await self._events.read_subject(self.subjects.evt(aid.type, aid.id), start_seq, 256)
        return [(m.seq, Commit.model_validate_json(m.data)) for m in msgs]

    def evict(self, act: Activation) -> None:
        """Forget the agent's state (it stays listed): the next command rebuilds it from the log."""
        act.agent = None
        act.records = None
        act.since_snapshot = 0

    def evict_lru(self) -> None:
        over = len(self.activations) - self.settings.max_active_agents
        for key, act in list(self.activations.items()):
            if over <= 0:
                break
            if not _busy(act):
                self.passivate(key, act)
                over -= 1

    def passivate(self, key: str, act: Activation) -> None:
        self.activations.pop(key, None)
        self.metrics.inc("passivations", agent_type=act.agent_id.type)
        if act.agent is not None and act.since_snapshot > 0:
            self.supervisor.spawn("side", self.snapshot(act))

    def passivate_idle(self, now: float, prune_held: Callable[[Activation, float], None]) -> None:
        """The housekeeping's round: drop agents idle for ``idle_passivate_s`` (after
        ``prune_held`` forgot their stale hand-backs), then keep to the budget."""
        s = self.settings
        for key, act in list(self.activations.items()):
            if act.held is not None:
                prune_held(act, now)
            if not _busy(act) and now - act.last_used > s.idle_passivate_s:
                self.passivate(key, act)
        if len(self.activations) > s.max_active_agents:
            self.evict_lru()

    async def forget_partition(self, partition: int, *, graceful: bool) -> None:
        """Forget every agent of ``partition``: if it ever comes back here, it is rebuilt
        from the log, never served from what we remember (that would be a stale read).
        Graceful: snapshot them first (bounded by ``op_timeout_s``), so the next owner starts warm."""
        parts = self.settings.partitions
        snaps = []
        for key, act in list(self.activations.items()):
            if partition_of(act.agent_id.type, act.agent_id.id, parts) != partition:
                continue
            self.activations.pop(key, None)
            self.metrics.inc("passivations", agent_type=act.agent_id.type)
            if act.scheduled or act.mailbox:
                # still running (only when not graceful): what it has in hand rebuilds
                # the agent from the log first, where the ownership fence applies
                act.agent = None
                continue
            if graceful and act.agent is not None and act.since_snapshot > 0:
                snaps.append(self.snapshot(act))
        await self._gather(snaps, self.settings.op_timeout_s)

    async def snapshot_all(self, timeout_s: float) -> None:
        """Snapshot every agent with commits since its last snapshot (bounded by ``timeout_s``)."""
        await self._gather(
            [self.snapshot(a) for a in self.activations.values() if a.agent and a.since_snapshot], timeout_s
        )

    @staticmethod
    async def _gather(snaps: Sequence[Awaitable[None]], timeout_s: float) -> None:
        if snaps:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.gather(*snaps, return_exceptions=True)

    def snapshot_body(self, act: Activation) -> dict[str, Any]:
        assert act.agent is not None
        body: dict[str, Any] = {
            "v": 1,
            "state": act.agent._state.model_dump(mode="json"),
            "seq": act.last_seq,
            "n": act.n,
            "own": act.own,
            # only applied commands: a refusal is not in the log either
            "records": act.records.snapshot() if act.records is not None else [],
        }
        if act.spec.cls.state_version != 1:  # the state's schema version (ADR 0052)
            body["sv"] = act.spec.cls.state_version
        if act.journals:  # open journals (ADR 0042): replay after the snapshot cannot see them
            body["v"] = 2
            body["journals"] = {cmd: journal.to_json() for cmd, journal in act.journals.items()}
        if act.inbox:  # buffered signals (ADR 0042 §3)
            body["v"] = 2
            body["inbox"] = act.inbox
        return body

    async def snapshot(self, act: Activation) -> None:
        agent = act.agent
        if agent is None or act.snapshotting:
            return
        act.snapshotting = True
        snap = self.snapshot_body(act)
        body = orjson.dumps(snap)
        taken = act.since_snapshot
        try:
            if len(body) > self.blobs.threshold:  # the state by reference (ADR 0042 section 9)
                snap["state"] = await self.blobs.offload(snap["state"], act.agent_id.key)
                body = orjson.dumps(snap)
            async with self._snap_sem:
                await self._snapshots.put(act.agent_id.key, body)
            if act.health is not None:
                act.health.state_bytes = len(body)
            act.since_snapshot = max(0, act.since_snapshot - taken)
        except Exception as exc:  # noqa: BLE001 - a missing snapshot only costs replay time
            self.log.warning("snapshot_failed", agent=str(act.agent_id), error=str(exc))
        finally:
            act.snapshotting = False
