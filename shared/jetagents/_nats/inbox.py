"""The reply inbox: one wildcard subscription, a future per request (or a listener per
reply of several messages).

The one request/reply mechanism of the library: the client's calls, its durable commands'
PubAcks and replies, the host's event appends (their PubAcks) all wait on an ``Inbox``
instead of nats-py's ``request()``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .._core.errors import PermissionDenied, Unavailable


def _expire(fut: asyncio.Future[Msg]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Inbox:
    """Replies received on one subscription of our own (the client's calls and durable
    replies, the host's event appends).

    Cheaper than nats-py's ``request()`` on a hot path: a counter names each request
    instead of random bytes from the OS, and one timer per request replaces
    ``asyncio.wait_for``. A "no responders" status comes back as a reply with a
    ``Status: 503`` header, which the caller checks (as ``js_publish`` does). nats-py
    subscribes again after a reconnect, so the inbox survives one.
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._cut = 0
        self._sub: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._listeners: dict[str, Callable[[Msg], None]] = {}  # replies of many messages
        self._subjects: dict[str, str] = {}  # what each pending request published to
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        denied = getattr(self.nc, "denied_listeners", None)  # our Connection's (_nats/conn.py)
        if denied is not None and self._on_denied not in denied:
            denied.append(self._on_denied)
        self._prefix = self.nc.new_inbox()
        self._cut = len(self._prefix) + 1
        self._sub = await self.nc.subscribe(
            f"{self._prefix}.*", cb=self._on_reply, pending_msgs_limit=1_000_000, pending_bytes_limit=-1
        )

    @property
    def started(self) -> bool:
        return self._sub is not None

    async def close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        self._listeners.clear()
        self._subjects.clear()
        denied = getattr(self.nc, "denied_listeners", None)
        if denied is not None and self._on_denied in denied:
            denied.remove(self._on_denied)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - closing anyway (connection already gone)
                pass

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[self._cut :]
        fut = self._pending.get(token)
        if fut is not None:
            if not fut.done():
                fut.set_result(msg)
            return
        listener = self._listeners.get(token)
        if listener is not None:
            listener(msg)

    def expect(self) -> tuple[str, asyncio.Future[Msg]]:
        """A new reply subject and the future its reply completes; ``forget`` it when done."""
        if self._sub is None:
            raise Unavailable("the reply inbox is closed")
        token = str(next(self._ids))
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        return f"{self._prefix}.{token}", fut

    def listen(self, on_msg: Callable[[Msg], None]) -> str:
        """A new reply subject whose every message goes to ``on_msg`` (called on the
        subscription's task: it must not block), for answers of several messages (a batched
        direct get, a forwarded command's progress and acknowledgement); ``forget`` it when done."""
        if self._sub is None:
            raise Unavailable("the reply inbox is closed")
        token = str(next(self._ids))
        self._listeners[token] = on_msg
        return f"{self._prefix}.{token}"

    def forget(self, reply_subject: str) -> None:
        token = reply_subject[self._cut :]
        self._pending.pop(token, None)
        self._listeners.pop(token, None)

    async def request(self, subject: str, payload: bytes, headers: dict[str, str] | None, timeout_s: float) -> Msg:
        """The reply; ``TimeoutError`` when none came within ``timeout_s``."""
        # ``expect`` and ``forget`` written out: this is every call's path
        if self._sub is None:
            raise Unavailable("the reply inbox is closed")
        token = str(next(self._ids))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = fut
        self._subjects[token] = subject
        timer = loop.call_later(timeout_s, _expire, fut)
        try:
            await self.nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers or None)
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(token, None)  # close() may have cleared it
            self._subjects.pop(token, None)

    def _on_denied(self, subject: str) -> None:
        """The server refused a publish to ``subject``: the requests waiting on an answer to
        one get ``PermissionDenied`` now, not a timeout later."""
        for token, sent_to in list(self._subjects.items()):
            fut = self._pending.get(token)
            if sent_to == subject and fut is not None and not fut.done():
                fut.set_exception(
                    PermissionDenied(f"this connection may not publish to {subject!r}", details={"subject": subject})
                )


_SHARED = "_jetagents_inbox"  # the connection's attribute holding its shared inbox


async def shared_inbox(nc: NATS) -> Inbox:
    """The connection's own inbox for the adapter's requests (JetStream API calls, PubAcks
    without an inbox of their own, direct gets), made on first use and living as long as
    the connection.

    Kept on the connection object itself, not in a table keyed by it (the inbox's
    reference back to the connection would keep both alive forever).
    """
    inbox: Inbox | None = getattr(nc, _SHARED, None)
    if inbox is None:
        inbox = Inbox(nc)
        setattr(nc, _SHARED, inbox)
    if not inbox.started:
        async with inbox._start_lock:  # concurrent first callers: one subscription
            if not inbox.started:
                await inbox.start()
    return inbox
