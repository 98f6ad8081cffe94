"""``jetagents dashboard`` (ADR 0055): Starlette routes rendering Jinja2 templates (autoescape
on), htmx for the agent search and the live charts, served by uvicorn. Every read is an
``Inspector`` call (or ``reads``: the ring's log, schedules, open journals; ``live``: the
charts' samples); the actions (redrive here, the agent actions in ``actions``) need the admin
token (a login sets a session cookie), a confirmation page, and a POST carrying the session's
CSRF token.

>>> async def main():  # doctest: +SKIP
...     dash = Dashboard("nats://127.0.0.1:4222", agents=[Counter], admin_token="s3cret")
...     print(await dash.start())          # http://127.0.0.1:<port>/
...     await dash.stop()
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._client.admin import quarantined_agents
from .._core.agent import Agent, Registry
from .._core.errors import JetAgentsError
from .._core.ids import AgentId
from .._settings import ClientSettings
from . import reads
from .actions import action_routes
from .live import Live
from .svg import line_chart, ring_svg

HERE = Path(__file__).parent
SESSION_COOKIE = "jetagents_session"
HISTORY_SHOWN = 200  # commits one agent page lists (the newest)
FORM_MAX_BYTES = 4096
LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]  # the only forms are a token and a CSRF token


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _when(ms: Any) -> str:
    """A wall-clock time in milliseconds as UTC, with how far from now it is."""
    if not ms:
        return "-"
    stamp = dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta_s = int(ms) / 1000 - time.time()
    return f"{stamp} (in {delta_s:.0f} s)" if delta_s >= 0 else f"{stamp} ({-delta_s:.0f} s ago)"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["pretty"] = _pretty
    env.filters["when"] = _when
    return env


class Sessions:
    """Logged-in admin sessions, in this process's memory (a restart logs everyone out). The
    CSRF token of a session is an HMAC of its id, so a form from another site cannot carry it."""

    def __init__(self, admin_token: str | None) -> None:
        self.admin_token = admin_token
        self._ids: set[str] = set()
        self._key = secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return bool(self.admin_token)

    def login(self, token: str) -> str | None:
        if not self.admin_token or not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return None
        sid = secrets.token_urlsafe(32)
        self._ids.add(sid)
        return sid

    def logout(self, sid: str) -> None:
        self._ids.discard(sid)

    def admin(self, request: Request) -> str | None:
        sid = request.cookies.get(SESSION_COOKIE, "")
        return sid if self.enabled and sid in self._ids else None

    def csrf(self, sid: str) -> str:
        return hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()

    def check(self, request: Request, form: dict[str, str]) -> bool:
        sid = self.admin(request)
        return sid is not None and hmac.compare_digest(form.get("csrf", ""), self.csrf(sid))


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def create_app(
    inspector: Callable[[], Any],
    *,
    client: Callable[[], Any] | None = None,
    admin_token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The Starlette app; ``inspector()`` returns the ``Inspector`` to read with (made at
    startup by ``Dashboard``, or given directly by a caller that has one), ``client()`` the
    ``Client`` the actions use (migrate, rollback, release). ``allowed_hosts``: the Host
    headers served (a page of another site rebinding its name to 127.0.0.1 is not)."""
    env = _env()
    sessions = Sessions(admin_token)
    live = Live()

    def page(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        sid = sessions.admin(request)
        html = env.get_template(name).render(
            admin=sid is not None,
            login_enabled=sessions.enabled,
            csrf=sessions.csrf(sid) if sid else "",
            nav=name.split(".")[0],
            **ctx,
        )
        return HTMLResponse(html, status_code=status_code)

    def guarded(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await fn(request)
            except (JetAgentsError, ValueError) as exc:
                message = exc.message if isinstance(exc, JetAgentsError) else str(exc)
                return page(request, "error.html", 400, message=message)

        return run

    async def hosts(request: Request) -> Response:
        return page(request, "hosts.html", cluster=await inspector().cluster())

    async def agents(request: Request) -> Response:
        agent_type = request.query_params.get("type") or None
        query = request.query_params.get("q", "").strip()
        found = await inspector().agents(agent_type)
        rows = [a for a in found if query.lower() in f"{a.type}/{a.id}".lower()]
        if request.headers.get("HX-Request"):
            return page(request, "agents_rows.html", agents=rows)
        held = await quarantined_agents(inspector().io, inspector().topology, 100)  # ADR 0059
        return page(request, "agents.html", agents=rows, agent_type=agent_type or "", q=query, quarantined=held)

    async def agent(request: Request) -> Response:
        aid = AgentId(request.path_params["type"], request.path_params["id"])
        ins = inspector()
        detail = await ins.show(aid.type, aid.id, last=HISTORY_SHOWN)
        tomb = await ins.io.kv_get(ins.topology.tomb_bucket, aid.key)
        quarantine = await ins.io.kv_get(ins.topology.quarantine_bucket, aid.key)
        return page(
            request,
            "agent.html",
            aid=aid,
            detail=detail,
            history=list(reversed(detail.last_commits)),
            schedules=(await reads.schedules(ins, aid))[0],
            open_actions=await reads.open_actions(ins, aid),
            tomb=_json(tomb.data) if tomb else None,
            quarantine=_json(quarantine.data) if quarantine else None,
        )

    async def ring(request: Request) -> Response:
        found = await reads.ring(inspector())
        owners = found["cluster"]["owners"]
        by_host: dict[str, list[int]] = {}
        for p, owner in enumerate(owners):
            by_host.setdefault(owner or "unowned", []).append(p)
        return page(request, "ring.html", svg=ring_svg(owners), by_host=by_host, **found)

    async def waiting(request: Request) -> Response:
        ins = inspector()
        rows, more_schedules = await reads.schedules(ins)
        actions, scanned, more_agents = await reads.all_open_actions(ins)
        return page(
            request,
            "waiting.html",
            schedules=rows,
            more_schedules=more_schedules,
            open_actions=actions,
            scanned=scanned,
            more_agents=more_agents,
        )

    async def live_page(request: Request) -> Response:
        return page(request, "live.html")

    async def live_charts(request: Request) -> Response:
        await live.sample(inspector())
        now = live.samples[-1].t_s if live.samples else 0.0

        def ago(series: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
            return {k: [(t - now, v) for t, v in pts] for k, pts in series.items()}

        return page(
            request,
            "live_charts.html",
            throughput=line_chart(ago(live.throughput()), unit="per second", chart_id="throughput"),
            latency=line_chart(ago(live.latency()), unit="ms", chart_id="latency"),
            samples=len(live.samples),
        )

    async def state_at(request: Request) -> Response:
        aid = AgentId(request.path_params["type"], request.path_params["id"])
        seq = int(request.path_params["seq"])
        rebuilt = await inspector().state_at(aid.type, aid.id, seq)
        return page(
            request, "state_at.html", aid=aid, seq=seq, rebuilt=rebuilt, state=rebuilt.state.model_dump(mode="json")
        )

    async def dlq(request: Request) -> Response:
        letters = await inspector().dead_letters(limit=500)
        return page(request, "dlq.html", letters=letters)

    async def confirm(request: Request) -> Response:
        if sessions.admin(request) is None:
            return RedirectResponse("/login", 303)
        letter = await inspector().dead_letter(int(request.path_params["seq"]))
        if letter is None:
            return page(request, "error.html", 404, message="no such dead letter")
        return page(request, "confirm.html", letter=letter)

    async def redrive(request: Request) -> Response:
        if not sessions.check(request, await _form(request)):
            return PlainTextResponse("forbidden: log in as admin and use the confirmation form", 403)
        done = await inspector().redrive(int(request.path_params["seq"]))
        return page(request, "redriven.html", done=done)

    async def login(request: Request) -> Response:
        if not sessions.enabled:
            return page(request, "error.html", 404, message="read-only dashboard: started without an admin token")
        if request.method == "GET":
            return page(request, "login.html", failed=False)
        sid = sessions.login((await _form(request)).get("token", ""))
        if sid is None:
            return page(request, "login.html", 403, failed=True)
        response = RedirectResponse("/dlq", 303)
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict")
        return response

    async def logout(request: Request) -> Response:
        form = await _form(request)
        sid = sessions.admin(request)
        if sid is not None and sessions.check(request, form):
            sessions.logout(sid)
        response = RedirectResponse("/", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    routes = [
        Route("/", guarded(hosts)),
        Route("/agents", guarded(agents)),
        Route("/agent/{type}/{id}", guarded(agent)),
        Route("/agent/{type}/{id}/at/{seq:int}", guarded(state_at)),
        Route("/dlq", guarded(dlq)),
        Route("/dlq/{seq:int}/confirm", guarded(confirm)),
        Route("/dlq/{seq:int}/redrive", guarded(redrive), methods=["POST"]),
        Route("/ring", guarded(ring)),
        Route("/waiting", guarded(waiting)),
        Route("/live", guarded(live_page)),
        Route("/live/charts", guarded(live_charts)),
        *action_routes(page, guarded, inspector, client or (lambda: None), sessions, _form),
        Route("/login", guarded(login), methods=["GET", "POST"]),
        Route("/logout", guarded(logout), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    return Starlette(routes=routes, middleware=middleware)


class Dashboard:
    """The dashboard on its own client connection, served by uvicorn in this event loop."""

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        agents: Iterable[type[Agent[Any]]] | Registry = (),
        host: str = "127.0.0.1",
        port: int = 0,
        admin_token: str | None = None,
    ) -> None:
        self.nats_url, self.agents, self.host, self.port = nats_url, agents, host, port
        self.admin_token = admin_token
        self._inspector: Any = None
        self._client: Any = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> str:
        """Connect, listen, serve; returns the URL (with the port the OS gave for port 0).
        NATS and the socket are set up before uvicorn starts, so their failures raise here
        (``JetAgentsError``, ``OSError``) instead of ending inside the server."""
        from .._client.client import Client
        from .._client.inspection import Inspector

        settings = ClientSettings.model_validate({"nats_url": self.nats_url} if self.nats_url else {})
        self._client = await Client.connect(settings=settings, name="jetagents-dashboard")
        try:
            sock = socket.create_server((self.host, self.port))
        except OSError:
            await self._client.close()
            raise
        self._inspector = Inspector(self._client, agents=self.agents)
        loopback = self.host in LOOPBACK
        app = create_app(
            lambda: self._inspector,
            client=lambda: self._client,
            admin_token=self.admin_token,
            allowed_hosts=LOOPBACK if loopback else None,
        )
        self._server = server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                await self.stop()
                raise RuntimeError("the dashboard's server stopped while starting")
            await asyncio.sleep(0.02)
        self.url = f"http://{self.host}:{sock.getsockname()[1]}/"
        return self.url

    async def wait(self) -> None:
        """Until the server stops (uvicorn ends it on SIGINT or SIGTERM)."""
        try:
            if self._task is not None:
                await self._task
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._server is not None and self._task is not None and not self._task.done():
            self._server.should_exit = True
            await self._task
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
