"""The dashboard's actions on one agent beyond redrive (ADR 0055, "Built later"): delete
(tombstone), migrate to a chosen host, roll back to a sequence, release from quarantine. Each
is the client call the CLI makes (``Lifecycle.delete``, ``Client.migrate``,
``client.admin.rollback`` and ``release``), behind the same guard as redrive: an admin
session, a confirmation page (``GET .../do/<action>``) and a POST carrying the session's CSRF
token. Each is audited like the CLI does it (``by`` kept in the tombstone and in the reset
commit) and logged as ``dashboard_action`` with who asked (``dashboard@<peer address>``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from .._core.errors import MalformedCommand
from .._core.ids import AgentId, is_valid_token

log = structlog.get_logger("jetagents.dashboard")

ACTIONS = ("delete", "migrate", "rollback", "release")
MIGRATE_STRATEGIES = ("checkpoint", "state", "cold")
GRACE_DEFAULT_S = 86_400.0


def who(request: Request) -> str:
    peer = request.client.host if request.client else "?"
    return f"dashboard@{peer}"


def _aid(request: Request) -> AgentId:
    return AgentId(request.path_params["type"], request.path_params["id"])


def _action(request: Request) -> str:
    name = str(request.path_params["action"])
    if name not in ACTIONS:
        raise MalformedCommand(f"no such action {name!r}; one of {', '.join(ACTIONS)}")
    return name


async def _run(name: str, aid: AgentId, form: dict[str, str], ins: Any, client: Any, by: str) -> tuple[str, Any]:
    """Carry out ``name``; returns a sentence for the page and the call's result."""
    if name == "delete":
        from .._client.lifecycle import Lifecycle

        grace_s = float(form.get("grace_s") or GRACE_DEFAULT_S)
        if not 0 <= grace_s <= 365 * 86_400:
            raise MalformedCommand("grace_s must be between 0 and a year")
        tomb = await Lifecycle(ins).delete(aid.type, aid.id, grace_s=grace_s, by=by, reason=form.get("reason", ""))
        return f"{aid} is deleted: its commands are refused; its data goes after {grace_s:g} s", tomb
    if name == "migrate":
        target, strategy = form.get("target", ""), form.get("strategy", "checkpoint")
        if not is_valid_token(target):
            raise MalformedCommand(f"invalid host id {target!r}")
        if strategy not in MIGRATE_STRATEGIES:
            raise MalformedCommand(f"strategy must be one of {', '.join(MIGRATE_STRATEGIES)}")
        result = await client.migrate(aid.type, aid.id, target, strategy=strategy)
        return f"{aid} moved to {target} ({strategy})", result
    if name == "rollback":
        to_seq = int(form.get("to", "0"))
        if to_seq < 1:
            raise MalformedCommand("roll back to a sequence of 1 or more")
        result = await client.admin.rollback(aid.type, aid.id, to_seq, by=by)
        return f"{aid} rolled back to its state as of sequence {to_seq}", result
    released = await client.admin.release(aid.type, aid.id, by=by)
    return (f"{aid} released from quarantine" if released else f"{aid} was not quarantined"), released


def action_routes(
    page: Callable[..., Response],
    guarded: Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]],
    inspector: Callable[[], Any],
    client: Callable[[], Any],
    sessions: Any,
    form_of: Callable[[Request], Awaitable[dict[str, str]]],
) -> list[Route]:
    async def confirm(request: Request) -> Response:
        if sessions.admin(request) is None:
            return RedirectResponse("/login", 303)
        aid, name = _aid(request), _action(request)
        ctx: dict[str, Any] = {"aid": aid, "action": name, "hosts": [], "state": None, "to": None}
        if name == "migrate":
            cluster = await inspector().cluster()
            ctx["hosts"] = [h["host"] for h in cluster["hosts"] if h["alive"]]
        if name == "rollback":
            to_seq = int(request.query_params.get("to", "0"))
            rebuilt = await inspector().state_at(aid.type, aid.id, to_seq)
            ctx["to"], ctx["state"] = to_seq, rebuilt.state.model_dump(mode="json")
        return page(request, "action_confirm.html", **ctx)

    async def act(request: Request) -> Response:
        form = await form_of(request)
        if not sessions.check(request, form):
            return PlainTextResponse("forbidden: log in as admin and use the confirmation form", 403)
        aid, name = _aid(request), _action(request)
        by = who(request)
        try:
            said, result = await _run(name, aid, form, inspector(), client(), by)
        except Exception as exc:
            log.warning("dashboard_action", action=name, agent=str(aid), by=by, error=repr(exc))
            raise
        log.info(
            "dashboard_action", action=name, agent=str(aid), by=by, form={k: v for k, v in form.items() if k != "csrf"}
        )
        return page(request, "action_done.html", aid=aid, action=name, said=said, result=result)

    return [
        Route("/agent/{type}/{id}/do/{action}", guarded(confirm)),
        Route("/agent/{type}/{id}/do/{action}", guarded(act), methods=["POST"]),
    ]
