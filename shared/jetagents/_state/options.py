"""What a caller of the shared state sets and gets back: the options, the partition strategy,
and the results of reads and writes (all public through ``jetagents``)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .._core.retry import RetryPolicy

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
Consistency = Literal["strong", "eventual", "session", "crdt"]


class PartitionStrategy(enum.StrEnum):
    """What state writes do when the cluster cannot reach quorum."""

    PAUSE = "pause"  # refuse reads and writes that need the server: PartitionError
    DEGRADED = "degraded"  # serve cached reads (marked stale), refuse writes
    CONTINUE = "continue"  # accept CRDT (and eventual) writes locally, reconcile after healing


class StateOptions(BaseSettings):
    """Options of a :class:`SharedState` (also from ``JETAGENTS_STATE_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="JETAGENTS_STATE_", extra="ignore")

    replicas: int = Field(default=1, ge=1, le=5, description="R3 on a 3-node cluster for linearizable strong state")
    partition: PartitionStrategy = PartitionStrategy.PAUSE
    resolver: str = Field(default="lww", description="conflict resolution of eventual/session writes")
    op_timeout_s: float = Field(default=2.0, gt=0, description="one NATS round trip")
    max_attempts: int = Field(default=200, ge=1, description="CAS attempts of one strong update")
    retry_base_s: float = Field(default=0.002, gt=0)
    retry_max_s: float = Field(default=0.25, gt=0)
    probe_interval_s: float = Field(default=0.5, gt=0, description="staleness and partition-heal probes")
    linearizable_reads: bool = Field(
        default=False,
        description="strong reads confirmed by a quorum write (a read barrier); see StrongState.get",
    )
    max_value_bytes: int = Field(default=1024 * 1024, ge=1024)

    def cas_retry(self) -> RetryPolicy:
        """The jittered backoff between CAS attempts (and linearizable re-reads)."""
        return RetryPolicy(attempts=self.max_attempts, base_s=self.retry_base_s, max_s=self.retry_max_s)

    def probe_retry(self) -> RetryPolicy:
        """The wait of the eventual propagator after its n-th failure in a row: one more probe
        interval each time, at most 2 s."""
        return RetryPolicy(base_s=self.probe_interval_s, max_s=2.0, linear=True, jitter=False)


def validate_key(key: str) -> str:
    if not _KEY_RE.match(key) or len(key) > 256:
        raise ValueError(f"invalid state key {key!r}: dot-separated tokens of [A-Za-z0-9_-]")
    return key


@dataclass(slots=True)
class Read:
    """What a read returns. ``revision`` is the KV revision the value comes from (0: none);
    ``staleness_s`` bounds how old a cached view may be; ``stale`` marks a read served from
    memory because the cluster was unreachable; ``siblings`` holds concurrent values kept by
    the ``siblings`` resolver (then ``value`` is the latest of them)."""

    key: str
    value: Any
    revision: int
    source: Literal["server", "cache", "local"]
    staleness_s: float | None = None
    stale: bool = False
    siblings: list[Any] = field(default_factory=list)

    @property
    def conflict(self) -> bool:
        return len(self.siblings) > 1


@dataclass(slots=True)
class WriteResult:
    key: str
    value: Any
    revision: int  # 0 while only queued locally
    conflicts: int = 0  # CAS retries this write needed
    queued: bool = False  # accepted locally during a partition, not yet on the server


@dataclass(slots=True)
class StateStats:
    """Counters a benchmark or an operator reads."""

    writes: int = 0
    conflicts: int = 0  # CAS attempts refused because someone wrote first
    lost_writes: int = 0  # writes overwritten by one that had not seen them (see write_versioned)
    partition_refusals: int = 0
    queued: int = 0
    reconciled: int = 0
    read_barriers: int = 0  # barriers published by linearizable reads (shared by concurrent ones)
