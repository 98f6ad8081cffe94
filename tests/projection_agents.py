"""A projection for the tests (ADR 0057); a test runs it in its own process
(``jetagents projection run tests.projection_agents:Totals``) and kills it -9.

``Totals`` keeps, per counter, the sum of its increments and the number of events applied
and the last commit number seen: a skipped event makes the sum and count too small, an event
applied twice makes them too large, so a test compares them with the log itself.
"""

from __future__ import annotations

from typing import Any

import orjson

from jetagents._core.logtail import LogCommit, LogEvent
from jetagents._core.projection import Projection, ProjectionView, on
from jetagents.examples.counter import Counter, Incremented


class Totals(Projection):
    name = "totals"
    agents = (Counter,)

    @on("counter", "Incremented")
    async def incremented(self, view: ProjectionView, commit: LogCommit, event: LogEvent) -> None:
        by = event.data.by if isinstance(event.data, Incremented) else event.data["by"]
        row = await view.get(commit.agent.id, {"total": 0, "events": 0, "n": 0})
        view.put(commit.agent.id, {"total": row["total"] + by, "events": row["events"] + 1, "n": commit.n})
        grand = await view.get("all", {"total": 0, "events": 0})
        view.put("all", {"total": grand["total"] + by, "events": grand["events"] + 1})


def commit_body(n: int, by: int) -> bytes:
    """A commit of one ``Incremented`` event, as a host writes it (wire contract section 7)."""
    event: dict[str, Any] = {"type": "Incremented", "data": {"by": by}}
    return orjson.dumps({"n": n, "cmd": f"m{n}", "action": "increment", "events": [event], "result": n})
