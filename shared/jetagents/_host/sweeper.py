"""Commands the stream stores but no partition consumer will ever deliver.

nats-server (2.11 and later, including the wheel's 2.15) keeps a subject tree per stream to
find the next message for a filtered consumer. Its insert silently skips a subject that
holds byte 0x7f (the tree's internal "no pivot" marker), and a subject with a literal ``*``
or ``>`` token is not matched by the filter ``<root>.p.<n>.>`` either. The message is
stored (the sender gets its PubAck), but the partition consumer never sees it: without
this sweep its sender waits forever and the work queue keeps it for good (ADR 0039).

``StrandedSweeper`` walks the command stream by sequence (``STREAM.MSG.GET`` with the
filter ``>``, which does not go through the subject tree: ``_nats/stranded.py``), a bounded
number of messages per round, and hands every stranded command to the host, which
dead-letters it and answers its sender like any other malformed command; the sweeper then
deletes it from the stream. One host sweeps at a time (the cluster's leader, or a host on
its own).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.errors import JetAgentsError
from .._nats.kv import NatsClient
from .._nats.stranded import CommandStreamScan, StoredCommand
from .._obs.metrics import Metrics


def stranded(subject: str) -> bool:
    """True for a stored command subject that no partition consumer's filter will match."""
    if "\x7f" in subject:
        return True
    return any(token in ("*", ">") for token in subject.split("."))


_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def stored_ms(stamp: str) -> int | None:
    """The server's RFC 3339 time of a stored message (nanoseconds) as unix ms."""
    m = _TIME.match(stamp)
    if m is None:
        return None
    whole, frac, zone = m.groups()
    at = datetime.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return int(at.timestamp()) * 1000 + int((frac or "0")[:3].ljust(3, "0"))


class StrandedSweeper:
    """Finds stranded commands in the command stream, a few hundred per round."""

    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        reject: Callable[[Any, int], Awaitable[bool]],
        *,
        now_ms: Callable[[], int],
        grace_s: float = 30.0,
        per_round: int = 500,
        timeout_s: float = 5.0,
    ) -> None:
        self._scan = CommandStreamScan(nc, stream, timeout_s)
        self._reject = reject  # (message, stream sequence) -> handled (then deleted)
        # The subject index is not the only way to a message: a consumer scans a block
        # linearly now and then, and may deliver one of these after all. A command that
        # old is long past that (acknowledged or terminated, so gone from the work queue).
        self._now_ms = now_ms
        self._grace_ms = int(grace_s * 1000)
        self._per_round = per_round
        self._next_seq = 0  # where the next round goes on; 0: from the stream's first message
        self.swept = 0

    async def run(
        self,
        every_s: float,
        sleep: Callable[[float], Awaitable[None]],
        sweep_now: Callable[[], bool],
        metrics: Metrics,
        log: Any,
    ) -> None:
        """A round every ``every_s`` while ``sweep_now()`` (this host leads, or runs alone)."""
        while True:
            await sleep(every_s)
            if not sweep_now():
                continue
            try:
                removed = await self.round()
            except JetAgentsError as exc:
                log.debug("stranded_sweep_failed", error=str(exc))
                continue
            if removed:
                metrics.inc("stranded_swept", removed)
                log.warning("stranded_commands_removed", count=removed)

    async def round(self) -> int:
        """One bounded pass; returns how many stranded commands it removed."""
        removed = 0
        seq = self._next_seq or await self._scan.first_seq()
        for _ in range(self._per_round):
            found = await self._scan.next_from(seq)
            if found is None:  # past the last message: start over next round
                self._next_seq = 0
                return removed
            seq = found.seq
            at = stored_ms(found.time)
            if at is not None and self._now_ms() - at < self._grace_ms:
                break  # this one and all after it are too recent: look again next round
            if stranded(found.subject) and await self._handle(found):
                removed += 1
            seq += 1
        self._next_seq = seq
        return removed

    async def _handle(self, found: StoredCommand) -> bool:
        if not await self._reject(self._scan.message(found), found.seq):
            return False  # its dead letter could not be stored: the next round tries again
        try:
            await self._scan.delete(found.seq)
        except JetAgentsError:
            return False  # answered and dead-lettered; deleted by a later round (then again)
        self.swept += 1
        return True
