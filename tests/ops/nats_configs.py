"""Boot the NATS configs shipped in ``ops/nats/`` with the native nats-server binary.

The files are used as they are, except for what must change to run many servers on one
machine: listen addresses become free loopback ports, peer host names (``nats-2:6222``,
``east-1:7222``) become the matching loopback ports, and the store goes to a temp dir.
The secrets the configs read from the environment are random per boot.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from jetagents.testing.server import NatsCluster, NatsServer, child_preexec, find_nats_server, free_port
from tests.conftest import REPO

OPS_NATS = REPO / "ops" / "nats"
USERS = ("sys", "admin", "host", "client", "operator", "projector")
# the inbox prefixes the shipped accounts give each user (JETAGENTS_INBOX_PREFIX)
HOST_INBOX = "_INBOX.host"
CLIENT_INBOX = "_INBOX.client"
OPERATOR_INBOX = "_INBOX.operator"
PROJECTOR_INBOX = "_INBOX.projector"


@dataclass
class Node:
    name: str
    source: Path  # the shipped config this node runs
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)


def rewrite(text: str, node: Node, nodes: dict[str, Node], store: Path) -> str:
    text = text.replace("0.0.0.0:4222", f"127.0.0.1:{node.port}")
    text = text.replace("127.0.0.1:8222", f"127.0.0.1:{node.http_port}")
    text = text.replace("0.0.0.0:6222", f"127.0.0.1:{node.cluster_port}")
    text = text.replace("0.0.0.0:7222", f"127.0.0.1:{node.gateway_port}")
    text = re.sub(r'store_dir:\s*"[^"]*"', f'store_dir: "{store.as_posix()}"', text)

    def peer(m: re.Match[str]) -> str:
        other = nodes[m.group(2)]
        port = other.cluster_port if m.group(3) == "6222" else other.gateway_port
        return f"{m.group(1)}127.0.0.1:{port}"

    return re.sub(r"(nats(?:-route)?://)([a-z]+-\d):(6222|7222)", peer, text)


@dataclass
class BootedConfigs:
    """Servers running the shipped configs; ``url(user, node)`` has the credentials in it."""

    nodes: dict[str, Node]
    servers: dict[str, NatsServer]
    passwords: dict[str, str]

    def url(self, user: str, *names: str) -> str:
        pw = self.passwords[user]
        return ",".join(f"nats://{user}:{pw}@127.0.0.1:{self.nodes[n].port}" for n in names or self.nodes)

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()


def boot(tmp: Path, nodes: list[Node], timeout_s: float = 40.0, *, with_accounts: bool = False) -> BootedConfigs:
    """Start ``nodes``; ``with_accounts`` adds the shipped ``accounts.conf`` to a config that
    does not include it (``single.conf``: one node with the shipped users)."""
    by_name = {n.name: n for n in nodes}
    passwords = {u: secrets.token_hex(12) for u in USERS}
    conf_root = tmp / "conf"
    shutil.copytree(OPS_NATS, conf_root)  # includes resolve relative to each file, as shipped
    servers: dict[str, NatsServer] = {}
    booted = BootedConfigs(by_name, servers, passwords)
    try:
        for node in nodes:
            rel = node.source.relative_to(OPS_NATS)
            conf = (conf_root / rel).with_name(f"{node.name}.conf")
            text = rewrite(node.source.read_text(), node, by_name, tmp / node.name / "js")
            conf.write_text(text + ("\ninclude ./accounts.conf\n" if with_accounts else ""))
            env = dict(os.environ, NATS_SERVER_NAME=node.name)
            env.update({f"JETAGENTS_{u.upper()}_PASSWORD": pw for u, pw in passwords.items()})
            check = subprocess.run(
                [find_nats_server(), "-c", str(conf), "-t"], env=env, capture_output=True, text=True, timeout=30
            )
            assert check.returncode == 0, check.stdout + check.stderr
            server = NatsServer(data_dir=tmp / node.name, port=node.port, http_port=node.http_port, name=node.name)
            server.data_dir.mkdir(parents=True, exist_ok=True)
            with open(server.data_dir / "server.log", "ab") as log:
                server.proc = subprocess.Popen(
                    [find_nats_server(), "-c", str(conf)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=child_preexec,
                )
            servers[node.name] = server
        for server in servers.values():
            server.wait_ready(timeout_s)
        if len(servers) > 1:
            NatsCluster(data_dir=tmp, servers=list(servers.values())).wait_meta_leader(timeout_s)
    except BaseException:
        booted.stop()
        raise
    return booted


class Violations:
    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    async def wait_for(self, needle: str) -> None:
        """The server told this connection of a permissions violation mentioning ``needle``."""
        for _ in range(750):  # 15 s
            if any("permissions violation" in e.lower() and needle.lower() in e.lower() for e in self.errors):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {needle!r}: {self.errors}")
