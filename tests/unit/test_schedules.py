"""The pure part of server schedules (``_core/schedules.py``): what a user asks for becomes
what the server accepts, and everything else is refused before anything is published."""

from __future__ import annotations

import datetime as dt

import pytest

from jetagents._core.errors import InvalidParams
from jetagents._core.schedules import (
    check_host_name,
    check_reminder_name,
    check_time_zone,
    cron_pattern,
    every_seconds,
    format_at,
    parse_rfc3339_ms,
    pattern_of,
    user_headers,
)
from jetagents._core.wire import Subjects


@pytest.mark.parametrize("name", ["expire", "a", "A-1_b", "x" * 64, "0day"])
def test_reminder_names_accepted(name: str) -> None:
    assert check_reminder_name(name) == name


@pytest.mark.parametrize("name", ["", "_kick", "-x", "a.b", "a*", "a>", "a b", "x" * 65, "é", None, 3, "a\x7f"])
def test_reminder_names_refused(name: object) -> None:
    with pytest.raises(InvalidParams):
        check_reminder_name(name)


def test_host_names_start_with_an_underscore() -> None:
    assert check_host_name("_kick") == "_kick"
    for bad in ("kick", "_", "_a.b", "_" + "x" * 65):
        with pytest.raises(InvalidParams):
            check_host_name(bad)


def test_at_is_rfc3339_utc_from_an_aware_datetime_or_unix_ms() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    assert format_at(dt.datetime(2030, 1, 2, 4, 4, 5, tzinfo=paris)) == "@at 2030-01-02T03:04:05Z"
    assert format_at(1_893_553_445_000) == "@at 2030-01-02T03:04:05Z"
    assert format_at(1_893_553_445_250) == "@at 2030-01-02T03:04:05.250Z"
    with pytest.raises(InvalidParams, match="aware"):
        format_at(dt.datetime(2030, 1, 2))
    for bad in (True, "2030-01-01", 1.5):
        with pytest.raises(InvalidParams):
            format_at(bad)  # type: ignore[arg-type]


def test_every_is_whole_seconds_of_at_least_one() -> None:
    assert every_seconds(1) == 1
    assert every_seconds(dt.timedelta(minutes=2)) == 120
    assert every_seconds(5.0) == 5
    for bad in (0, 0.5, 1.5, -3, dt.timedelta(milliseconds=500), True, "5s", 10**12):
        with pytest.raises(InvalidParams):
            every_seconds(bad)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("* * * * *", "0 * * * * *"),  # five fields: minute first, so seconds 0
        ("*/5  *  * * *", "0 */5 * * * *"),
        ("*/2 * * * * *", "*/2 * * * * *"),  # six fields pass as they are
        ("0 30 9 * * MON-FRI", "0 30 9 * * MON-FRI"),
        ("@hourly", "@hourly"),
    ],
)
def test_cron_gets_six_fields(given: str, sent: str) -> None:
    assert cron_pattern(given) == sent


@pytest.mark.parametrize("bad", ["", "* * * *", "* * * * * * *", "@every 1s", "* * * * $", "@sometimes", 5])
def test_cron_refused(bad: object) -> None:
    with pytest.raises(InvalidParams):
        cron_pattern(bad)


def test_time_zone_is_an_iana_name() -> None:
    assert check_time_zone("Europe/Paris") == "Europe/Paris"
    for bad in ("Mars/Olympus", "", "../etc/passwd", "/etc/localtime", 1):
        with pytest.raises(InvalidParams):
            check_time_zone(bad)


def test_exactly_one_pattern_and_a_zone_only_with_cron() -> None:
    assert pattern_of(cron="0 9 * * *", tz="Europe/Paris").headers() == {
        "Nats-Schedule": "0 0 9 * * *",
        "Nats-Schedule-Time-Zone": "Europe/Paris",
    }
    assert pattern_of(every=3).headers() == {"Nats-Schedule": "@every 3s"}
    with pytest.raises(InvalidParams, match="exactly one"):
        pattern_of()
    with pytest.raises(InvalidParams, match="exactly one"):
        pattern_of(every=1, cron="* * * * *")
    with pytest.raises(InvalidParams, match="cron only"):
        pattern_of(every=1, tz="UTC")


def test_next_times_as_the_server_writes_them() -> None:
    assert parse_rfc3339_ms("2030-01-02T03:04:05Z") == 1_893_553_445_000
    for bad in ("purge", "", "yesterday", "2030-01-02T03:04:05", "9" * 100):
        assert parse_rfc3339_ms(bad) is None


def test_a_schedule_carries_no_server_header_and_no_command_id() -> None:
    assert user_headers({"Agt-Reminder": "x"}) == {"Agt-Reminder": "x"}
    for bad in ({"Nats-Rollup": "all"}, {"Agt-Command-Id": "one-for-all"}, {"agt-command-id": "x"}):
        with pytest.raises(InvalidParams):
            user_headers(bad)


def test_schedule_subjects() -> None:
    s = Subjects("agt")
    assert s.rem("order", "o1", "expire") == "agt.rem.order.o1.expire"
    assert s.rem_of("order", "o1") == "agt.rem.order.o1.*"
    assert s.rem_wildcard == "agt.rem.*.*.*"
