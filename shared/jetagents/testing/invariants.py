"""The simulation's invariants, checked after every step (``jetagents.testing.simulation``).

Each check reads only what is new since the last one (the stream's messages, the store's
writes, the history, the snapshots written), so checking after every step stays cheap.
"""

from __future__ import annotations

import orjson

from .._core.journal import closes_command
from .._core.wire import H_HOST
from .._host.ports import StoredMessage
from .simworld import SUBJECTS, World

__all__ = ["Invariants", "Violation"]


class Violation(AssertionError):
    """An invariant does not hold: the message names it, the run's history shows why."""


class Invariants:
    """The checks run after every step, incrementally (each reads only what is new)."""

    def __init__(self, world: World, *, records: int = 8, window_s: float = 120.0) -> None:
        self.world = world
        # exactly once holds while a command id is in its agent's record (of its last ``records``
        # commits at least: ``dedup_records_per_agent``) or in the event stream's duplicate
        # window (``window_s``); a re-send outside both may run again (wire contract 6)
        self.records, self.window_s = records, window_s
        self.closed_at: dict[tuple[str, str], tuple[int, float]] = {}  # (subject, cmd) -> (its n, when)
        self._events_seen = 0
        self._store_seen = 0
        self._history_seen = 0
        self._snapshots_seen = 0
        self.logs: dict[str, tuple[int, int]] = {}  # subject -> (last n, largest writer claim)
        self.logged: dict[str, set[str]] = {}  # subject -> command ids in its log
        self.claim_host: dict[tuple[str, int], str] = {}  # (subject, claim) -> writer
        self.claims_seen: dict[tuple[int, int], str] = {}  # (partition, ring epoch) -> host
        self.subject_of_seq: dict[int, tuple[str, str]] = {}  # command stream seq -> (evt subject, id)
        self.refused: set[str] = set()  # command ids the host must answer without applying
        # journals (ADR 0042): command ids with entries in a log that do not close them, and
        # per log the commands suspended on a wait whose journal has not closed yet
        self.journaled: dict[str, set[str]] = {}
        self.holding: dict[str, set[str]] = {}

    def _remembered(self, subject: str, cmd: str, n: int) -> bool:
        """Whether ``cmd``'s earlier closing commit is still in its agent's record (fewer than
        ``records`` commits since) or in the event stream's duplicate window, when ``cmd``
        closes again at commit ``n``: applying it again is then a violation."""
        first_n, when = self.closed_at[(subject, cmd)]
        return n - first_n <= self.records or self.world.clock.monotonic() - when < self.window_s

    def check(self) -> None:
        msgs = self.world.events.messages
        for m in msgs[self._events_seen :]:
            c = orjson.loads(m.data)
            n, cmd, own = int(c["n"]), str(c["cmd"]), int(c.get("own", 0))
            host = m.headers.get(H_HOST, "?")
            last_n, top = self.logs.get(m.subject, (0, 0))
            if n != last_n + 1:
                raise Violation(f"{m.subject}: commit {n} after {last_n} (seq {m.seq}, by {host}): a gap")
            cmds = self.logged.setdefault(m.subject, set())
            j = c.get("j")
            if closes_command(cmd, j):  # the command's one closing commit (a journal closes once)
                if cmd in self.refused and not (j and j.get("error") is not None and not c.get("events")):
                    raise Violation(f"{m.subject}: command {cmd}, which the agent refuses, was applied (seq {m.seq})")
                dup = j and j.get("dup") and not c.get("events")  # a re-park closed
                if cmd in cmds and not dup and self._remembered(m.subject, cmd, n):
                    raise Violation(f"{m.subject}: command {cmd} applied twice (again at seq {m.seq}, by {host})")
                held = self.holding.get(m.subject, set()) - {cmd}
                if c.get("events") and held:
                    raise Violation(
                        f"{m.subject}: {cmd} wrote events (seq {m.seq}, by {host}) while {sorted(held)} was suspended"
                    )
                self.holding.get(m.subject, set()).discard(cmd)
                cmds.add(cmd)
                self.closed_at[(m.subject, cmd)] = (n, self.world.clock.monotonic())
            else:
                self.journaled.setdefault(m.subject, set()).add(cmd)
                if j.get("k") == "wait":
                    self.holding.setdefault(m.subject, set()).add(cmd)
            if own < top:
                raise Violation(f"{m.subject}: {host} wrote with claim {own} after a newer owner's {top} (seq {m.seq})")
            writer = self.claim_host.setdefault((m.subject, own), host)
            if writer != host:
                raise Violation(f"{m.subject}: claim {own} used by {writer} and {host}")
            self.logs[m.subject] = (n, max(top, own))
        self._events_seen = len(msgs)
        self._check_snapshots(msgs)
        history = self.world.store.history
        for key, value, _rev in history[self._store_seen :]:
            if key.startswith("claim.") and value.get("host"):
                slot = (int(key.split(".")[1]), int(value["epoch"]))
                holder = self.claims_seen.setdefault(slot, value["host"])
                if holder != value["host"]:
                    raise Violation(f"{holder} and {value['host']} claimed partition {slot[0]} at epoch {slot[1]}")
            elif key == "ring":
                self.world.record("ring", value.get("epoch"), tuple(value.get("owners", ())))
        self._store_seen = len(history)
        for event in self.world.history[self._history_seen :]:
            # (time, "ack", host, stream seq, answer, what the stream did)
            if event[1] == "ack" and event[5] == "ack" and event[4] == b"+ACK":
                subject, cmd_id = self.subject_of_seq[event[3]]
                done = self.logged.get(subject, set()) | self.journaled.get(subject, set())
                if cmd_id not in self.refused and cmd_id not in done:  # suspended or parked: journaled
                    raise Violation(f"{event[2]} acknowledged command {cmd_id} but it is not in {subject}")
        self._history_seen = len(self.world.history)

    def _check_snapshots(self, msgs: list[StoredMessage]) -> None:
        """A snapshot names a sequence: the commit there is the agent's, with the snapshot's
        ``n``, and every command its record lists is at the sequence it says."""
        written = self.world.snapshots_written
        for host, key, value in written[self._snapshots_seen :]:
            snap = orjson.loads(value)
            seq, n = int(snap["seq"]), int(snap["n"])
            agent_type, _, agent_id = key.partition(".")
            subject = SUBJECTS.evt(agent_type, agent_id)
            at = msgs[seq - 1] if 0 < seq <= len(msgs) else None
            if at is None or at.subject != subject or int(orjson.loads(at.data)["n"]) != n:
                found = f"commit {orjson.loads(at.data)['n']} of {at.subject}" if at else "nothing"
                raise Violation(f"{host} snapshotted {key} as commit {n} at seq {seq}, where the log has {found}")
            for row in snap.get("records", []):
                cmd, cmd_seq = row[0], row[1]  # a fourth field: an answer that is an error
                m = msgs[int(cmd_seq) - 1]
                if m.subject != subject or orjson.loads(m.data)["cmd"] != cmd:
                    raise Violation(f"{host} snapshotted {key} with {cmd} at seq {cmd_seq}, which is not its commit")
        self._snapshots_seen = len(written)
