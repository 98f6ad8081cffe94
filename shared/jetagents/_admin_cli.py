"""The operator's commands of ``jetagents``: ``agents ls|quarantined``, ``agent show|history|state``,
``dlq`` and ``dlq redrive`` (thin layers over ``jetagents._client.inspection.Inspector``)."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
import typer

from ._cli_support import NatsUrl, parse_agent, with_client

T = TypeVar("T")
AgentsOpt = Annotated[
    list[str] | None,
    typer.Option(help="module:attr of agent classes to rebuild state with [env JETAGENTS_AGENTS; default: examples]"),
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]

agents_app = typer.Typer(no_args_is_help=True, help="Agents known from the event log.")
agent_app = typer.Typer(no_args_is_help=True, help="One agent: state, history, time travel.")
dlq_app = typer.Typer(help="Dead letters: list (filters), redrive.")


def _agent_paths(agents: list[str] | None) -> list[str]:
    from ._service import EXAMPLES

    if agents:
        return agents
    env = os.environ.get("JETAGENTS_AGENTS", "")
    if env.strip().startswith("["):
        return [str(p) for p in json.loads(env)]
    return [p for p in env.split(",") if p.strip()] or [EXAMPLES]


def _run(nats_url: str | None, agents: list[str] | None, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Connect, build an ``Inspector``, run ``fn(admin)``; typed errors become exit code 1."""
    from ._client.inspection import Inspector
    from ._service import load_agents

    return with_client(nats_url, lambda client: fn(Inspector(client, agents=load_agents(_agent_paths(agents)))))


def _line(value: Any) -> None:
    typer.echo(orjson.dumps(value).decode())


@agents_app.command("ls")
def agents_ls(
    agent_type: Annotated[str | None, typer.Option("--type", help="only this agent type")] = None,
    host: Annotated[str | None, typer.Option(help="only agents served by this host")] = None,
    nats_url: NatsUrl = None,
    as_json: AsJson = False,
) -> None:
    """Agents with a log (from AGT_EVT's subjects), the host serving each, active or not."""
    found = _run(nats_url, ["jetagents.examples:EXAMPLE_AGENTS"], lambda a: a.agents(agent_type, host))
    if as_json:
        _line([s.to_json() for s in found])
        return
    typer.echo(f"{'agent':<40} {'commits':>8} {'host':<24} active")
    for s in found:
        typer.echo(f"{s.type + '/' + s.id:<40} {s.commits:>8} {s.host or '-':<24} {'yes' if s.active else 'no'}")


@agents_app.command("quarantined")
def agents_quarantined(
    limit: Annotated[int, typer.Option(min=1, help="at most this many")] = 1000,
    nats_url: NatsUrl = None,
    as_json: AsJson = False,
) -> None:
    """Agents quarantined for failing activation (ADR 0053), oldest first; `agent release` frees one."""
    found = with_client(nats_url, lambda client: client.admin.quarantined_agents(limit))
    if as_json:
        _line(found)
        return
    typer.echo(f"{'agent':<40} {'failures':>8} {'code':<12} {'host':<24} reason")
    for r in found:
        failures, code, host = r.get("failures", "-"), r.get("code", "-"), r.get("host", "-")
        typer.echo(f"{r['agent']:<40} {failures!s:>8} {code!s:<12} {host!s:<24} {str(r.get('reason', ''))[:80]}")


@agent_app.command("show")
def agent_show(
    agent: Annotated[str, typer.Argument(help="TYPE/ID")],
    last: Annotated[int, typer.Option(min=0, max=100, help="last commits to show")] = 5,
    agents: AgentsOpt = None,
    nats_url: NatsUrl = None,
) -> None:
    """State, commit number and last sequence, snapshot, host, last commits (JSON)."""
    aid = parse_agent(agent)
    detail = _run(nats_url, agents, lambda a: a.show(aid.type, aid.id, last=last))
    _line(detail.to_json())


@agent_app.command("history")
def agent_history(
    agent: Annotated[str, typer.Argument(help="TYPE/ID")],
    from_seq: Annotated[int, typer.Option("--from", min=1, help="first stream sequence")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="then print new commits as they come")] = False,
    nats_url: NatsUrl = None,
) -> None:
    """The agent's commits, one JSON object per line."""
    aid = parse_agent(agent)

    async def go(admin: Any) -> None:
        if not follow:
            for entry in await admin.history(aid.type, aid.id, from_seq=from_seq, limit=limit):
                _line(entry.to_json())
            return
        async for entry in admin.follow(aid.type, aid.id, from_seq=from_seq):
            _line(entry.to_json())

    try:
        _run(nats_url, ["jetagents.examples:EXAMPLE_AGENTS"], go)
    except KeyboardInterrupt:
        return


