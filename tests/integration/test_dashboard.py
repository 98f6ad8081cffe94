"""The web dashboard in a real browser (Debian's chromium driven by Playwright) against a live
nats-server and host: every page, an agent's history to a time-travel state, a dead letter
redriven after an admin login and a confirmation; and what a reader without the token cannot do."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents._client.inspection import Inspector
from jetagents._dashboard.app import Dashboard
from jetagents.examples import EXAMPLE_AGENTS

from ..conftest import host_settings
from .helpers import commits, dead_letters, eventually
from .test_admin import Order

CHROMIUM = Path("/usr/bin/chromium")
expect.set_options(timeout=20_000)  # a generous deadline: the machine is shared, each wait polls
TOKEN = "dash-admin-token-18"
AGENTS = [*EXAMPLE_AGENTS, Order]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def _dashboard(url: str, token: str | None) -> Dashboard:
    dash = Dashboard(url, agents=AGENTS, admin_token=token)
    await dash.start()
    return dash


async def test_pages_time_travel_and_redrive(nats_server: NatsServer, browser: Browser) -> None:
    host = Host(host_settings(nats_server.url), Registry(AGENTS))
    await host.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    dash = await _dashboard(nats_server.url, TOKEN)
    try:
        for i, by in enumerate((1, 2, 3, 4)):
            await client.agent("counter", "web").request("increment", {"by": by}, command_id=f"web-{i}")
        await client.agent("account", "acct1").request("deposit", {"amount": 5})
        # a dead letter a fix makes good: `order` needs a spawn, o9 was not spawned
        with pytest.raises(Exception, match="never spawned"):
            await client.agent("order", "o9").request("place", {"qty": 2}, command_id="o9-1", timeout=10)
        await eventually(lambda: dead_letters(client.nc))
        log = await commits(client.nc, "counter", "web")
        page: Page = await browser.new_page()
        base = dash.url

        await page.goto(base)
        await expect(page.locator("#hosts")).to_contain_text("test-host")
        await expect(page.locator("#hosts")).to_contain_text("alive")

        await page.goto(base + "agents")
        await expect(page.locator("#agents")).to_contain_text("web")
        await page.get_by_label("search").fill("counter/w")  # htmx swaps the rows as one types
        await expect(page.locator("#agents")).not_to_contain_text("acct1")
        await expect(page.locator("#agents")).to_contain_text("web")

        await page.get_by_role("link", name="web", exact=True).click()
        await expect(page).to_have_url(re.compile(r"/agent/counter/web$"))
        await expect(page.locator("#state")).to_contain_text('"value": 10')
        await expect(page.locator("#version")).to_have_text("4")
        # time travel: the second commit's state
        await page.get_by_role("link", name=str(log[1]["_seq"]), exact=True).click()
        await expect(page).to_have_url(re.compile(rf"/agent/counter/web/at/{log[1]['_seq']}$"))
        await expect(page.locator("#state")).to_contain_text('"value": 3')
        await expect(page.locator("#at-n")).to_have_text("2")

        # read-only until logged in: no redrive button
        await page.goto(base + "dlq")
        await expect(page.locator("#dlq")).to_contain_text("order/o9")
        assert await page.get_by_role("button", name="redrive…").count() == 0
        await page.goto(base + "login")
        await page.get_by_label("admin token").fill("wrong")
        await page.locator("#login").click()
        await expect(page.locator("main")).to_contain_text("wrong token")
        await page.get_by_label("admin token").fill(TOKEN)
        await page.locator("#login").click()
        await expect(page).to_have_url(re.compile(r"/dlq$"))

        await client.spawn("order", "o9")
        await page.get_by_role("button", name="redrive…").click()
        await expect(page.locator("main")).to_contain_text("o9-1")  # the confirmation shows what goes
        await page.locator("#confirm").click()
        await expect(page.locator("#redriven")).to_contain_text("removed from the dead letters")
        await page.goto(base + "dlq")
        await expect(page.locator("#dlq")).to_contain_text("no dead letters")
        await eventually(lambda: _placed(client))
        assert [c["cmd"] for c in await commits(client.nc, "order", "o9")] == ["o9-1"]

        # a cookie without the session's CSRF token is refused (a forged cross-site form)
        http = page.context.request  # the logged-in browser's cookies
        forged = await http.post(base + "dlq/1/redrive", form={"csrf": "guess"})
        assert forged.status == 403
        escaped = await http.get(base + "agent/counter/%3Cscript%3E")
        text = await escaped.text()
        assert escaped.status == 400 and "<script>" not in text and "&lt;script&gt;" in text
    finally:
        await dash.stop()
        await client.close()
        await host.stop()


def _status(url: str, host_header: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": host_header}), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def _placed(client: Client) -> Any:
    return await commits(client.nc, "order", "o9")


async def test_without_a_token_it_is_read_only(nats_server: NatsServer, browser: Browser) -> None:
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    dash = await _dashboard(nats_server.url, None)
    try:
        # a dead letter written by a host, then the host stopped: the dashboard needs none
        host = Host(host_settings(nats_server.url), Registry(AGENTS))
        await host.start()
        with pytest.raises(Exception, match="never spawned"):
            await client.agent("order", "o1").request("place", {"qty": 1}, command_id="o1-1", timeout=10)
        await host.stop()
        await eventually(lambda: dead_letters(client.nc))
        (letter,) = await Inspector(client).dead_letters()
        page = await browser.new_page()
        await page.goto(dash.url + "dlq")
        await expect(page.locator("#dlq")).to_contain_text("order/o1")
        assert await page.get_by_role("button", name="redrive…").count() == 0
        await expect(page.locator("nav")).to_contain_text("read-only")
        http = page.context.request
        assert (await http.post(f"{dash.url}dlq/{letter.seq}/redrive", form={"csrf": ""})).status == 403
        assert (await http.post(dash.url + "login", form={"token": ""})).status == 404
        assert (await http.get(f"{dash.url}dlq/{letter.seq}/confirm", max_redirects=0)).status == 303
        assert len(await dead_letters(client.nc)) == 1
        # another site's name rebound to 127.0.0.1 (DNS rebinding) is not served
        assert await asyncio.to_thread(_status, dash.url, "rebound.example") == 400
        assert await asyncio.to_thread(_status, dash.url, "localhost") == 200
    finally:
        await dash.stop()
        await client.close()
