"""Many JetStream publishes in one go: every message written to the connection first (one
flush for all), then their PubAcks awaited together on the shared inbox (``Client.send_many``);
and an atomic batch (all stored or none, fenced by its first message's subject).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import orjson
from nats.aio.client import Client as NATS
from nats.nuid import NUID

from .._core.errors import JetAgentsError, PayloadTooLarge, Unavailable
from .._core.kv import CasConflict
from .api import ERR_MSG_SIZE, ERR_WRONG_LAST_SEQUENCE, JSApiError, _no_responders, js_publish
from .inbox import Inbox
from .kv import CONFLICT_CODES

_nuid = NUID()


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    body: bytes
    headers: dict[str, str]


async def publish_all(nc: NATS, inbox: Inbox, items: list[Outgoing], timeout_s: float) -> list[JetAgentsError | None]:
    """Publish ``items`` and wait up to ``timeout_s`` for their PubAcks: for each, None
    (stored, or a duplicate of a stored copy) or the error (``Unavailable`` when its PubAck
    did not come: the caller may publish it again with the same ``Nats-Msg-Id``)."""
    futures = []
    try:
        for it in items:
            reply, fut = inbox.expect()
            futures.append((reply, fut))
            await nc.publish(it.subject, it.body, reply=reply, headers=it.headers or None)
        await nc.flush(timeout=max(1, math.ceil(timeout_s)))
        await asyncio.wait([f for _, f in futures], timeout=timeout_s)
    except TimeoutError:
        pass  # whatever did not come is reported below
    finally:
        for reply, _ in futures:
            inbox.forget(reply)
    out: list[JetAgentsError | None] = []
    for i, _ in enumerate(items):
        if i >= len(futures) or not futures[i][1].done():
            out.append(Unavailable("the PubAck did not come in time"))
            continue
        msg = futures[i][1].result()
        if _no_responders(msg):
            out.append(Unavailable("no stream accepted the subject"))
            continue
        err = orjson.loads(msg.data).get("error")
        if not err:
            out.append(None)
        elif int(err.get("err_code", 0)) == ERR_MSG_SIZE:
            out.append(PayloadTooLarge(str(err.get("description", "message too large"))))
        else:
            out.append(
                JSApiError(int(err.get("err_code", 0)), int(err.get("code", 0)), str(err.get("description", "")))
            )
    return out


async def atomic_batch(nc: NATS, messages: list[Outgoing], expected_rev: int, timeout_s: float, what: str) -> int:
    """Publish ``messages`` as one atomic batch (the bucket allows them): the server stores
    all or none, and none unless the first message's subject is still at ``expected_rev``.
    The first message's new sequence. ``CasConflict`` when that subject moved on;
    ``Unavailable`` when the server could not check yet, or refused (``what`` names it)."""
    batch = _nuid.next().decode()
    last = len(messages)
    for i, m in enumerate(messages, start=1):
        headers = {**m.headers, "Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(i)}
        if i == 1:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_rev)
        if i < last:  # only the commit is acknowledged, for the whole batch
            await nc.publish(m.subject, m.body, headers=headers)
            continue
        headers["Nats-Batch-Commit"] = "1"
        try:
            ack = await js_publish(nc, m.subject, m.body, headers, timeout_s)
        except JSApiError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                raise CasConflict(f"{what}: {messages[0].subject} moved on") from None
            if exc.err_code in CONFLICT_CODES:
                raise Unavailable(f"{what} not checked yet: {exc.description}") from None
            raise Unavailable(f"{what} refused: {exc.description}") from None
        return int(ack["seq"]) - (last - 1)
    raise ValueError("an atomic batch of no message")