@agent_app.command("state")
def agent_state(
    agent: Annotated[str, typer.Argument(help="TYPE/ID")],
    at: Annotated[int | None, typer.Option("--at", min=1, help="stream sequence (default: the latest)")] = None,
    agents: AgentsOpt = None,
    nats_url: NatsUrl = None,
) -> None:
    """Time travel: the state right after the commit at sequence --at, replayed here from the
    log with the agent's own code (nothing is written)."""
    aid = parse_agent(agent)
    rebuilt = _run(nats_url, agents, lambda a: a.state_at(aid.type, aid.id, at))
    _line({"agent": str(aid), "n": rebuilt.n, "seq": rebuilt.seq, "state": rebuilt.state.model_dump(mode="json")})


@dlq_app.callback(invoke_without_command=True)
def dlq(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="entries to show, newest last")] = 20,
    agent: Annotated[str | None, typer.Option(help="only dead letters of TYPE/ID, or TYPE/*")] = None,
    code: Annotated[str | None, typer.Option(help="only this error code")] = None,
    from_seq: Annotated[int, typer.Option("--from", min=1, help="first sequence in AGT_DLQ")] = 1,
    nats_url: NatsUrl = None,
) -> None:
    """Print dead letters (one JSON object per line: the dead letter itself, its sequence
    in "_seq"), newest last; `jetagents dlq redrive` sends them again."""
    if ctx.invoked_subcommand is not None:
        return
    agent_type, agent_id = _filter(agent)

    async def go(admin: Any) -> list[Any]:
        # the newest `limit` that match: read from --from and keep the tail
        found = await admin.dead_letters(agent_type, agent_id, code=code, from_seq=from_seq, limit=1_000_000)
        return list(found[-limit:])

    for dl in _run(nats_url, ["jetagents.examples:EXAMPLE_AGENTS"], go):
        _line(dict(dl.body, _seq=dl.seq))


def _filter(agent: str | None) -> tuple[str | None, str | None]:
    if agent is None:
        return None, None
    agent_type, _, agent_id = agent.partition("/")
    return agent_type or None, (agent_id if agent_id not in ("", "*") else None)


@dlq_app.command("redrive")
def dlq_redrive(
    seq: Annotated[int | None, typer.Argument(help="sequence of one dead letter (see `jetagents dlq`)")] = None,
    agent: Annotated[str | None, typer.Option(help="all of TYPE/ID, or TYPE/*")] = None,
    code: Annotated[str | None, typer.Option(help="all with this error code")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every redrivable dead letter")] = False,
    wait: Annotated[float, typer.Option(min=0, help="seconds to wait for each agent's answer")] = 0.0,
    nats_url: NatsUrl = None,
) -> None:
    """Send dead letters again under their original command ids (exactly-once holds: a
    command already applied is answered from the agent's record); each line says where it went."""
    if seq is None and agent is None and code is None and not all_:
        typer.echo("error: name a sequence, a filter (--agent, --code) or --all", err=True)
        raise typer.Exit(2)
    agent_type, agent_id = _filter(agent)

    async def go(admin: Any) -> list[Any]:
        if seq is not None:
            return [await admin.redrive(seq, wait_s=wait)]
        return list(await admin.redrive_where(agent_type, agent_id, code=code, wait_s=wait))

    for r in _run(nats_url, ["jetagents.examples:EXAMPLE_AGENTS"], go):
        _line(r.to_json())


@agent_app.command("delete")
def agent_delete(
    agent: Annotated[str, typer.Argument(help="TYPE/ID")],
    grace_s: Annotated[float, typer.Option(min=0, help="seconds before its data is purged")] = 86_400.0,
    reason: Annotated[str, typer.Option(help="why (kept in the tombstone)")] = "",
    by: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    nats_url: NatsUrl = None,
) -> None:
    """Delete an agent: a tombstone refuses its commands (agent_deleted) at once; its log,
    snapshot, metadata, dead letters and blobs are purged after --grace-s by the cluster leader
    (purge_sweep_s) or `jetagents agent purge`."""
    aid = parse_agent(agent)
    if not yes and not typer.confirm(f"delete {aid} for good (its data goes after {grace_s:g} s)?"):
        raise typer.Exit(1)
    who = by if by is not None else os.environ.get("USER", "")

    async def go(admin: Any) -> Any:
        from ._client.lifecycle import Lifecycle

        return await Lifecycle(admin).delete(aid.type, aid.id, grace_s=grace_s, by=who, reason=reason)

    _line(_run(nats_url, ["jetagents.examples:EXAMPLE_AGENTS"], go))


@agent_app.command("purge")
def agent_purge(
    agents: AgentsOpt = None,
    nats_url: NatsUrl = None,
) -> None:
    """Purge deleted agents past their grace period, then apply each known type's retention
    (keep_snapshots): one JSON line per agent (or type) purged, cut or skipped. The cluster
    leader runs both on its own (purge_sweep_s, retention_sweep_s)."""

    async def go(admin: Any) -> list[Any]:
        from ._client.lifecycle import Lifecycle

        life = Lifecycle(admin)
        return [*(await life.purge_due()), *(await life.apply_retention())]

    for line in _run(nats_url, agents, go):
        _line(line)
