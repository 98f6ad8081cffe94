"""Detect a blocked event loop: a heartbeat on the loop, watched from a daemon thread.

An action that blocks the loop (``time.sleep``, a CPU-bound loop, a blocking client)
stalls every agent of the host, and nothing that runs on the loop can notice while it
lasts. So the loop only beats (one timer callback every ``threshold_s / 5``; nothing on the
hot path of a command) and a daemon thread looks at the last beat:

* the thread sees no beat for ``threshold_s``: it counts one block, logs
  ``event_loop_blocked`` with the loop thread's current stack (``sys._current_frames``), and
  ``blocked_now`` is true until the loop beats again;
* the loop beats again late: it logs ``event_loop_unblocked`` with how long it was blocked
  and keeps the last and the largest such lag.

Both callbacks (``on_block`` from the thread, ``on_unblock`` with the lag from the loop)
feed the host's counters and metrics. A block the thread missed (the thread itself starved
of CPU) is still counted, once, by the late beat.

>>> dog = LoopWatchdog(0.5)  # doctest: +SKIP
>>> dog.start(asyncio.get_running_loop())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["LoopWatchdog"]

log = structlog.get_logger("jetagents.watchdog")
_STACK_FRAMES = 12  # innermost frames of the loop thread kept in the warning


class LoopWatchdog:
    """Counts and logs event-loop blocks longer than ``threshold_s``."""

    def __init__(
        self,
        threshold_s: float,
        *,
        name: str = "",
        on_block: Callable[[], None] | None = None,
        on_unblock: Callable[[float], None] | None = None,
    ) -> None:
        if threshold_s <= 0:
            raise ValueError("threshold_s must be positive")
        self.threshold_s = threshold_s
        self.interval_s = threshold_s / 5
        self.name = name
        self.blocked_total = 0
        self.blocked_now = False
        self.last_blocked_s = 0.0
        self.max_blocked_s = 0.0
        self._on_block = on_block
        self._on_unblock = on_unblock
        self._lock = threading.Lock()
        self._expected = 0.0  # monotonic time the next beat is due
        self._beats = 0
        self._reported = -1  # the beat count the thread last reported a block at
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start beating on ``loop`` (call from the loop's thread) and watching it."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._expected = time.monotonic() + self.interval_s
        self._handle = loop.call_later(self.interval_s, self._beat)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name=f"jetagents-watchdog-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval_s + 1.0)
            self._thread = None

    def snapshot(self) -> dict[str, Any]:
        """What health reports (``status``, ``/readyz``)."""
        return {
            "blocked_total": self.blocked_total,
            "blocked_now": self.blocked_now,
            "last_blocked_s": round(self.last_blocked_s, 3),
            "max_blocked_s": round(self.max_blocked_s, 3),
            "threshold_s": self.threshold_s,
        }

    # -- the loop's side -------------------------------------------------------------------
    def _beat(self) -> None:
        now = time.monotonic()
        lag = now - self._expected
        counted_late = False
        with self._lock:
            if lag >= self.threshold_s:
                counted_late = self._reported != self._beats  # the thread missed this one
                if counted_late:
                    self.blocked_total += 1
                self.blocked_now = False
                self.last_blocked_s = lag
                self.max_blocked_s = max(self.max_blocked_s, lag)
            self._beats += 1
            self._expected = now + self.interval_s
        if lag >= self.threshold_s:
            log.warning("event_loop_unblocked", host=self.name, blocked_s=round(lag, 3))
            if counted_late and self._on_block is not None:
                self._on_block()
            if self._on_unblock is not None:
                self._on_unblock(lag)
        if not self._stop.is_set() and self._loop is not None:
            self._handle = self._loop.call_later(self.interval_s, self._beat)

    # -- the watching thread ---------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                stalled = time.monotonic() - self._expected
                if stalled < self.threshold_s or self._reported == self._beats:
                    continue
                self._reported = self._beats
                self.blocked_total += 1
                self.blocked_now = True
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame)[-_STACK_FRAMES:]) if frame is not None else ""
            log.warning(
                "event_loop_blocked",
                host=self.name,
                blocked_s=round(stalled, 3),
                threshold_s=self.threshold_s,
                stack=stack,
            )
            if self._on_block is not None:
                try:
                    self._on_block()
                except Exception:  # the watchdog must outlive a metrics exporter's bug
                    log.exception("watchdog_callback_failed", host=self.name)
