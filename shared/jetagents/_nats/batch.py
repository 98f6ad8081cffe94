"""Many JetStream publishes in one go: every message written to the connection first (one
flush for all), then their PubAcks awaited together on the shared inbox (``Client.send_many``).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import orjson
from nats.aio.client import Client as NATS

from .._core.errors import JetAgentsError, PayloadTooLarge, Unavailable
from .api import ERR_MSG_SIZE, JSApiError, _no_responders
from .inbox import Inbox


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
