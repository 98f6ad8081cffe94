"""Running, reading and rebuilding projections (ADR 0057).

>>> runner = client.projections.runner(Totals())  # doctest: +SKIP
>>> await runner.run(stop=stop_event)  # one process at a time leads; others wait for its lease
>>> await client.projections.reader("totals").get("c1")  # doctest: +SKIP
{'total': 3, 'events': 2}
>>> await client.projections.rebuild("totals")  # doctest: +SKIP

A runner holds the lease ``proj.<name>`` (ADR 0050) so that one process at a time applies
events; the others wait and take over when it dies (its lease expires). Correctness does not
rest on the lease: every write of rows goes with the position, in one atomic batch expecting
the position's revision, so a paused former runner's write is refused and it starts again
from the stored position.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from .._core.errors import JetAgentsError
from .._core.kv import CasConflict
from .._core.logtail import Decoders, log_filter
from .._core.projection import Position, Projection, ProjectionView, validate_row_key
from .._core.retry import RetryPolicy
from .._nats.projection_store import MAX_BATCH_ROWS, ProjectionStore
from .events import EventTail

if TYPE_CHECKING:
    from .client import Client

__all__ = ["ProjectionReader", "ProjectionRunner", "Projections", "rebuild_projection"]

log = structlog.get_logger("jetagents.projection")
_RETRY = RetryPolicy(attempts=1_000_000, base_s=0.1, max_s=2.0)
_CHECK_S = 1.0  # how often an idle runner looks whether its position moved (a rebuild)


class _Restart(Exception):
    """The stored position moved under the runner: load it again."""


def _store(client: Client) -> ProjectionStore:
    return ProjectionStore(client.nc, client.subjects, timeout_s=client.settings.request_timeout_s)


class ProjectionRunner:
    """Feeds one projection the commits of its agent types, from its stored position on,
    and stores rows and position together: after every ``batch_events`` events, when
    ``MAX_BATCH_ROWS`` rows are dirty, and ``flush_s`` after the last write when idle.
    ``applied`` counts the events applied since start; ``position`` is the last stored."""

    def __init__(
        self,
        client: Client,
        projection: Projection,
        *,
        batch_events: int = 4096,
        flush_s: float = 0.2,
        read_batch: int = 512,
        lease_ttl_s: float = 10.0,
    ) -> None:
        self.client = client
        self.projection = projection
        self.name = projection.checked_name()
        self.batch_events = batch_events
        self.flush_s = flush_s
        self.read_batch = read_batch
        self.lease_ttl_s = lease_ttl_s
        self.store = _store(client)
        self.position = Position()
        self.applied = 0
        self.leading = asyncio.Event()
        types = projection.agent_types()
        if not types:
            raise ValueError(f"projection {self.name} declares no @on handler")
        # one type: the server filters; several: read every agent's log and skip the rest
        only = next(iter(types)) if len(types) == 1 else None
        self._subject = log_filter(self._events_subject, only, None)
        self._decoders = Decoders(projection.agents)

    async def run(self, *, stop: asyncio.Event | None = None) -> None:
        """Lead whenever this process holds the lease, until ``stop`` is set."""
        stop = stop or asyncio.Event()
        await self.store.ensure()
        attempt = 0
        while not stop.is_set():
            lease = self.client.lease(f"proj.{self.name}", ttl_s=self.lease_ttl_s)
            try:
                acquiring = asyncio.ensure_future(lease.acquire())
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                if not acquiring.done():
                    acquiring.cancel()
                    with contextlib.suppress(asyncio.CancelledError, JetAgentsError):
                        await acquiring
                    break
                acquiring.result()
                try:
                    await self._lead(lease.lost, stop)
                finally:
                    self.leading.clear()
                    with contextlib.suppress(JetAgentsError):
                        await lease.release()
                attempt = 0
            except JetAgentsError as exc:
                if not exc.retryable:  # an event it cannot read (IncompatibleSchema): stop, never loop
                    raise
                log.warning("projection_unavailable", projection=self.name, error=str(exc))
                await asyncio.sleep(_RETRY.delay(min(attempt, 6)))
                attempt += 1

    async def _lead(self, lost: asyncio.Event, stop: asyncio.Event) -> None:
        while not (lost.is_set() or stop.is_set()):
            try:
                await self._apply_from_stored(lost, stop)
            except _Restart:
                log.info("projection_position_moved", projection=self.name)

    async def _apply_from_stored(self, lost: asyncio.Event, stop: asyncio.Event) -> None:
        found = await self.store.position(self.name)
        if found is None:
            pos, rev = Position(), 0
        else:
            pos, rev = Position.model_validate(found[0]), found[1]
        self.position = pos
        gen = pos.gen
        view = ProjectionView(lambda key: self.store.row(self.name, gen, key))
        tail = EventTail(self._open_reader, self._decoders, self._events_subject, after=pos.seq, batch=self.read_batch)
        self.leading.set()
        loop = asyncio.get_running_loop()
        pending = 0  # events applied since the last write
        written_at = checked_at = loop.time()
        seq = read_to = pos.seq
        try:
            while not (lost.is_set() or stop.is_set()):
                before = read_to
                commits, read_to = await tail.next_batch(wait_s=self.flush_s)
                for commit in commits:
                    for event in commit.events:
                        handler = self.projection.handler(commit.agent.type, event.type)
                        if handler is not None:
                            await handler(view, commit, event)
                            pending += 1
                    seq = commit.seq
                    if pending >= self.batch_events or len(view.dirty) >= MAX_BATCH_ROWS:
                        rev = await self._write(view, pos, rev, seq, pending)
                        pending, written_at = 0, loop.time()
                seq = max(seq, read_to)
                now = loop.time()
                idle = read_to == before  # caught up: nothing was stored meanwhile
                if seq > pos.seq and (idle or now - written_at >= self.flush_s):
                    rev = await self._write(view, pos, rev, seq, pending)
                    pending, written_at = 0, now
                elif idle and now - checked_at >= _CHECK_S:
                    checked_at = now
                    found = await self.store.position(self.name)
                    if found is None or found[1] != rev:
                        raise _Restart
            if seq > pos.seq and not lost.is_set():  # stopping: keep what was applied
                await self._write(view, pos, rev, seq, pending)
        finally:
            await tail.aclose()

    async def _write(self, view: ProjectionView, pos: Position, rev: int, seq: int, pending: int) -> int:
        pos.seq, pos.events = seq, pos.events + pending
        pos.ts_ms = self.client._clock.wall_ms()
        try:
            rev = await self.store.commit(self.name, pos.model_dump(), rev, pos.gen, view.dirty)
        except CasConflict:
            raise _Restart from None
        view.written()
        self.applied += pending
        return rev

    @property
    def _events_subject(self) -> str:
        return f"{self.client.subjects.root}.evt"

    async def _open_reader(self) -> Any:
        from .._nats.api import Topology

        stream = Topology(self.client.subjects).evt_stream
        return await self.client._transport.log_reader(stream, self._subject, self.client.settings.request_timeout_s)


class ProjectionReader:
    """Reads a projection's rows (direct gets: any replica answers, a moment behind at most)."""

    def __init__(self, client: Client, name: str) -> None:
        from .._core.ids import validate_token

        self.name = validate_token(name, "projection name")
        self.store = _store(client)

    async def position(self) -> Position | None:
        doc = await self.store.peek_position(self.name)
        return None if doc is None else Position.model_validate(doc)

    async def get(self, key: str, default: Any = None) -> Any:
        """The row at ``key`` of the current generation, or ``default``."""
        pos = await self.position()
        if pos is None:
            return default
        value = await self.store.peek_row(self.name, pos.gen, validate_row_key(key))
        return default if value is None else value


