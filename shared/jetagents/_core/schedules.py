"""Server-side message schedules (ADR 0042 sections 3 and 5), the pure part.

The NATS server holds every durable timer and reminder as a schedule message in the command
stream (``Nats-Schedule`` headers, ADR-51); this module turns what a user asks for (a time, an
interval, a cron expression, a time zone, a reminder name) into what the server accepts, and
refuses the rest with ``InvalidParams`` before anything is published. ``_nats/schedules.py``
publishes, cancels and lists them.

>>> schedule_pattern(every=90)
'@every 90s'
>>> schedule_pattern(cron="*/5 * * * *")  # the five-field form gets a seconds field
'0 */5 * * * *'
>>> schedule_pattern(at=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
'@at 2030-01-02T03:04:05Z'
>>> check_reminder_name("expire")
'expire'
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .errors import InvalidParams, Unavailable

if TYPE_CHECKING:
    from .agent import AgentContext

# header names of the server's scheduler (ADR-51); nats-py 2.16 names some, has no API
H_SCHEDULE: Final = "Nats-Schedule"
H_SCHEDULE_TARGET: Final = "Nats-Schedule-Target"
H_SCHEDULE_TIME_ZONE: Final = "Nats-Schedule-Time-Zone"
H_SCHEDULE_TTL: Final = "Nats-Schedule-TTL"
H_SCHEDULER: Final = "Nats-Scheduler"  # on a fired message: the schedule's subject
H_SCHEDULE_NEXT: Final = "Nats-Schedule-Next"  # on a fired message: the next time, or "purge"
H_TTL: Final = "Nats-TTL"
# what the server strips from a fired message or refuses on a schedule we publish
RESERVED_HEADER_PREFIXES: Final = ("Nats-",)

# a user's reminder name; names starting with "_" are the host's (timers, the kick)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HOST_NAME = re.compile(r"_[A-Za-z0-9_-]{1,64}")
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?LW#-]{1,64}")
# the server's predefined cron schedules (robfig/cron style)
_CRON_MACROS: Final = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
MAX_EVERY_S: Final = 10 * 365 * 86400  # a bound, not a calendar: ten years


def check_reminder_name(name: object) -> str:
    """A user's reminder name (``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``), else ``InvalidParams``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidParams(
            f"reminder name {name!r} must be 1-64 of A-Z a-z 0-9 _ - and not start with '_' or '-'",
            details={"name": str(name)[:80]},
        )
    return name


def check_host_name(name: str) -> str:
    """A schedule name the host itself uses (``_`` first: timers, the kick)."""
    if not _HOST_NAME.fullmatch(name):
        raise InvalidParams(f"host schedule name {name!r} must be '_' and 1-64 of A-Z a-z 0-9 _ -")
    return name


def format_at(when: dt.datetime | int) -> str:
    """``@at`` in RFC 3339 UTC; ``when`` a time-zone-aware datetime or unix milliseconds.
    Whole seconds are written without a fraction (the scheduler fires on whole seconds)."""
    if isinstance(when, bool):
        raise InvalidParams("at must be a datetime or unix milliseconds")
    if isinstance(when, int):
        when = dt.datetime.fromtimestamp(when / 1000, dt.UTC)
    elif isinstance(when, dt.datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidParams("at must be time-zone aware (a naive datetime names no instant)")
        when = when.astimezone(dt.UTC)
    else:
        raise InvalidParams(f"at must be a datetime or unix milliseconds, not {type(when).__name__}")
    return "@at " + _rfc3339(when)


def _rfc3339(when: dt.datetime) -> str:
    """``when`` (UTC) as the server writes times: whole seconds without a fraction."""
    ms = when.microsecond // 1000
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms:03d}Z" if ms else f"{stamp}Z"


