"""Test utilities for code built on jetagents: real ``nats-server`` processes (one node or a
cluster, on ports that cannot collide), a manual clock and an in-memory cluster store.

>>> from jetagents.testing import NatsServer
>>> async with NatsServer() as server:  # doctest: +SKIP
...     print(server.url)
"""

from .._core.clock import ManualClock
from .memory import MemoryStore
from .server import NatsCluster, NatsServer, find_nats_server, free_port

__all__ = ["ManualClock", "MemoryStore", "NatsCluster", "NatsServer", "find_nats_server", "free_port"]
