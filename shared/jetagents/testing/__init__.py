"""Test utilities for code built on jetagents: real ``nats-server`` processes (one node or a
cluster, on ports that cannot collide), a manual clock, an in-memory cluster store, the
host's ports in memory, and the deterministic simulation of a cluster of real hosts.

>>> from jetagents.testing import NatsServer
>>> async with NatsServer() as server:  # doctest: +SKIP
...     print(server.url)

>>> from jetagents.testing import HostNode, Simulation
>>> result = await Simulation(seed=7, factory=HostNode).run()  # doctest: +SKIP
"""

from .clock import ManualClock, wait_all_blocked
from .memory import MemoryStore
from .server import NatsCluster, NatsServer, find_nats_server, free_port
from .simhost import HostNode
from .simulation import SimConfig, Simulation, Violation
from .streams import MemoryBucket, MemoryEventStream, MemoryPublisher, MemoryWorkQueue

__all__ = [
    "HostNode",
    "ManualClock",
    "MemoryBucket",
    "MemoryEventStream",
    "MemoryPublisher",
    "MemoryStore",
    "MemoryWorkQueue",
    "NatsCluster",
    "NatsServer",
    "SimConfig",
    "Simulation",
    "Violation",
    "find_nats_server",
    "free_port",
    "wait_all_blocked",
]
