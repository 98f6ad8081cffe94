"""The ``jetagents`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from ._admin_cli import agent_app, agents_app, dlq_app
from ._cli_support import AgentArg, NatsUrl, ReplyTimeout, client_settings, parse_agent, with_client
from ._core.errors import JetAgentsError
from ._core.wire import Delivery, Priority
from ._service import EXAMPLES, NoAgentsConfigured, run
from ._settings import HostSettings

SUPPORT_DESK = "jetagents.examples.support:SUPPORT_AGENTS"  # the AI example (ADR 0047), served by `up`

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distributed, stateful agents on NATS JetStream.")


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="where nats-server keeps JetStream data")] = Path(".jetagents"),
    hosts: Annotated[int, typer.Option(min=1, max=16, help="agent-host processes to start")] = 1,
    port: Annotated[int, typer.Option(help="NATS client port")] = 4222,
    http_port: Annotated[int, typer.Option(help="NATS monitoring port")] = 8222,
    partitions: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    health_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            envvar="JETAGENTS_HEALTH_PORT",
            help="/livez and /readyz of the first host; host i listens on this port + i (0: each picks one)",
        ),
    ] = None,
    dashboard_port: Annotated[
        int, typer.Option(min=-1, max=65535, help="web dashboard port on 127.0.0.1 (0: any free; -1: no dashboard)")
    ] = 0,
) -> None:
    """Run a local cluster: an embedded nats-server and agent hosts with the example agents.

    Ctrl-C or SIGTERM drains the hosts, then stops the server; nothing is left running.
    With a health port, host 1 serves /livez and /readyz on it, host 2 on the next port,
    and so on (on 127.0.0.1 unless JETAGENTS_HEALTH_BIND says otherwise).
    """
    from .testing.server import NatsServer, child_preexec

    server = NatsServer(data_dir=data_dir.resolve(), port=port, http_port=http_port, name="jetagents-local")
    typer.echo(f"starting nats-server on {server.url} (data in {server.data_dir})", err=True)
    server.start()
    # the examples are opt-in for a host (ADR 0040); `up` is the place that opts in, unless told otherwise
    agents = os.environ.get("JETAGENTS_AGENTS") or json.dumps([EXAMPLES, SUPPORT_DESK])
    env = dict(os.environ, JETAGENTS_NATS_URL=server.url, JETAGENTS_PARTITIONS=str(partitions), JETAGENTS_AGENTS=agents)
    desk = agents == json.dumps([EXAMPLES, SUPPORT_DESK])
    served = "counter, account, triage, billing, tech, followup (the support desk)" if desk else agents
    # what jetagents.ai.model_from_env decides in each host, said here without importing it
    model = os.environ.get("JETAGENTS_MODEL") or "none configured: a scripted model (set JETAGENTS_MODEL)"
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def shutdown(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    board: subprocess.Popen[bytes] | None = None
    try:
        for i in range(hosts):
            host_env = dict(env, JETAGENTS_HOST_ID=f"local-{i + 1}")
            if health_port is not None:  # one port per host: they cannot share one
                host_env["JETAGENTS_HEALTH_PORT"] = str(health_port + i if health_port else 0)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "jetagents.cli", "host"], env=host_env, preexec_fn=child_preexec
                )
            )
        board, board_line = _start_dashboard(env, dashboard_port)
        typer.echo(
            f"\njetagents is up: {hosts} host(s), agent types: {served}\n"
            f"  dashboard: {board_line}\n"
            f"  try:  jetagents call counter/c1 increment '{{\"by\": 2}}' --nats-url {server.url}\n"
            f'  or any NATS client: nats req agt.call.counter.c1 \'{{"action":"get"}}\' -s {server.url}\n'
            + (
                f"  support desk (model: {model}):\n"
                f'        jetagents call triage/acme-1 open \'{{"text": "What is on invoice INV-1001?"}}\''
                f" --nats-url {server.url}\n"
                f"        jetagents call followup/acme-1 status --nats-url {server.url}"
                "   # the ticket's follow-up reminder (JETAGENTS_SUPPORT_FOLLOWUP_S)\n"
                if desk
                else ""
            )
            + "  Ctrl-C to stop\n",
            err=True,
        )
        while not stopping:
            for p in procs:
                if p.poll() is not None:
                    typer.echo(f"host pid {p.pid} exited with {p.returncode}; stopping", err=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        if board is not None and board.poll() is None:
            board.send_signal(signal.SIGTERM)
        typer.echo("stopping hosts (draining)...", err=True)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=HostSettings().drain_grace_s + 5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if board is not None:
            try:
                board.wait(timeout=10)
            except subprocess.TimeoutExpired:
                board.kill()
                board.wait()
        typer.echo("stopping nats-server...", err=True)
        server.stop()
        typer.echo("stopped", err=True)


def _start_dashboard(env: dict[str, str], port: int) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start ``jetagents dashboard`` for ``up``; its URL, or why there is none (``up`` runs on
    without it: the dashboard is a view, the cluster does not need it)."""
    import threading

    from .testing.server import child_preexec

    if port < 0:
        return None, "not started (--dashboard-port -1)"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jetagents.cli", "dashboard", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            preexec_fn=child_preexec,
        )
    except OSError as exc:
        return None, f"not started ({exc})"
    found: list[str] = []
    listening = threading.Event()

    def read() -> None:
        # the URL is the line starting with http; anything else the process prints (an agent
        # module's log lines) passes to our stderr, and the pipe never fills
        for line in proc.stdout or ():
            if not found and line.startswith(b"http"):
                found.append(line.decode().strip())
                listening.set()
            else:
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
        listening.set()

    threading.Thread(target=read, daemon=True).start()
    listening.wait(timeout=30)
    if found:
        return proc, found[0]
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return None, f"not started (exit {proc.returncode}; run `jetagents dashboard` to see why)"


