"""An agent's exactly-once record: the first answer of each command it answered (ADR 0040).

A redelivery or a re-send of a command finds its first answer here and is answered again,
never applied again. Applied commands come from the log (their commit names the command) and
survive in snapshots; domain refusals are remembered in memory only (a refusal writes nothing
to the log). The record is bounded: past ``limit`` commands the oldest is forgotten (the log's
duplicate window and the append's message id still catch a late repeat of it).

>>> r = DedupRecord(limit=2)
>>> r.applied("a", 5, 1); r.refused("b", {"code": "domain"}); r.applied("c", 7, 3)
>>> r.get("a") is None, r.get("c"), r.snapshot()
(True, Answer(seq=7, ok=True, payload=3), [['c', 7, 3]])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple


class Answer(NamedTuple):
    """The first answer to a command: its commit's event sequence (0: not in the log, a
    refusal), whether it succeeded, and the result (JSON) or the wire error."""

    seq: int
    ok: bool
    payload: Any


class DedupRecord:
    """Command id -> first answer, oldest first, at most ``limit`` of them."""

    __slots__ = ("_answers", "_limit")

    def __init__(self, limit: int) -> None:
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self._limit = limit

    @classmethod
    def rebuilt(cls, snapshot: Iterable[Any], applied: Iterable[tuple[str, int, Any]], limit: int) -> DedupRecord:
        """The record after an activation: a snapshot's rows, then the commits replayed
        after it (``(command id, event seq, result)``), then bounded."""
        record = cls(limit)
        answers = record._answers
        for row in snapshot:
            # a fourth field false: a refusal in the log (a journal closed with an error)
            answers[str(row[0])] = Answer(int(row[1]), len(row) < 4 or bool(row[3]), row[2])
        for cmd, seq, result in applied:
            answers[cmd] = Answer(seq, True, result)
        while len(answers) > limit:
            answers.popitem(last=False)
        return record

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, command_id: str) -> Answer | None:
        return self._answers.get(command_id)

    def applied(self, command_id: str, seq: int, result: Any) -> None:
        """``command_id``'s commit is at ``seq`` in the log; it answered ``result``."""
        self._remember(command_id, Answer(seq, True, result))

    def refused(self, command_id: str, wire_error: Any, seq: int = 0) -> None:
        """``command_id`` was refused by the agent (``seq`` 0: nothing in the log; else the
        commit that closed its journal with the error): answer it so again."""
        self._remember(command_id, Answer(seq, False, wire_error))

    def _remember(self, command_id: str, answer: Answer) -> None:
        answers = self._answers
        answers[command_id] = answer
        if len(answers) > self._limit:
            answers.popitem(last=False)

    def snapshot(self) -> list[list[Any]]:
        """The rows a snapshot keeps: applied commands only (a refusal is not in the log either)."""
        return [
            [cmd, a.seq, a.payload] if a.ok else [cmd, a.seq, a.payload, False]
            for cmd, a in self._answers.items()
            if a.seq
        ]