def format_next(ms: int) -> str:
    """A fired message's ``Nats-Schedule-Next`` as the server writes it: unix ms ``ms`` in
    RFC 3339 UTC, in whole seconds (``parse_rfc3339_ms`` reads it back).

    >>> format_next(1_893_553_445_250)
    '2030-01-02T03:04:05Z'
    """
    return _rfc3339(dt.datetime.fromtimestamp(ms // 1000, dt.UTC))


def every_seconds(every: object) -> int:
    """An interval in whole seconds, at least 1 (the server refuses less)."""
    if isinstance(every, bool):
        raise InvalidParams("every must be seconds or a timedelta")
    if isinstance(every, dt.timedelta):
        seconds: float = every.total_seconds()
    elif isinstance(every, (int, float)):
        seconds = float(every)
    else:
        raise InvalidParams(f"every must be seconds or a timedelta, not {type(every).__name__}")
    if seconds != int(seconds) or not 1 <= seconds <= MAX_EVERY_S:
        raise InvalidParams(f"every must be whole seconds from 1 to {MAX_EVERY_S}, not {seconds:g}")
    return int(seconds)


def cron_pattern(cron: object) -> str:
    """A cron expression as the server takes it: six fields, seconds first. The usual
    five-field form (minute first) gets ``0`` seconds; ``@hourly`` and the like pass."""
    if not isinstance(cron, str):
        raise InvalidParams("cron must be a string")
    text = " ".join(cron.split())
    if text in _CRON_MACROS:
        return text
    fields = text.split(" ")
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise InvalidParams(
            f"cron {cron[:80]!r} must have five fields (minute first) or six (seconds first)",
            details={"cron": cron[:80]},
        )
    return text if len(fields) == 6 else "0 " + text


def check_time_zone(tz: object) -> str:
    """An IANA time zone name this machine knows (the server checks it again)."""
    if not isinstance(tz, str) or not tz or len(tz) > 64 or ".." in tz or tz.startswith("/"):
        raise InvalidParams(f"time zone {str(tz)[:80]!r} is not an IANA name")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidParams(f"unknown time zone {tz!r}", details={"tz": tz}) from None
    return tz


@dataclass(frozen=True, slots=True)
class Pattern:
    """What goes into ``Nats-Schedule`` (and ``Nats-Schedule-Time-Zone``)."""

    schedule: str
    tz: str | None = None

    def headers(self) -> dict[str, str]:
        out = {H_SCHEDULE: self.schedule}
        if self.tz:
            out[H_SCHEDULE_TIME_ZONE] = self.tz
        return out


def pattern_of(
    *, at: dt.datetime | int | None = None, every: object = None, cron: object = None, tz: object = None
) -> Pattern:
    """Exactly one of ``at``, ``every``, ``cron``; ``tz`` only with ``cron`` (the server
    refuses a time zone with ``@at`` and ``@every``)."""
    given = [k for k, v in (("at", at), ("every", every), ("cron", cron)) if v is not None]
    if len(given) != 1:
        raise InvalidParams(f"give exactly one of at, every, cron (got {', '.join(given) or 'none'})")
    if tz is not None and cron is None:
        raise InvalidParams("tz goes with cron only (at is an instant, every an interval)")
    if at is not None:
        return Pattern(format_at(at))
    if every is not None:
        return Pattern(f"@every {every_seconds(every)}s")
    return Pattern(cron_pattern(cron), check_time_zone(tz) if tz is not None else None)


def schedule_pattern(
    *, at: dt.datetime | int | None = None, every: object = None, cron: object = None, tz: object = None
) -> str:
    """The ``Nats-Schedule`` value alone (see ``pattern_of``)."""
    return pattern_of(at=at, every=every, cron=cron, tz=tz).schedule


def parse_rfc3339_ms(stamp: str) -> int | None:
    """Unix ms of an RFC 3339 time as the server writes it (``Nats-Schedule-Next``); None
    for anything else (``purge``, garbage from a forged header)."""
    if not stamp or len(stamp) > 64 or stamp == "purge":
        return None
    try:
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return int(when.timestamp() * 1000)


def at_ms_of(schedule: str) -> int | None:
    """The instant (unix ms) of an ``@at`` schedule; None for any other pattern.

    >>> at_ms_of("@at 2030-01-02T03:04:05Z"), at_ms_of("@every 60s")
    (1893553445000, None)
    """
    if not schedule.startswith("@at "):
        return None
    return parse_rfc3339_ms(schedule[4:].strip())


def every_s_of(schedule: str) -> int | None:
    """The interval (s) of an ``@every <n>s`` schedule; None for any other pattern.

    >>> every_s_of("@every 90s"), every_s_of("0 */5 * * * *")
    (90, None)
    """
    if schedule.startswith("@every ") and schedule.endswith("s") and schedule[7:-1].isdigit():
        return int(schedule[7:-1])
    return None


def user_headers(headers: dict[str, Any] | None) -> dict[str, str]:
    """Headers a caller may put on a schedule: strings, none of the server's ``Nats-*``
    (the scheduler reads or strips those) and no ``Agt-Command-Id`` (every firing would
    copy it, and one id for all firings would answer all but the first from the record)."""
    out: dict[str, str] = {}
    for k, v in (headers or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidParams("schedule headers must be strings")
        if k.startswith(RESERVED_HEADER_PREFIXES) or k.lower() == "agt-command-id":
            raise InvalidParams(f"header {k!r} may not be set on a schedule")
        out[k] = v
    return out


class NoReminders:
    """``AgentContext.reminders`` outside a host (an action called directly): every use says so."""

    def check(self, *args: Any, **kwargs: Any) -> Any:
        raise Unavailable("reminders need a host")

    publish = cancel = list = check


NO_REMINDERS: Final = NoReminders()


def missed_between(last_next: str | None, this_next: str, every_s: str | None) -> int:
    """How many scheduled times of an ``@every`` reminder fell between its previous firing and
    this one (the server merges firings missed in an outage or a stream-leader change into
    one): ``last_next`` is the previous firing's ``Nats-Schedule-Next``, ``this_next`` this
    one's, ``every_s`` the interval. 0 when any is unknown.

    >>> missed_between("2030-01-01T00:00:05Z", "2030-01-01T00:00:06Z", "1")
    0
    >>> missed_between("2030-01-01T00:00:05Z", "2030-01-01T00:00:11Z", "1")
    5
    """
    prev, now = parse_rfc3339_ms(last_next or ""), parse_rfc3339_ms(this_next)
    if prev is None or now is None or not every_s or not every_s.isdigit() or int(every_s) < 1:
        return 0
    step_ms = int(every_s) * 1000
    return max(0, (now - step_ms - prev) // step_ms)


class Reminding:
    """The reminder methods of ``Agent`` (ADR 0042 section 5); the host's part is
    ``_host/reminders.py``, reached through ``ctx.reminders``."""

    # the firing the running action is (set by the host for every command; None if not one)
    # and the last firing's next time per reminder, from the log (to count merged firings)
    __slots__ = ("_fired", "_firing")
    _firing: Any
    _fired: dict[str, str]

    def _fired_replay(self, j: dict[str, Any] | None) -> None:
        """Remember the ``next`` of a replayed commit's ``fire`` entry (anything else: nothing)."""
        if j is not None and j.get("k") == "fire":
            self._fired_next(str(j.get("reminder", "")), str(j.get("next", "")))

    def _fired_commit(self) -> None:
        """The running firing (if any) committed: remember its ``next``."""
        firing = getattr(self, "_firing", None)
        if firing is not None:
            self._fired_next(firing.name, firing.next)

    def _fired_next(self, name: str, nxt: str) -> None:
        if not hasattr(self, "_fired"):
            self._fired = {}
        self._fired[name] = nxt

    if TYPE_CHECKING:
        ctx: AgentContext

        async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...

    async def remind(
        self,
        name: str,
        *,
        action: str,
        params: dict[str, Any] | None = None,
        at: dt.datetime | int | None = None,
        every: float | dt.timedelta | None = None,
        cron: str | None = None,
        tz: str | None = None,
    ) -> None:
        """Run ``action(**params)`` on this agent ``at`` a time (aware datetime or unix ms),
        ``every`` so many whole seconds (at least 1) or on ``cron`` (five fields, or six with
        seconds first; ``tz`` an IANA zone), each firing processed once, across host crashes
        and moves; ``self.reminder`` tells the fired action which reminder it is. The same
        ``name`` again replaces the reminder. A journaled step: a re-run does not publish
        twice. Bad input raises ``InvalidParams`` (or ``UnknownAction``), nothing scheduled.

        >>> await self.remind("expire", every=60, action="expire", params={"days": 30})  # doctest: +SKIP
        """
        r = self.ctx.reminders.check(name, action, params, at=at, every=every, cron=cron, tz=tz)
        await self.step(f"remind:{r.name}", self.ctx.reminders.publish, r)

    async def cancel_reminder(self, name: str) -> None:
        """Stop the reminder ``name`` (nothing if there is none); a journaled step."""
        await self.step(f"unremind:{check_reminder_name(name)}", self.ctx.reminders.cancel, name)

    @property
    def reminder(self) -> Any:
        """The reminder whose firing this action is (``name``, ``next``: the next firing's
        time, RFC 3339), None when the command is not a reminder's firing."""
        return getattr(self, "_firing", None)
