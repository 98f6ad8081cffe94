"""The dashboard's ring, reminders and waits, live charts and agent actions in a real browser
(Debian's chromium driven by Playwright) against a live nats-server and two hosts. One browser,
one server and one pair of hosts for the whole module's story (the browser is the slow part):
the ring shows the owners the ring bucket holds, with its change log; a reminder set by an
agent and a suspended action appear (the action disappears after its signal); the charts'
figures move once load is sent; rollback, delete, migrate and release go through the admin
login and a confirmation, and the result is checked on the page and in the streams; and a
reader without a session, or with a forged form, can do none of them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import orjson
from playwright.async_api import Page, async_playwright, expect

from jetagents import AgentDeleted, Client, ClientSettings, Host, NatsServer, Registry
from jetagents._client.inspection import Inspector
from jetagents._dashboard.app import Dashboard
from jetagents.examples import EXAMPLE_AGENTS

from ..conftest import host_settings
from ..durable_agents import Flow
from ..reminder_agents import Alarm
from .helpers import commits, eventually

CHROMIUM = "/usr/bin/chromium"
expect.set_options(timeout=20_000)  # a generous deadline: the machine is shared, each wait polls
TOKEN = "dash-ops-token-18"
AGENTS = [*EXAMPLE_AGENTS, Alarm, Flow]
ACTIONS = ("delete", "migrate", "rollback", "release")


async def _reload_until(page: Page, check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Reload the page until ``check`` holds (what a page shows changes only on a reload)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, f"{page.url} never showed what was expected"
        await asyncio.sleep(0.3)
        await page.reload()


async def _legend(page: Page, chart: str) -> dict[str, float]:
    """The last value of each series of a chart, as its legend shows it ("-": none yet)."""
    shown = await page.locator(f"#{chart} text.last").evaluate_all(
        "ts => ts.map(t => [t.dataset.series, t.textContent.split(': ').pop()])"
    )
    return {name: float(v) for name, v in shown if v != "-"}


async def test_ring_waits_live_charts_and_agent_actions(nats_server: NatsServer) -> None:
    hosts = [Host(host_settings(nats_server.url, host_id=h, heartbeat_s=0.3), Registry(AGENTS)) for h in ("h1", "h2")]
    for h in hosts:
        await h.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    dash = Dashboard(nats_server.url, agents=AGENTS, admin_token=TOKEN)
    await dash.start()
    base = dash.url
    ins = Inspector(client, agents=AGENTS)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page()

            # -- the ring: both hosts own partitions, the picture shows exactly the ring's owners
            async def both_own() -> bool:
                owners = (await ins.cluster())["owners"]
                return {"h1", "h2"} <= set(owners) and all(owners)

            await eventually(both_own, timeout_s=40)
            owners = (await ins.cluster())["owners"]
            await page.goto(base + "ring")
            drawn = await page.locator("#ring-svg path").evaluate_all(
                "ps => ps.map(p => [Number(p.dataset.partition), p.dataset.owner])"
            )
            if sorted(drawn) != list(enumerate(owners)):  # the ring moved between the reads
                await page.reload()
                owners = (await ins.cluster())["owners"]
                drawn = await page.locator("#ring-svg path").evaluate_all(
                    "ps => ps.map(p => [Number(p.dataset.partition), p.dataset.owner])"
                )
            assert [list(x) for x in sorted(drawn)] == [list(x) for x in enumerate(owners)]
            await expect(page.locator("#owners")).to_contain_text("h1")
            await expect(page.locator("#owners")).to_contain_text("h2")
            # the change log: some epoch moved partitions to h2 (the second host to join)
            await expect(page.locator("#changes")).to_contain_text("→ h2")

            # -- a reminder set by an agent, and a suspended action until its signal
            await client.agent("alarm", "a1").request("arm", {"name": "nightly", "every": 3600})
            flow = client.agent("flow", "f1")
            first = await flow.request_reply("guarded", {"run": "r1"}, command_id="g1", timeout=15)
            assert first.status == "suspended"
            await page.goto(base + "waiting")
            await expect(page.locator("#schedules")).to_contain_text("alarm/a1")
            await expect(page.locator("#schedules")).to_contain_text("@every 3600s")
            await expect(page.locator("#open-actions")).to_contain_text("g1")
            await expect(page.locator("#open-actions")).to_contain_text("approve")
            await page.goto(base + "agent/alarm/a1")
            await expect(page.locator("#schedules")).to_contain_text("nightly")
            await page.goto(base + "agent/flow/f1")
            await expect(page.locator("#open-actions")).to_contain_text("suspended")
            assert await flow.signal("approve", "yes") == {"delivered": "g1"}
            assert await flow.result("g1", timeout=15) == "yes"

            async def gone() -> bool:
                return "g1" not in await page.locator("#open-actions").inner_text()

            await _reload_until(page, gone)
            await expect(page.locator("#open-actions")).to_contain_text("no suspended or parked actions")

            # -- live charts: quiet, then figures that move once load is sent
            await page.goto(base + "live")
            await expect(page.locator("#samples")).to_contain_text(re.compile(r"^([3-9]|\d\d+) samples"))
            quiet = await _legend(page, "throughput")
            assert quiet["commits"] == 0.0, quiet
            sending = True

            async def load() -> None:
                i = 0
                while sending:
                    await asyncio.gather(
                        *(client.agent("counter", f"load{k}").request("increment", {"by": 1}) for k in range(8))
                    )
                    i += 1

            loader = asyncio.create_task(load())
            try:

                async def moved() -> bool:
                    rates, lat = await _legend(page, "throughput"), await _legend(page, "latency")
                    answered = rates.get("h1 answered", 0) + rates.get("h2 answered", 0)
                    return rates["commits"] > 0 and answered > 0 and max(lat.get("h1 p50", 0), lat.get("h2 p50", 0)) > 0

                await eventually(moved, timeout_s=30, interval_s=0.3)  # htmx swaps the charts every 2 s
            finally:
                sending = False
                await loader

            # the hosts page shows what the heartbeats advertise: the latency of the last commands
            await page.goto(base)
            await expect(page.locator("#hosts")).to_contain_text(re.compile(r"\(last \d+\)"))

            # -- without a session no action runs; the confirmation needs a login
            for i, by in enumerate((1, 2, 4)):
                await client.agent("counter", "web").request("increment", {"by": by}, command_id=f"w-{i}")
            await client.agent("counter", "del").request("increment", {"by": 1})
            http = page.context.request
            for action in ACTIONS:
                url = f"{base}agent/counter/web/do/{action}"
                assert (await http.get(url, max_redirects=0)).status == 303
                assert (await http.post(url, form={"csrf": "", "to": "1", "target": "h1"})).status == 403

            await page.goto(base + "login")
            await page.get_by_label("admin token").fill(TOKEN)
            await page.locator("#login").click()
            await expect(page).to_have_url(re.compile(r"/dlq$"))
            for action in ACTIONS:  # a session cookie alone (a forged cross-site form) is refused
                forged = await http.post(f"{base}agent/counter/web/do/{action}", form={"csrf": "guess", "to": "1"})
                assert forged.status == 403
            assert await ins.io.kv_get(ins.topology.tomb_bucket, "counter.web") is None
            assert len(await commits(client.nc, "counter", "web")) == 3

            # -- rollback to the first commit, from the history row, through the confirmation
            log = await commits(client.nc, "counter", "web")
            await page.goto(base + "agent/counter/web")
            await page.get_by_label(f"roll back to {log[0]['_seq']}").click()
            await expect(page.locator("#state")).to_contain_text('"value": 1')  # what it will become
            await page.locator("#confirm").click()
            await expect(page.locator("#done")).to_contain_text(f"as of sequence {log[0]['_seq']}")
            await page.goto(base + "agent/counter/web")
            await expect(page.locator("#state")).to_contain_text('"value": 1')
            reset = (await commits(client.nc, "counter", "web"))[-1]
            assert "dashboard@127.0.0.1" in orjson.dumps(reset).decode()  # the audit: who asked
            assert await client.agent("counter", "web").request("increment", {"by": 10}) == 11

            # -- migrate to the other host
            detail = await ins.show("counter", "web")
            other = "h2" if detail.host == "h1" else "h1"
            await page.goto(base + "agent/counter/web")
            await page.get_by_role("link", name="migrate…").click()
            await page.get_by_label("target host").select_option(other)
            await page.locator("#confirm").click()
            await expect(page.locator("#done")).to_contain_text(f"moved to {other}")
            assert await client.agent("counter", "web").request("increment", {"by": 1}) == 12
            assert await client.locate("counter", "web") == other
            assert (await commits(client.nc, "counter", "web"))[-1]["_headers"]["Agt-Host"] == other
            await page.goto(base + "agent/counter/web")
            await expect(page.locator("main")).to_contain_text(f"host {other} (active)")

            # -- delete: the tombstone on the page, commands refused with the typed error
            await page.goto(base + "agent/counter/del")
            await page.get_by_role("link", name="delete…").click()
            await page.get_by_label("reason").fill("test of the dashboard")
            await page.locator("#confirm").click()
            await expect(page.locator("#done")).to_contain_text("is deleted")
            await page.goto(base + "agent/counter/del")
            await expect(page.locator("#deleted")).to_contain_text("dashboard@127.0.0.1: test of the dashboard")
            assert await page.get_by_role("link", name="delete…").count() == 0
            try:
                await client.agent("counter", "del").request("increment", {"by": 1}, timeout=10)
                raise AssertionError("a deleted agent took a command")
            except AgentDeleted:
                pass

            # -- release a quarantined agent
            record = {"agent": "counter/q1", "reason": "replay failed at commit 3 (test)", "host": "h1"}
            await ins.io.kv_put(ins.topology.quarantine_bucket, "counter.q1", orjson.dumps(record))
            await page.goto(base + "agents")  # listed on the agents page, linked to its own
            held = page.locator("#quarantined-agents")
            await expect(held).to_contain_text("replay failed at commit 3")
            await held.get_by_role("link", name="counter/q1").click()
            await expect(page.locator("#quarantined")).to_contain_text("replay failed at commit 3")
            await page.get_by_role("link", name="release…").click()
            await page.locator("#confirm").click()
            await expect(page.locator("#done")).to_contain_text("released from quarantine")
            assert await client.admin.quarantined("counter", "q1") is None
            await page.goto(base + "agents")
            await expect(page.locator("h1")).to_contain_text("Agents")
            assert await page.locator("#quarantined-agents").count() == 0
            await browser.close()
    finally:
        await dash.stop()
        await client.close()
        for h in hosts:
            await h.stop()
