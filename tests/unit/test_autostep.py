"""Which action runs are marked for implicit steps (ADR 0042 §12): only those that can journal."""

from __future__ import annotations

import contextvars
from types import SimpleNamespace
from typing import Any

from jetagents._core.autostep import _RUN, enter_run, running_agent


class _Agent:
    def __init__(self, command_id: str, steps: Any) -> None:
        self.ctx = SimpleNamespace(command_id=command_id, steps=steps)
        self._pending: list[Any] | None = None

    def begin(self) -> None:
        self._pending = []
        enter_run(self, self._pending)  # type: ignore[arg-type]


async def test_a_run_with_a_command_id_and_a_journal_is_marked() -> None:
    agent = _Agent("c1", steps=object())
    agent.begin()
    assert running_agent() is agent


def _fresh(agent: _Agent) -> tuple[Any, Any]:
    agent.begin()
    return _RUN.get(), running_agent()


async def test_a_run_that_cannot_journal_is_not_marked() -> None:
    for agent in (_Agent("", steps=object()), _Agent("c1", steps=None)):
        mark, running = contextvars.copy_context().run(_fresh, agent)
        assert mark is None and running is None


async def test_a_mark_left_by_an_earlier_run_never_matches_an_unmarked_one() -> None:
    agent = _Agent("c1", steps=object())
    agent.begin()
    assert running_agent() is agent
    agent.ctx.command_id = ""  # the next command is a call without an id: not marked
    agent.begin()
    assert _RUN.get() is not None  # the earlier run's mark is still there...
    agent.ctx.command_id = "c2"
    assert running_agent() is None  # ...and names a pending list that is not this run's
