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

import contextlib
from typing import Any, Protocol, runtime_checkable

import orjson

from .._core.agent import AgentSpec
from .._core.errors import FencedError, InvalidParams
from .._core.ids import partition_of
from .._core.journal import Journal
from .._core.wire import H_COMMAND_ID, H_HOST, H_MSG_ID, Commit
from .ports import WrongLastSequence

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


def reset_commit(*, n: int, own: int, ts_ms: int, body: dict[str, Any], extra: dict[str, Any]) -> tuple[str, bytes]:
    """The command id and JSON of a reset commit: the state in ``body`` (a snapshot body)
    replaces everything between the commit it was taken at and this one; ``extra`` says why
    (``unreadable_from``, or an operator's ``rollback``)."""
    cmd = f"_reset-{n}"
    reset = {**body, **extra}
    commit = Commit(n=n, cmd=cmd, action=RESET_ACTION, events=[], ts_ms=ts_ms, own=own, reset=reset)
    return cmd, commit.model_dump_json(exclude_none=True).encode()


async def rollback(catalog: Any, act: Any, scratch: Any, to_seq: int, by: str) -> dict[str, Any]:
    """Roll ``act``'s agent back to its state as of its commit at ``to_seq`` (an operator's
    request, ADR 0053 section 4): rebuilt apart from the live activation from the newest
    snapshot at or before ``to_seq`` (else the whole log) up to ``to_seq``, then a reset commit
    naming ``to_seq``, who and when, appended after the subject's last message (the fence: a
    command committed meanwhile fails it, and the operator asks again). The live activation
    is evicted: its next command rebuilds it from the log, through the reset commit.
    ``scratch``: a new ``Activation`` of the same agent, the one rebuilt."""
    aid = act.agent_id
    subject = catalog.subjects.evt(aid.type, aid.id)
    last = await catalog._events.last(subject)
    if last is None or to_seq <= 0 or to_seq > last.seq:
        raise InvalidParams(f"{aid} has no commit at sequence {to_seq}")
    snaps = []
    latest = await catalog._snapshots.get(aid.key)
    if latest:
        with contextlib.suppress(orjson.JSONDecodeError):
            snaps.append(orjson.loads(latest))
    snaps += await older_snapshots(catalog._snapshots, aid.key)
    base = next((s for s in snaps if isinstance(s, dict) and int(s.get("seq", 0)) <= to_seq), {})
    await catalog._activate(scratch, base, until_seq=to_seq)
    if scratch.last_seq != to_seq:
        raise InvalidParams(f"sequence {to_seq} is not a commit of {aid} (the one before is {scratch.last_seq})")
    last_commit = Commit.model_validate_json(last.data)
    token = catalog.token_of(aid, partition_of(aid.type, aid.id, catalog.settings.partitions)) or last_commit.own
    ts_ms = catalog.clock.wall_ms()
    cmd, body = reset_commit(
        n=last_commit.n + 1,
        own=token,
        ts_ms=ts_ms,
        body=catalog.snapshot_body(scratch),
        extra={"rollback": {"to": to_seq, "by": by, "ts_ms": ts_ms}},
    )
    hdrs = {H_MSG_ID: f"{aid.key}:{cmd}", H_COMMAND_ID: cmd, H_HOST: catalog.settings.host_id}
    try:
        ack = await catalog._events.append(subject, body, hdrs, expected_last_subject_seq=last.seq)
    except WrongLastSequence:
        raise FencedError(f"{aid} was written while rolling it back; nothing changed, ask again") from None
    catalog.evict(act)
    result = {"agent": str(aid), "to": to_seq, "reset_seq": ack.seq, "n": last_commit.n + 1, "by": by}
    catalog.metrics.inc("restores", agent_type=aid.type)
    catalog.log.warning("agent_rolled_back", **result)
    return result
