"""The reply inbox: one wildcard subscription, a future per request (or a listener per
reply of several messages).

The one request/reply mechanism of the library: the client's calls, its durable commands'
PubAcks and replies, the host's event appends (their PubAcks) all wait on an ``Inbox``
instead of nats-py's ``request()``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .._core.errors import PermissionDenied, Unavailable

# the heap of request deadlines is rebuilt from the pending requests past this many ended ones
_HEAP_SLACK = 1024
_TOKEN = itemgetter(1)


class Inbox:
    """Replies received on one subscription of our own (the client's calls and durable
    replies, the host's event appends).

    Cheaper than nats-py's ``request()`` on a hot path: a counter names each request
    instead of random bytes from the OS, and one loop timer at the earliest deadline of all
    pending requests replaces ``asyncio.wait_for`` (a loop timer each cost a handle, Python
    comparisons in the loop's heap and a cancel: a tenth of a call's work in the client).
    A "no responders" status comes back as a reply with a ``Status: 503`` header, which the
    caller checks (as ``js_publish`` does). nats-py subscribes again after a reconnect, so
    the inbox survives one.
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
        # (loop time, token) of every request's deadline, ended ones too until they are due or
        # the heap is rebuilt; the loop timer fires at the earliest (``_timer_at``)
        self._deadlines: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._compact_at = _HEAP_SLACK  # heap length at which it is rebuilt

    async def start(self) -> None:
        denied = getattr(self.nc, "denied_listeners", None)  # our Connection's (_nats/conn.py)
        if denied is not None and self._on_denied not in denied:
            denied.append(self._on_denied)
        self._prefix = self.nc.new_inbox()
        self._cut = len(self._prefix) + 1
        self._sub = await self.nc.subscribe(
            f"{self._prefix}.*", cb=self._on_reply, pending_msgs_limit=1_000_000, pending_bytes_limit=-1
        )
        deliver = getattr(self.nc, "deliver_directly", None)  # our Connection's (_nats/conn.py)
        if deliver is not None:  # replies straight from the read loop: they only complete a future
            deliver(self._sub, self._take)

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
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
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
        self._take(msg)

    def _take(self, msg: Msg) -> None:
        """A reply: it completes its request's future, or goes to its listener."""
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
        pending = self._pending
        pending[token] = fut
        self._subjects[token] = subject
        when = loop.time() + timeout_s
        deadlines = self._deadlines
        heapq.heappush(deadlines, (when, token))
        if when < self._timer_at:
            self._arm(loop, when)
        elif len(deadlines) > self._compact_at:  # mostly ended requests: keep the pending ones
            # filtered in C (no Python step per entry): this runs once per ~thousand requests
            deadlines[:] = itertools.compress(deadlines, map(pending.__contains__, map(_TOKEN, deadlines)))
            heapq.heapify(deadlines)
            self._compact_at = 2 * len(deadlines) + _HEAP_SLACK
        try:
            await self.nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers or None)
            return await fut
        finally:
            pending.pop(token, None)  # close() may have cleared it
            self._subjects.pop(token, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer fired: every pending request whose deadline has come gets ``TimeoutError``."""
        # the loop runs a timer up to its clock's resolution early: what was due then is due
        now = max(loop.time(), self._timer_at)
        self._timer, self._timer_at = None, math.inf
        deadlines, pending = self._deadlines, self._pending
        while deadlines and deadlines[0][0] <= now:
            fut = pending.get(heapq.heappop(deadlines)[1])
            if fut is not None and not fut.done():
                fut.set_exception(TimeoutError())
        if deadlines:
            self._arm(loop, deadlines[0][0])

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
