"""Test utilities for code built on jetagents: real ``nats-server`` processes (one node or a
cluster, on ports that cannot collide) and a manual clock.

>>> from jetagents.testing import NatsServer
>>> async with NatsServer() as server:  # doctest: +SKIP
...     print(server.url)
"""

from .._core.clock import ManualClock
from .server import NatsCluster, NatsServer, find_nats_server, free_port

__all__ = ["ManualClock", "NatsCluster", "NatsServer", "find_nats_server", "free_port"]
