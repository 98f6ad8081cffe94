"""Test utilities for code built on jetagents: real ``nats-server`` processes (one node or a
cluster, on ports that cannot collide), a manual clock, an in-memory cluster store, and the
host's ports in memory.

>>> from jetagents.testing import NatsServer
>>> async with NatsServer() as server:  # doctest: +SKIP
...     print(server.url)
"""

from .clock import ManualClock, wait_all_blocked
from .memory import MemoryStore
from .server import NatsCluster, NatsServer, find_nats_server, free_port
from .streams import MemoryBucket, MemoryEventStream, MemoryPublisher

__all__ = [
    "ManualClock",
    "MemoryBucket",
    "MemoryEventStream",
    "MemoryPublisher",
    "MemoryStore",
    "NatsCluster",
    "NatsServer",
    "find_nats_server",
    "free_port",
    "wait_all_blocked",
]
