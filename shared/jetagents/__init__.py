"""jetagents: distributed, stateful agents on NATS JetStream.

>>> from jetagents import Client
>>> from jetagents.examples import Counter
>>> async with await Client.connect() as client:  # doctest: +SKIP
...     await client.proxy(Counter, "c1").increment(by=2)
"""

from ._client.client import AgentRef, AgentStream, Client, Reply
from ._client.coordination import Lease
from ._client.events import EventTail
from ._client.inspection import Inspector
from ._client.lifecycle import Lifecycle
from ._client.projection import ProjectionRunner
from ._core.agent import Agent, AgentContext, AgentSpec, Event, Registry, action, applies
from ._core.clock import Clock, SystemClock
from ._core.coordination import BarrierTimeout, CacheTimeout, LeaseBusy, LeaseLost
from ._core.crdt import GCounter, GSet, LWWMap, LWWRegister, ORMap, ORSet, PNCounter
from ._core.errors import (
    ActionCancelled,
    ActionTimeout,
    AgentDeleted,
    AgentQuarantined,
    AgentSuspended,
    AgentTimeout,
    BudgetExceeded,
    CallCycle,
    CallTooDeep,
    DeadlineExceeded,
    Deadlock,
    DomainError,
    FencedError,
    InternalError,
    InvalidParams,
    JetAgentsError,
    JournalTooLong,
    MalformedCommand,
    NonDeterministic,
    PartitionError,
    PayloadTooLarge,
    PermissionDenied,
    SignalBufferFull,
    Throttled,
    Unavailable,
    UnknownAction,
    UnknownAgent,
    UnknownAgentType,
    UnsupportedEncoding,
)
from ._core.health import HealthPolicy
from ._core.ids import AgentId, partition_of
from ._core.journal import step_key
from ._core.logtail import LogCommit, LogEvent
from ._core.outstream import StreamReset
from ._core.projection import Projection, ProjectionView, on
from ._core.pubsub import Message, Subscription, subscribe
from ._core.retry import CircuitBreaker, RetryPolicy
from ._core.upcast import IncompatibleSchema, upcaster
from ._core.vclock import CustomResolver, KeepSiblings, LastWriterWins, SemanticMerge, VectorClock, Versioned
from ._core.wire import Delivery, Priority, Subjects
from ._host.host import Host
from ._settings import ClientSettings, HostSettings
from ._state.layers import Cached, Local, Shared, state_layers
from ._state.options import PartitionStrategy, Read, StateOptions, WriteResult
from ._state.session import Session
from ._state.store import SharedState
from ._version import __version__
from .testing.clock import ManualClock
from .testing.server import NatsServer

__all__ = [
    "ActionCancelled",
    "ActionTimeout",
    "Agent",
    "AgentContext",
    "AgentDeleted",
    "AgentId",
    "AgentQuarantined",
    "AgentRef",
    "AgentSpec",
    "AgentStream",
    "AgentSuspended",
    "AgentTimeout",
    "BarrierTimeout",
    "BudgetExceeded",
    "CacheTimeout",
    "Cached",
    "CallCycle",
    "CallTooDeep",
    "CircuitBreaker",
    "Client",
    "ClientSettings",
    "Clock",
    "CustomResolver",
    "DeadlineExceeded",
    "Deadlock",
    "Delivery",
    "DomainError",
    "Event",
    "EventTail",
    "FencedError",
    "GCounter",
    "GSet",
    "HealthPolicy",
    "Host",
    "HostSettings",
    "IncompatibleSchema",
    "Inspector",
    "InternalError",
    "InvalidParams",
    "JetAgentsError",
    "JournalTooLong",
    "KeepSiblings",
    "LWWMap",
    "LWWRegister",
    "LastWriterWins",
    "Lease",
    "LeaseBusy",
    "LeaseLost",
    "Lifecycle",
    "Local",
    "LogCommit",
    "LogEvent",
    "MalformedCommand",
    "ManualClock",
    "Message",
    "NatsServer",
    "NonDeterministic",
    "ORMap",
    "ORSet",
    "PNCounter",
    "PartitionError",
    "PartitionStrategy",
    "PayloadTooLarge",
    "PermissionDenied",
    "Priority",
    "Projection",
    "ProjectionRunner",
    "ProjectionView",
    "Read",
    "Registry",
    "Reply",
    "RetryPolicy",
    "SemanticMerge",
    "Session",
    "Shared",
    "SharedState",
    "SignalBufferFull",
    "StateOptions",
    "StreamReset",
    "Subjects",
    "Subscription",
    "SystemClock",
    "Throttled",
    "Unavailable",
    "UnknownAction",
    "UnknownAgent",
    "UnknownAgentType",
    "UnsupportedEncoding",
    "VectorClock",
    "Versioned",
    "WriteResult",
    "__version__",
    "action",
    "applies",
    "on",
    "partition_of",
    "state_layers",
    "step_key",
    "subscribe",
    "upcaster",
]
