"""New keys of a KV bucket as they are put (the host's tombstone watch, ADR 0052): an ordered
push consumer from the bucket's next message on (``DeliverPolicy.NEW``, headers only: the
key is in the subject), so a host that starts reads nothing old. nats-py's ``kv.watch``
would first deliver the last value of every key, and tombstones are never removed.

The consumer is ephemeral and ordered: nats-py recreates it after a gap or a reconnect from
the last message seen, so no put is skipped while the connection lives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from .._core.errors import Unavailable

KV_OPERATION = "KV-Operation"  # set on deletes and purges: no new value


async def watch_new_keys(
    nc: NATS, bucket: str, on_key: Callable[[str], Awaitable[None]], timeout_s: float
) -> Callable[[], Awaitable[None]]:
    """Call ``on_key(key)`` for each value put in ``bucket`` from now on; returns the stop."""
    prefix = f"$KV.{bucket}."

    async def on_msg(msg: Msg) -> None:
        if KV_OPERATION not in (msg.headers or {}):
            await on_key(msg.subject.removeprefix(prefix))

    try:
        sub = await nc.jetstream(timeout=timeout_s).subscribe(
            f"{prefix}>",
            stream=f"KV_{bucket}",  # named: looking it up by subject ($JS.API.STREAM.NAMES) is not the host's right
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            headers_only=True,
        )
    except Exception as exc:  # noqa: BLE001 - nats-py's timeouts and API errors alike
        raise Unavailable(f"cannot watch the bucket {bucket}: {exc!r}") from None
    return sub.unsubscribe
