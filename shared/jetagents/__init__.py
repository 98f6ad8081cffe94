"""jetagents: distributed, stateful agents on NATS JetStream.

>>> from jetagents import Client, Counter  # doctest: +SKIP
>>> async with await Client.connect() as client:  # doctest: +SKIP
...     await client.proxy(Counter, "c1").increment(by=2)
"""

from ._agent import Agent, AgentContext, AgentSpec, Event, Registry, action, applies
from ._client import AgentRef, Client, Reply
from ._clock import Clock, ManualClock, SystemClock
from ._errors import (
    AgentTimeout,
    DeadlineExceeded,
    DomainError,
    FencedError,
    InternalError,
    InvalidParams,
    JetAgentsError,
    MalformedCommand,
    PartitionError,
    PayloadTooLarge,
    Unavailable,
    UnknownAction,
    UnknownAgent,
    UnknownAgentType,
)
from ._host import Host
from ._ids import AgentId, partition_of
from ._resilience import CircuitBreaker, RetryPolicy
from ._server import NatsServer
from ._settings import ClientSettings, HostSettings
from ._wire import Delivery, Priority, Subjects

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentContext",
    "AgentId",
    "AgentRef",
    "AgentSpec",
    "AgentTimeout",
    "CircuitBreaker",
    "Client",
    "ClientSettings",
    "Clock",
    "DeadlineExceeded",
    "Delivery",
    "DomainError",
    "Event",
    "FencedError",
    "Host",
    "HostSettings",
    "InternalError",
    "InvalidParams",
    "JetAgentsError",
    "MalformedCommand",
    "ManualClock",
    "NatsServer",
    "PartitionError",
    "PayloadTooLarge",
    "Priority",
    "Registry",
    "Reply",
    "RetryPolicy",
    "Subjects",
    "SystemClock",
    "Unavailable",
    "UnknownAction",
    "UnknownAgent",
    "UnknownAgentType",
    "__version__",
    "action",
    "applies",
    "partition_of",
]