async def rebuild_projection(client: Client, name: str) -> Position:
    """Start projection ``name`` again from the start of the event stream, in a new
    generation of rows: its runner (wherever it runs) notices within a second and applies
    every event again; the old generation's rows are removed. The new position."""
    from .._core.ids import validate_token

    validate_token(name, "projection name")
    store = _store(client)
    await store.ensure()
    while True:
        found = await store.position(name)
        old = Position() if found is None else Position.model_validate(found[0])
        new = Position(seq=0, gen=old.gen + 1, events=0, ts_ms=client._clock.wall_ms())
        try:
            await store.set_position(name, new.model_dump(), 0 if found is None else found[1])
        except CasConflict:
            continue  # the runner wrote meanwhile: bump what it wrote
        break
    await store.purge_generation(name, old.gen)
    return new


class Projections:
    """``client.projections``: ``runner(projection)``, ``reader(name)``, ``rebuild(name)``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def runner(self, projection: Projection, **options: Any) -> ProjectionRunner:
        """A runner of ``projection`` (``await runner.run(stop=event)``); see ProjectionRunner."""
        return ProjectionRunner(self._client, projection, **options)

    def reader(self, name: str) -> ProjectionReader:
        return ProjectionReader(self._client, name)

    async def rebuild(self, name: str) -> Position:
        return await rebuild_projection(self._client, name)
