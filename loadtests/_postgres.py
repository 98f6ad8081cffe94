"""A throwaway PostgreSQL cluster on loopback for benchmarks (Debian's ``postgresql`` package).

``PgCluster()`` runs ``initdb`` in a temporary directory and ``pg_ctl start`` on a free
127.0.0.1 port, trust authentication, no fsync tuning (the server's defaults: what DBOS users
get). As root the server runs as the ``postgres`` user (``initdb`` refuses root). ``stop()``
ends it and removes the directory. Install: ``apt-get install -y postgresql``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def pg_bin(name: str) -> str | None:
    """``initdb``/``pg_ctl`` on PATH or in Debian's versioned directory (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        for version in sorted(root.iterdir(), key=lambda p: p.name, reverse=True):
            candidate = version / "bin" / name
            if candidate.exists():
                return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    def __init__(self) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
        self._pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        self._data = data
        self._run([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -k {self.dir} -c max_connections=50"
        self._run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start"])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=120)

    def postmaster_pid(self) -> int:
        return int((self._data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        try:
            self._run([self._pg_ctl, "-D", str(self._data), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and its live children (PostgreSQL's backends are
    children of the postmaster; one that ended is not counted: connections are pooled)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after the command: state, ppid, ... utime is 14th of the line, 12th here
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total