@app.command()
def host(
    nats_url: Annotated[str | None, typer.Option(help="NATS URL(s), comma separated [env JETAGENTS_NATS_URL]")] = None,
    host_id: Annotated[str | None, typer.Option(help="unique host id [env JETAGENTS_HOST_ID]")] = None,
    agents: Annotated[
        list[str] | None,
        typer.Option(
            help=f"module:attr of agent classes, required; {EXAMPLES} for the examples [env JETAGENTS_AGENTS]"
        ),
    ] = None,
    loop: Annotated[str | None, typer.Option(help="uvloop (default) or asyncio [env JETAGENTS_EVENT_LOOP]")] = None,
) -> None:
    """Run one agent-host process (configured by flags and JETAGENTS_* variables)."""
    overrides: dict[str, Any] = {}
    if nats_url:
        overrides["nats_url"] = nats_url
    if host_id:
        overrides["host_id"] = host_id
    if agents:
        overrides["agents"] = agents
    if loop:
        overrides["loop"] = loop
    settings = HostSettings(**overrides)
    try:
        run(settings)
    except NoAgentsConfigured as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def call(
    agent: Annotated[str, typer.Argument(help="TYPE/ID, e.g. counter/c1")],
    action: Annotated[str, typer.Argument(help="action name, e.g. increment")],
    params: Annotated[str, typer.Argument(help="JSON object of parameters")] = "{}",
    delivery: Annotated[Delivery, typer.Option(help="delivery guarantee")] = Delivery.EXACTLY_ONCE,
    command_id: Annotated[str | None, typer.Option("--id", help="command id (re-use it to retry safely)")] = None,
    timeout: ReplyTimeout = 10.0,
    nats_url: NatsUrl = None,
    priority: Annotated[
        Priority, typer.Option(help="high: ahead of the agent's queued commands (the high lane, ADR 0058)")
    ] = Priority.NORMAL,
    stream: Annotated[
        bool, typer.Option("--stream", help="print the action's streamed output as it comes (text deltas as text)")
    ] = False,
) -> None:
    """Send ACTION to agent TYPE/ID and print the reply as JSON."""
    aid = parse_agent(agent)
    try:
        parsed = json.loads(params)
        if not isinstance(parsed, dict):
            raise ValueError("parameters must be a JSON object")
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def use(client: Any) -> Any:
        ref = client.agent(aid.type, aid.id)
        opts: dict[str, Any] = {"delivery": delivery, "timeout": timeout, "command_id": command_id}
        if not stream:
            return await ref.request(action, parsed, priority=priority, **opts)
        out = ref.stream(action, parsed, priority=priority, **opts)
        async for chunk in out:  # a chat's text as it comes; anything else (an approval notice) as JSON
            text = chunk.get("delta") if isinstance(chunk, dict) else None
            typer.echo(text if isinstance(text, str) else f"\n{orjson.dumps(chunk).decode()}\n", nl=False)
        typer.echo("")
        return out.result

    result = with_client(nats_url, use, error_json=True)
    typer.echo(orjson.dumps({"ok": True, "result": result}).decode())


