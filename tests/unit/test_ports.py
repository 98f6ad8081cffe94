"""free_port(): the ports test servers listen on are reserved, not guessed.

Asking the kernel for a free port and handing the number on races with every other
process on the machine (a node once got the same port for its client and its cluster
listener). A reserved port lies below the kernel's ephemeral range and is locked against
every other process that reserves ports the same way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jetagents.testing.server import NatsCluster, NatsServer, _ephemeral_low, free_port

_CHILD = """
import sys
from jetagents.testing.server import free_port
ports = [free_port() for _ in range(int(sys.argv[1]))]
print(" ".join(map(str, ports)), flush=True)
sys.stdin.read()  # hold the reservations until the parent is done
"""


def test_reserved_ports_are_outside_the_kernels_ephemeral_range() -> None:
    low = _ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert all(1024 < p < low for p in ports), (low, ports)
    assert len(set(ports)) == len(ports)


def test_a_port_reserved_by_a_live_process_is_not_handed_out_again() -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, "300"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        theirs: list[int] = []
        for child in children:
            assert child.stdout is not None
            theirs += [int(p) for p in child.stdout.readline().split()]
        assert len(theirs) == 900
        mine = [free_port() for _ in range(300)]
        everyone = theirs + mine
        assert len(set(everyone)) == len(everyone), "two processes were given the same port"
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)


def test_servers_and_cluster_nodes_get_distinct_reserved_ports(tmp_path: Path) -> None:
    low = _ephemeral_low()
    cluster = NatsCluster(data_dir=tmp_path / "c", size=3)
    single = NatsServer(data_dir=tmp_path / "s")
    ports = [single.port, single.http_port]
    for node in cluster.servers:
        ports += [node.port, node.http_port, node.cluster_port]
    assert len(set(ports)) == len(ports) == 11
    assert all(p < low for p in ports)
