"""Reminders (ADR 0042 section 5) against a real nats-server and an in-process host: set
from an action and from the client, each firing processed once (its own ``s<cepoch>-<seq>``
command id, a ``fire`` commit, the server's ``Nats-Schedule-Next`` times one second apart
with no gap and no repeat), cancelled, replaced, a one-shot ``at`` (fires once, then gone),
a cron with a seconds field, and bad input refused with a typed error and nothing scheduled.
Counts are read from the event log."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from typer.testing import CliRunner

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents._core.errors import InvalidParams, UnknownAction
from jetagents._core.ids import partition_of
from jetagents._core.schedules import parse_rfc3339_ms
from jetagents._nats.api import js_api
from jetagents.cli import app
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import commits, dead_letters, eventually
from tests.reminder_agents import AGENTS


@pytest.fixture
async def alarm_host(nats_server: NatsServer) -> AsyncIterator[Host]:
    async with Host(host_settings(nats_server.url), Registry([*EXAMPLE_AGENTS, *AGENTS])) as h:
        yield h


def fires(log: list[dict[str, Any]], reminder: str | None = None) -> list[dict[str, Any]]:
    return [c for c in log if (c.get("j") or {}).get("k") == "fire" and reminder in (None, c["j"]["reminder"])]


def assert_once_each_second(fired: list[dict[str, Any]]) -> None:
    """No firing doubled (distinct command ids and times) or lost (consecutive seconds)."""
    cmds = [c["cmd"] for c in fired]
    assert len(set(cmds)) == len(cmds) and all(c.startswith("s") and "-" in c for c in cmds), cmds
    nexts = sorted(parse_rfc3339_ms(c["j"]["next"]) or 0 for c in fired)
    assert all(b - a == 1000 for a, b in itertools.pairwise(nexts)), nexts


async def rang(client: Client, agent_id: str) -> int:
    return int(await client.agent("alarm", agent_id).request("count", delivery="at-most-once"))


async def test_every_second_from_an_action_fires_once_per_second_until_cancelled(
    alarm_host: Host, client: Client
) -> None:
    ref = client.agent("alarm", "a1")
    await ref.request("arm", {"name": "tick", "every": 1})
    await eventually(lambda: rang(client, "a1"), timeout_s=10)
    first = await rang(client, "a1")

    async def more() -> bool:
        return await rang(client, "a1") >= first + 3

    await eventually(more, timeout_s=15)
    await ref.request("disarm", {"name": "tick"})
    log = await commits(client.nc, "alarm", "a1")
    stopped = len(fires(log))
    await asyncio.sleep(2.5)  # a live @every 1s would fire twice more in this time
    log = await commits(client.nc, "alarm", "a1")
    fired = fires(log, "tick")
    assert stopped <= len(fired) <= stopped + 1  # one firing may have been on its way
    assert_once_each_second(fired)
    # every firing's commit holds its ring event, and the journaled steps are there too
    assert all(c["events"] and c["events"][0]["data"]["reminder"] == "tick" for c in fired)
    assert await rang(client, "a1") == len(fired)
    steps = [c["j"]["name"] for c in log if (c.get("j") or {}).get("k") == "step"]
    assert steps == ["remind:tick", "unremind:tick"]
    assert await ref.reminders() == []


async def test_client_sets_lists_replaces_and_cancels(alarm_host: Host, client: Client) -> None:
    ref = client.agent("alarm", "a2")
    got = await ref.remind("beat", every=1, action="ring", params={"tag": "v1"})
    assert got == {"name": "beat", "schedule": "@every 1s", "action": "ring", "params": {"tag": "v1"}}
    await ref.remind("daily", cron="30 9 * * *", tz="Europe/Paris", action="ring")
    listed = {r["name"]: r for r in await ref.reminders()}
    assert listed["daily"] == {
        "name": "daily",
        "schedule": "0 30 9 * * *",
        "action": "ring",
        "params": {},
        "tz": "Europe/Paris",
    }
    assert listed["beat"]["params"] == {"tag": "v1"}

    async def tagged(tag: str) -> bool:
        return any(c["events"][0]["data"]["tag"] == tag for c in fires(await commits(client.nc, "alarm", "a2")))

    await eventually(lambda: tagged("v1"), timeout_s=10)
    await ref.remind("beat", every=1, action="ring", params={"tag": "v2"})  # replaces it
    await eventually(lambda: tagged("v2"), timeout_s=10)
    await ref.cancel_reminder("beat")
    await ref.cancel_reminder("daily")
    assert await ref.reminders() == []
    fired = fires(await commits(client.nc, "alarm", "a2"), "beat")
    tags = [c["events"][0]["data"]["tag"] for c in fired]
    assert tags == sorted(tags)  # all v1 firings, then only v2: the replaced one never fires again
    assert_once_each_second(fired)


async def test_cron_with_a_seconds_field(alarm_host: Host, client: Client) -> None:
    ref = client.agent("alarm", "a3")
    await ref.remind("even", cron="*/2 * * * * *", action="ring")

    async def twice() -> bool:
        return len(fires(await commits(client.nc, "alarm", "a3"))) >= 2

    await eventually(twice, timeout_s=15)
    await ref.cancel_reminder("even")
    fired = fires(await commits(client.nc, "alarm", "a3"))
    for c in fired:
        assert dt.datetime.fromisoformat(c["j"]["next"].replace("Z", "+00:00")).second % 2 == 0


async def test_at_fires_once_then_the_reminder_is_gone(alarm_host: Host, client: Client) -> None:
    ref = client.agent("alarm", "at1")
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=2)
    got = await ref.remind("once", at=when, action="ring", params={"tag": "x"})
    assert got["schedule"] == f"@at {when:%Y-%m-%dT%H:%M:%S}Z"

    async def gone() -> bool:
        return len(fires(await commits(client.nc, "alarm", "at1"))) == 1 and await ref.reminders() == []

    await eventually(gone, timeout_s=15)
    await asyncio.sleep(1.5)  # a second firing, if the schedule were kept, would land in this time
    fired = fires(await commits(client.nc, "alarm", "at1"))
    assert [c["events"][0]["data"]["tag"] for c in fired] == ["x"], fired
    assert fired[0]["j"]["next"] == "purge"  # the server's word: this was its last firing
    assert await ref.reminders() == []
    assert await rang(client, "at1") == 1


BAD: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"name": "_kick", "every": 1, "action": "ring"}, InvalidParams),  # the host's names
    ({"name": "a.b", "every": 1, "action": "ring"}, InvalidParams),
    ({"name": "r", "every": 0.5, "action": "ring"}, InvalidParams),
    ({"name": "r", "every": 1, "tz": "UTC", "action": "ring"}, InvalidParams),
    ({"name": "r", "cron": "* * *", "action": "ring"}, InvalidParams),
    ({"name": "r", "action": "ring"}, InvalidParams),  # no pattern
    ({"name": "r", "every": 1, "action": "nope"}, UnknownAction),  # refused by the host
    ({"name": "r", "every": 1, "action": "ring", "params": {"times": "3"}}, InvalidParams),  # strict
    ({"name": "r", "every": 1, "action": "ring", "params": {"extra": 1}}, InvalidParams),
    ({"name": "r", "cron": "0 9 * * *", "tz": "Mars/Base", "action": "ring"}, InvalidParams),
]


async def test_bad_input_is_a_typed_error_and_schedules_nothing(alarm_host: Host, client: Client) -> None:
    ref = client.agent("alarm", "bad")
    for kwargs, error in BAD:
        with pytest.raises(error):
            await ref.remind(**kwargs)
    assert await ref.reminders() == []


async def test_bad_input_inside_an_action_is_refused_the_same_way(alarm_host: Host, client: Client) -> None:
    ref = client.agent("alarm", "bad2")
    with pytest.raises(InvalidParams):
        await ref.request("arm", {"name": "x y", "every": 1})
    with pytest.raises(InvalidParams):
        await ref.request("arm", {"name": "ok", "every": 1, "tz": "UTC"})
    assert await ref.reminders() == []


async def test_cli_remind_list_unremind(alarm_host: Host, nats_server: NatsServer) -> None:
    """The commands as typer runs them (in this process: a new interpreter per command
    costs seconds on a loaded machine; `test_cli.py` runs the real executable)."""
    runner = CliRunner()
    url = ["--nats-url", nats_server.url]

    def cli(*args: str) -> Any:
        return runner.invoke(app, [*args, *url], env={"JETAGENTS_PARTITIONS": "8"})

    r = await asyncio.to_thread(cli, "remind", "alarm/c1", "nightly", "ring", '{"tag": "n"}', "--cron", "0 3 * * *")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["result"]["schedule"] == "0 0 3 * * *"
    r = await asyncio.to_thread(cli, "reminders", "alarm/c1")
    assert [x["name"] for x in json.loads(r.stdout)["result"]] == ["nightly"]
    r = await asyncio.to_thread(cli, "remind", "alarm/c1", "bad name", "ring", "--every", "1")
    assert r.exit_code == 1 and json.loads(r.stdout.splitlines()[0])["error"]["code"] == "invalid_params"
    r = await asyncio.to_thread(cli, "unremind", "alarm/c1", "nightly")
    assert r.exit_code == 0, r.output
    r = await asyncio.to_thread(cli, "reminders", "alarm/c1")
    assert json.loads(r.stdout)["result"] == []


async def test_a_schedule_stored_on_a_command_subject_is_refused_and_removed(alarm_host: Host, client: Client) -> None:
    """The schedule flag covers all of AGT_CMD: a client may store a schedule on a command
    subject. Its host refuses it as malformed when it is delivered, and the acknowledgement
    removes it: it does not go on firing at another agent."""
    nc = client.nc
    hdrs = {"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": "agt.cmd.alarm.victim"}
    await nc.request("agt.cmd.alarm.forger", b'{"action":"ring","params":{}}', headers=hdrs, timeout=5)

    async def refused() -> bool:
        return any(d["subject"].endswith("alarm.forger") for d in await dead_letters(nc))

    await eventually(refused, timeout_s=10)
    victim = f"agt.p.{partition_of('alarm', 'victim', 8)}.alarm.victim"

    async def fired_at_victim() -> tuple[int, dict[str, int]]:
        """Firings so far: processed (rang) and still stored."""
        info = await js_api(nc, "$JS.API.STREAM.INFO.AGT_CMD", {"subjects_filter": ">"}, 5)
        subjects: dict[str, int] = info["state"].get("subjects") or {}
        return await rang(client, "victim") + subjects.get(victim, 0), subjects

    before, _ = await fired_at_victim()
    await asyncio.sleep(2.5)  # a live @every 1s would fire twice in this time
    after, subjects = await fired_at_victim()
    assert after <= before + 1, (before, after)  # at most one already on its way
    assert not any(k.endswith("alarm.forger") for k in subjects), subjects
    letters = [d for d in await dead_letters(nc) if d["subject"].endswith("alarm.forger")]
    assert letters[0]["error"]["code"] == "malformed"


async def test_firings_merged_in_a_server_outage_are_counted_as_missed(nats_server: NatsServer) -> None:
    """The server fires an ``@every`` schedule once after an outage, not once per missed
    interval; the action sees how many it missed (``self.reminder.missed``), and the firings
    plus the missed ones cover every scheduled second."""
    async with (
        Host(host_settings(nats_server.url), Registry([*EXAMPLE_AGENTS, *AGENTS])),
        await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8)) as client,
    ):
        ref = client.agent("alarm", "m1")
        await ref.remind("tick", every=1, action="ring")

        async def fired(n: int) -> bool:
            return len(fires(await commits(client.nc, "alarm", "m1"))) >= n

        await eventually(lambda: fired(2), timeout_s=15)
        nats_server.stop()
        await asyncio.sleep(4)  # the server is down: nothing to wait on
        nats_server.start()
        before = len(fires(await commits(client.nc, "alarm", "m1")))
        await eventually(lambda: fired(before + 2), timeout_s=30)
        await ref.cancel_reminder("tick")
        fired_log = fires(await commits(client.nc, "alarm", "m1"), "tick")
        missed = [c["events"][0]["data"]["missed"] for c in fired_log]
        assert [c["j"]["missed"] for c in fired_log] == missed
        assert max(missed) >= 2, missed
        nexts = sorted(parse_rfc3339_ms(c["j"]["next"]) or 0 for c in fired_log)
        assert len(fired_log) + sum(missed) == (nexts[-1] - nexts[0]) // 1000 + 1
