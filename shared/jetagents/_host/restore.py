"""Restore from backup (ADR 0053 section 4): what the catalog needs to rebuild an agent whose
latest snapshot or log tail cannot be read.

* **Older snapshots**: the snapshot bucket keeps the last ``snapshot_history`` snapshots of
  each agent (KV history); when the latest one, or the replay after it, fails, the catalog
  tries the older ones, newest first (``older_snapshots``).
* **Reset commits**: a log whose tail cannot be read (a commit that does not parse) is
  rebuilt up to its last good commit, and the host appends a *reset commit* (``Commit.reset``)
  carrying the state as of that commit in the snapshot format, fenced like any commit. A
  replay that meets unreadable messages skips them up to the reset commit that follows them
  and takes the state from it; so does every later activation, on any host.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import orjson

from .._core.agent import AgentSpec
from .._core.journal import Journal
from .._core.wire import Commit

RESET_ACTION = "_reset"


@runtime_checkable
class SnapshotHistory(Protocol):
    """A bucket that keeps older values of a key (``_nats.buckets.KvBucket``)."""

    async def history(self, key: str) -> list[bytes]: ...


async def older_snapshots(bucket: Any, key: str) -> list[dict[str, Any]]:
    """The agent's older snapshots, newest first, without the latest (already tried); none
    when the bucket keeps no history."""
    if not isinstance(bucket, SnapshotHistory):
        return []
    out = []
    for raw in (await bucket.history(key))[:-1]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict):
            out.append(body)
    out.reverse()
    return out


def reset_state(
    spec: AgentSpec, body: dict[str, Any]
) -> tuple[Any, list[tuple[str, int, Any]], dict[str, Journal], list[dict[str, Any]]]:
    """State, exactly-once record, open journals and buffered signals of a reset commit."""
    state = spec.state_type.model_validate(body["state"])
    kept = [(str(cmd), int(seq), result) for cmd, seq, result in body.get("records", [])]
    journals = {str(c): Journal.from_json(j) for c, j in body.get("journals", {}).items()}
    inbox = [dict(e) for e in body.get("inbox", [])]
    return state, kept, journals, inbox


def reset_commit(*, n: int, own: int, ts_ms: int, body: dict[str, Any], unreadable_from: int) -> tuple[str, bytes]:
    """The command id and JSON of a reset commit: the state in ``body`` (a snapshot body)
    replaces everything between the last good commit and this one."""
    cmd = f"_reset-{n}"
    reset = dict(body, unreadable_from=unreadable_from)
    commit = Commit(n=n, cmd=cmd, action=RESET_ACTION, events=[], ts_ms=ts_ms, own=own, reset=reset)
    return cmd, commit.model_dump_json(exclude_none=True).encode()
