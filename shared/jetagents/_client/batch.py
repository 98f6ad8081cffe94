"""``Client.send_many``: many durable commands in one go, every message written before any
PubAck is awaited, the ones whose PubAck did not come published again with the same
``Nats-Msg-Id`` until the caller's timeout.

>>> ids = await client.send_many([("counter", f"c{i}", "increment", {"by": 1}) for i in range(1000)])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._core.errors import AgentTimeout, JetAgentsError, Unavailable
from .._core.ids import AgentId
from .._core.wire import Delivery
from .._nats.api import ERR_DUPLICATE_IN_PROCESS, JSApiError
from .._nats.batch import Outgoing
from .command import OutboundCommand, SendOptions, payload_limit

if TYPE_CHECKING:
    from .client import Client

__all__ = ["send_many"]

WINDOW = 1024  # messages written before their PubAcks are awaited
MAX_WAIT_S = 5.0


def _retryable(err: JetAgentsError) -> bool:
    return isinstance(err, Unavailable) or (isinstance(err, JSApiError) and err.err_code == ERR_DUPLICATE_IN_PROCESS)


async def send_many(
    client: Client,
    commands: Iterable[tuple[str, str, str, Mapping[str, Any] | None]],
    *,
    delivery: Delivery | str = Delivery.EXACTLY_ONCE,
    timeout_s: float | None = None,
    compress: bool | None = None,
) -> list[str]:
    mode = Delivery(delivery)
    s = client.settings
    threshold = s.compress_min_bytes if (s.compression if compress is None else compress) else 0
    timeout = timeout_s if timeout_s is not None else client.settings.request_timeout_s
    options = SendOptions(delivery=mode, want_reply=False)
    transport = client._transport
    limit = payload_limit(client.settings.max_payload_bytes, transport.max_payload)
    wall_ms = client._clock.wall_ms()
    cmds = [
        OutboundCommand.build(
            AgentId(agent_type, agent_id),
            action,
            params,
            options,
            subjects=client.subjects,
            timeout_s=timeout,
            limit_bytes=limit,
            new_id=transport.new_id,
            wall_ms=wall_ms,
            compress_min_bytes=threshold,
        )
        for agent_type, agent_id, action, params in commands
    ]
    if mode is Delivery.AT_MOST_ONCE:  # calls: written to the connection, nobody waits
        for c in cmds:
            await transport.publish(c.subject, c.body, dict(c.headers))
        return [c.command_id for c in cmds]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = list(range(len(cmds)))
    attempt = 0
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            ids = [cmds[i].command_id for i in pending]
            raise AgentTimeout(
                f"{len(ids)} of {len(cmds)} commands were not accepted by the stream in time; they may be stored: "
                "re-send them with the same command ids",
                details={"command_ids": ids},
            )
        again: list[int] = []
        for start in range(0, len(pending), WINDOW):
            chunk = pending[start : start + WINDOW]
            items = [Outgoing(cmds[i].subject, cmds[i].body, dict(cmds[i].headers)) for i in chunk]
            for i, err in zip(chunk, await transport.publish_many(items, min(remaining, MAX_WAIT_S)), strict=True):
                if err is None:
                    continue
                if not _retryable(err):
                    raise err
                again.append(i)
        pending = again
        if pending:
            await asyncio.sleep(min(client.retry.delay(attempt), max(0.0, deadline - loop.time())))
            attempt += 1
    return [c.command_id for c in cmds]