def _on_agent(agent: str, nats_url: str | None, use: Any, *, error_json: bool = True) -> None:
    """Run ``use(ref)`` against agent TYPE/ID and print its result as the ``call`` command does
    (``error_json``: an error is printed as ``{"ok": false, ...}`` too, not only on stderr)."""
    aid = parse_agent(agent)
    result = with_client(nats_url, lambda client: use(client.agent(aid.type, aid.id)), error_json=error_json)
    typer.echo(orjson.dumps({"ok": True, "result": result}).decode())


@app.command("signal")
def signal_(
    agent: AgentArg,
    name: Annotated[str, typer.Argument(help="signal name, e.g. approve")],
    payload: Annotated[str, typer.Argument(help="JSON payload")] = "null",
    to: Annotated[str | None, typer.Option(help="the waiting command id (default: the oldest waiter)")] = None,
    command_id: Annotated[str | None, typer.Option("--id", help="command id (re-use it to retry safely)")] = None,
    timeout: ReplyTimeout = 10.0,
    nats_url: NatsUrl = None,
) -> None:
    """Send signal NAME with a JSON PAYLOAD to agent TYPE/ID (resumes an action waiting for it)."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _on_agent(agent, nats_url, lambda ref: ref.signal(name, value, to=to, command_id=command_id, timeout=timeout))


@app.command()
def cancel(
    agent: AgentArg,
    command: Annotated[str, typer.Argument(help="id of the command to cancel")],
    timeout: ReplyTimeout = 10.0,
    nats_url: NatsUrl = None,
) -> None:
    """Cancel command CMD of agent TYPE/ID (suspended: closed at once; running: at its next step)."""
    _on_agent(agent, nats_url, lambda ref: ref.cancel(command, timeout=timeout))


@app.command()
def resume(
    agent: AgentArg,
    command: Annotated[str, typer.Argument(help="id of the blocked command")],
    timeout: ReplyTimeout = 30.0,
    nats_url: NatsUrl = None,
) -> None:
    """Run the blocked journal of command CMD of agent TYPE/ID again (after a code fix)."""
    _on_agent(agent, nats_url, lambda ref: ref.resume(command, timeout=timeout))


@app.command()
def migrate(
    agent: Annotated[str, typer.Argument(help="TYPE/ID, e.g. counter/c1")],
    target: Annotated[str, typer.Argument(help="id of the host to move it to (see jetagents status)")],
    strategy: Annotated[str, typer.Option(help="checkpoint | state | cold")] = "checkpoint",
    timeout: Annotated[float, typer.Option(min=0.1)] = 15.0,
    nats_url: NatsUrl = None,
) -> None:
    """Move one agent to another host; its commands follow it, none is lost."""
    agent_type, _, agent_id = agent.partition("/")

    def use(client: Any) -> Any:
        return client.migrate(agent_type, agent_id, target, strategy=strategy, timeout=timeout)

    typer.echo(orjson.dumps({"ok": True, "result": with_client(nats_url, use)}).decode())


@app.command()
def status(
    nats_url: NatsUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Cluster status: hosts, leader, ring epoch, partitions and active agents per host."""

    async def go() -> dict[str, Any]:
        from ._core.wire import Subjects
        from ._host.coordination import cluster_status
        from ._nats.api import Topology, connect
        from ._nats.kv import JetStreamStore

        settings = client_settings(nats_url)
        nc = await connect(settings.nats_url, name="jetagents-cli", inbox_prefix=settings.inbox_prefix)
        try:
            topo = Topology(Subjects(settings.subject_root))
            return await cluster_status(JetStreamStore(nc, topo.cluster_bucket))
        finally:
            await nc.close()

    try:
        st = asyncio.run(go())
    except JetAgentsError as err:
        typer.echo(f"error: {err.code}: {err.message}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(orjson.dumps(st).decode())
        return
    typer.echo(
        f"leader: {st['leader'] or '-'}   ring epoch: {st['ring_epoch']}   "
        f"partitions: {st['partitions']} ({st['unowned']} unowned)"
    )
    typer.echo(f"{'host':<24} {'state':<9} {'assigned':>8} {'held':>5} {'agents':>7} {'in-flight':>9}")
    for h in st["hosts"]:
        state = "draining" if h["draining"] else ("alive" if h["alive"] else "gone")
        agents = "-" if h["active_agents"] is None else h["active_agents"]
        inflight = "-" if h["inflight"] is None else h["inflight"]
        typer.echo(
            f"{h['host']:<24} {state:<9} {h['partitions_assigned']:>8} {h['partitions_held']:>5} "
            f"{agents:>7} {inflight:>9}"
        )


@app.command()
def remind(
    agent: AgentArg,
    name: Annotated[str, typer.Argument(help="the reminder's name (the same name again replaces it)")],
    action: Annotated[str, typer.Argument(help="the action each firing runs")],
    params: Annotated[str, typer.Argument(help="JSON object of the action's parameters")] = "{}",
    every: Annotated[int | None, typer.Option(help="every N seconds (at least 1)")] = None,
    cron: Annotated[str | None, typer.Option(help="cron: 5 fields (minute first) or 6 (seconds first)")] = None,
    at: Annotated[str | None, typer.Option(help="once, at an RFC 3339 time with an offset")] = None,
    tz: Annotated[str | None, typer.Option(help="IANA time zone of --cron")] = None,
    timeout: ReplyTimeout = 10.0,
    nats_url: NatsUrl = None,
) -> None:
    """Have agent TYPE/ID run ACTION with PARAMS --every N s, on --cron, or --at a time."""
    import datetime as dt

    try:
        parsed = json.loads(params)
        if not isinstance(parsed, dict):
            raise ValueError("parameters must be a JSON object")
        when = dt.datetime.fromisoformat(at.replace("Z", "+00:00")) if at else None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _on_agent(
        agent,
        nats_url,
        lambda ref: ref.remind(
            name, action=action, params=parsed, at=when, every=every, cron=cron, tz=tz, timeout=timeout
        ),
    )


@app.command()
def reminders(
    agent: AgentArg,
    timeout: ReplyTimeout = 10.0,
    nats_url: NatsUrl = None,
) -> None:
    """List agent TYPE/ID's reminders."""
    _on_agent(agent, nats_url, lambda ref: ref.reminders(timeout=timeout))


@app.command()
def unremind(
    agent: AgentArg,
    name: Annotated[str, typer.Argument(help="the reminder to cancel")],
    timeout: ReplyTimeout = 10.0,
    nats_url: NatsUrl = None,
) -> None:
    """Cancel agent TYPE/ID's reminder NAME (nothing if there is none)."""
    _on_agent(agent, nats_url, lambda ref: ref.cancel_reminder(name, timeout=timeout))


app.add_typer(agents_app, name="agents")
app.add_typer(agent_app, name="agent")
app.add_typer(dlq_app, name="dlq")


# -- jetagents agent (ADR 0053): operator actions on one agent ----------------------------------
# (the `agent` group is _admin_cli.agent_app: inspection, delete, purge, and these)


def _admin(agent: str, nats_url: str | None, use: Any) -> None:
    """Run ``use(client.admin, type, id)`` and print ``{"ok": true, "result": ...}``."""
    _on_agent(agent, nats_url, lambda ref: use(ref.client.admin, ref.id.type, ref.id.id), error_json=False)


@agent_app.command("quarantined")
def agent_quarantined(
    agent: AgentArg,
    nats_url: NatsUrl = None,
) -> None:
    """Print the agent's quarantine record (null: not quarantined)."""
    _admin(agent, nats_url, lambda admin, t, i: admin.quarantined(t, i))


@agent_app.command("release")
def agent_release(
    agent: AgentArg,
    by: Annotated[str, typer.Option(help="who releases it (in agt.sys.agent.released) [default: $USER]")] = "",
    nats_url: NatsUrl = None,
) -> None:
    """Release a quarantined agent (fix the cause first); its next command activates it.
    `jetagents agents quarantined` lists them."""
    who = by or os.environ.get("USER", "")
    _admin(agent, nats_url, lambda admin, t, i: admin.release(t, i, by=who))


@agent_app.command("rollback")
def agent_rollback(
    agent: AgentArg,
    to: Annotated[
        int, typer.Option("--to", min=1, help="sequence (in AGT_EVT) of the commit whose state becomes current")
    ],
    by: Annotated[str, typer.Option(help="who asks (kept in the reset commit, the audit record)")] = "",
    nats_url: NatsUrl = None,
) -> None:
    """Roll the agent back to its state as of commit sequence SEQ; later commands apply on top."""
    who = by or os.environ.get("USER", "")
    _admin(agent, nats_url, lambda admin, t, i: admin.rollback(t, i, to, by=who))


# -- jetagents dashboard (ADR 0055) --------------------------------------------------------------


@app.command()
def dashboard(
    nats_url: Annotated[
        str | None, typer.Option("--nats", "--nats-url", help="NATS URL [env JETAGENTS_NATS_URL]")
    ] = None,
    bind: Annotated[
        str, typer.Option("--host", help="address to listen on (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: one the OS picks)")] = 0,
    admin_token: Annotated[
        str | None,
        typer.Option(envvar="JETAGENTS_DASHBOARD_TOKEN", help="enables the admin login and redrive; read-only without"),
    ] = None,
    agents: Annotated[
        list[str] | None,
        typer.Option(help="module:attr of agent classes (time travel) [env JETAGENTS_AGENTS; default: examples]"),
    ] = None,
) -> None:
    """Serve the web dashboard: hosts, agents, history and time travel, dead letters.

    Prints its URL on stdout (one line) once it listens.
    """
    from ._admin_cli import _agent_paths
    from ._dashboard.app import Dashboard
    from ._service import load_agents

    async def go() -> None:
        dash = Dashboard(
            nats_url, agents=load_agents(_agent_paths(agents)), host=bind, port=port, admin_token=admin_token or None
        )
        url = await dash.start()
        typer.echo(url)
        sys.stdout.flush()
        mode = "admin login enabled" if admin_token else "read-only (no --admin-token)"
        typer.echo(f"jetagents dashboard on {url} ({mode}); Ctrl-C to stop", err=True)
        await dash.wait()

    try:
        asyncio.run(go())
    except JetAgentsError as err:
        typer.echo(f"error: {err.code}: {err.message}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot listen on {bind}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None


# -- jetagents projection (ADR 0057): the commands live in _projection_cli.py ------------------
from ._projection_cli import projection_app  # noqa: E402 - kept apart from the commands above

app.add_typer(projection_app, name="projection")


# -- jetagents mcp (ADR 0048): the command lives in jetagents.mcp.command -------------------
from .mcp.command import mcp as _mcp_command  # noqa: E402 - kept apart from the commands above

app.command("mcp")(_mcp_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
