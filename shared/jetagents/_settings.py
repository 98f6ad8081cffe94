"""Settings from flags and ``JETAGENTS_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._core.health import HealthPolicy
from ._core.ids import validate_reply_prefix


def _default_host_id() -> str:
    raw = f"{socket.gethostname()}-{os.getpid()}"
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in raw)[:64]


class CommonSettings(BaseSettings):
    # populate_by_name: fields read from the environment under another name (``loop``) are
    # still given by their own name in code and flags
    model_config = SettingsConfigDict(env_prefix="JETAGENTS_", extra="ignore", populate_by_name=True)

    nats_url: str = "nats://127.0.0.1:4222"
    subject_root: str = Field(default="agt", pattern=r"^[A-Za-z0-9_-]+$")
    partitions: int = Field(default=64, ge=1, le=4096, description="fixed at cluster creation")
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    inbox_prefix: str = Field(
        default="_INBOX",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="subject prefix of every inbox this connection makes (the shipped accounts: _INBOX.<user>)",
    )


class ClientSettings(CommonSettings):
    request_timeout_s: float = Field(default=10.0, gt=0)
    retry_attempts: int = Field(default=4, ge=1, le=100)
    retry_base_s: float = Field(default=0.05, gt=0)
    retry_max_s: float = Field(default=2.0, gt=0)
    breaker_failures: int = Field(default=20, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)
    compression: bool = Field(
        default=False,
        description="zstd-compress command bodies of at least compress_min_bytes (Agt-Encoding) and accept"
        " compressed replies (Agt-Accept-Encoding); per call: compress=True/False (ADR 0043)",
    )
    compress_min_bytes: int = Field(default=16 * 1024, ge=1, description="smaller bodies go plain")


class WorkerPool(BaseModel):
    """A bulkhead: the agent types whose actions only this pool's workers run (issue 17)."""

    model_config = ConfigDict(extra="forbid")

    types: list[str] = Field(min_length=1, description="agent types served by this pool only")
    workers: int = Field(ge=1, le=100_000, description="their actions running at once")
    queue_max: int = Field(
        default=64,
        ge=0,
        description="their commands waiting for a worker; more are refused early: calls get 'unavailable'"
        " (reason pool_saturated, retryable), durable commands are handed back (-NAK with delay)",
    )


class HostSettings(CommonSettings):
    host_id: str = Field(default_factory=_default_host_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    agents: list[str] = Field(
        default_factory=list,
        description="import paths 'module:attr' of agent classes or lists of them; none by default (a host "
        "started with none refuses to start); 'jetagents.examples:EXAMPLE_AGENTS' serves the examples",
    )
    replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    ack_wait_s: float = Field(default=10.0, gt=0)
    max_deliver: int = Field(default=5, ge=1, le=1000, description="attempts of a failing action before dead-lettering")
    max_redeliveries: int = Field(default=50, ge=1, description="server redeliveries before giving up (crash loops)")
    membership: Literal["ring", "static"] = Field(
        default="ring", description="ring: hosts share partitions through the ring in KV; static: host_index/host_count"
    )
    host_index: int = Field(default=0, ge=0, description="static membership: this host owns p % host_count == index")
    host_count: int = Field(default=1, ge=1)
    capacity: float = Field(default=1.0, gt=0, description="relative weight of this host in the ring")
    tags: list[str] = Field(default_factory=list, description="resource tags advertised to the cluster (gpu, ...)")
    heartbeat_s: float = Field(default=0.4, gt=0)
    member_ttl_s: float = Field(default=2.0, ge=1.0, description="a host silent this long leaves the cluster")
    lease_ttl_s: float = Field(default=2.0, ge=1.0, description="the leader's lease")
    cluster_tick_s: float = Field(default=0.25, gt=0)
    rebalance_max_moves: int = Field(default=8, ge=1, description="partitions in transit at once while rebalancing")
    load_factor: float = Field(default=1.25, ge=1.0, description="no host owns more than this times its share")
    # resources and placement by load (ADR 0060), rebalancing by load (ADR 0044)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="quantities this host offers to agent types that declare resources (cpu, memory_mb, gpu, "
        "llm_tokens_per_min, ...); cpu and memory_mb default to the machine's",
    )
    load_weights: dict[str, float] = Field(
        default_factory=lambda: {"cpu": 0.4, "memory": 0.4, "network": 0.2},
        description="the load score: weights of the measured cpu, memory and network fractions",
    )
    load_window_s: float = Field(default=5.0, gt=0, description="measured rates (CPU, commands, bytes) span this")
    load_network_bytes_per_s: float = Field(
        default=12_500_000, gt=0, description="command bytes per second that count as a full network (fraction 1)"
    )
    placement_eps: float = Field(
        default=0.25, ge=0, description="bounded loads: no host takes a placement above (1 + eps) x the average"
    )
    placement_release_s: float = Field(
        default=30.0, gt=0, description="a placed agent out of memory this long gives its reservation back"
    )
    rebalance_interval_s: float = Field(
        default=5.0, ge=0, description="the leader weighs the hosts' load this often and moves partitions; 0: never"
    )
    rebalance_threshold: float = Field(default=0.25, ge=0, description="hot: load score above mean x (1 + this)")
    rebalance_min_gap: float = Field(default=0.03, ge=0, description="... and above mean + this (idle noise)")
    rebalance_persist: int = Field(default=2, ge=1, description="intervals a host stays hot before a move")
    rebalance_moves: int = Field(default=2, ge=2, description="partitions moved per interval (a swap moves two)")
    rebalance_cooldown: int = Field(default=12, ge=0, description="intervals a moved partition stays put")
    handoff_timeout_s: float = Field(default=45.0, gt=0, description="take a partition from a live owner after this")
    ready_timeout_s: float = Field(default=15.0, gt=0, description="start() waits this long for its partitions")
    max_ack_pending: int = Field(default=1024, ge=1)
    max_inflight: int = Field(default=1024, ge=1, description="host-wide commands received, not finished")
    max_inflight_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="host-wide bytes of the bodies of commands received, not finished (calls beyond it: overloaded)",
    )
    high_lane_reserve: int = Field(
        default=64,
        ge=1,
        description="commands (and largest bodies) the high-priority lane may take in beyond max_inflight(_bytes),"
        " so a host full of normal commands still pulls high ones (ADR 0058)",
    )
    compress_min_bytes: int = Field(
        default=16 * 1024,
        ge=0,
        description="replies at least this large are sent zstd-compressed (Agt-Encoding) to a sender that"
        " accepts it (Agt-Accept-Encoding: zstd); 0: never (ADR 0043)",
    )
    workers: int = Field(default=256, ge=1, le=100_000, description="agents processed at once")
    pools: dict[str, WorkerPool] = Field(
        default_factory=dict,
        description="bulkheads, name -> {types, workers, queue_max}: the listed types run on their pool's"
        " workers only, so a hung or slow type takes neither the shared workers nor another pool's;"
        " other types share 'workers'",
    )
    health: dict[str, HealthPolicy] = Field(
        default_factory=dict,
        description="per agent type: CPU share and instance memory limits and what is done past them (throttle,"
        " passivate, restart; ADR 0059); wins over the class's Agent.health",
    )
    health_measure_all: bool = Field(
        default=False,
        description="measure CPU time and instance memory of every type (types with a health policy always are);"
        " action wall time is always measured",
    )
    max_mailbox_per_agent: int = Field(
        default=128,
        ge=1,
        description="commands of one agent waiting behind its running one; more: calls get 'agent busy',"
        " durable commands are handed back (-NAK with delay)",
    )
    action_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="default time limit of one action run (per type: Agent.action_timeout_s; per action:"
        " @action(timeout_s=...)); an action past it is cancelled, its events discarded",
    )
    loop_block_threshold_s: float = Field(
        default=0.5, ge=0, description="event-loop lag counted and logged as a blocked loop; 0: no watchdog"
    )
    eager_start: bool = Field(
        default=True, description="run a command for an idle agent as it arrives, not one loop turn later"
    )
    pull_batch: int = Field(default=64, ge=1, le=10_000)
    pull_expires_s: float = Field(default=5.0, ge=1.0)
    idle_passivate_s: float = Field(default=300.0, gt=0)
    stranded_sweep_s: float = Field(
        default=10.0,
        ge=0,
        description="how often the leader looks for commands the stream stores but never delivers "
        "(a subject with 0x7f or a wildcard token; ADR 0039); 0: never",
    )
    stranded_grace_s: float = Field(
        default=30.0, ge=0, description="the sweep leaves commands younger than this to the partition consumers"
    )
    max_active_agents: int = Field(default=100_000, ge=1)
    snapshot_every: int = Field(default=100, ge=1)
    snapshot_history: int = Field(
        default=3,
        ge=1,
        le=64,
        description="snapshots kept per agent (KV history of the snapshot bucket; a smaller one is raised to "
        "it when a host starts): an unusable latest one falls back to an older one (ADR 0053)",
    )
    dedup_records_per_agent: int = Field(default=256, ge=1)
    quarantine_after: int = Field(
        default=5,
        ge=0,
        description="failed activations in a row (unreadable or unappliable log or snapshot) after which "
        "an agent is quarantined: its commands dead-lettered agent_quarantined until an operator "
        "releases it (ADR 0053); 0: never",
    )
    # signals sent to an agent with nobody waiting for them, kept for a later wait (ADR 0042 §3);
    # past it a signal is refused signal_buffer_full
    signal_buffer_per_agent: int = Field(default=64, ge=0)
    # a host resuming suspended or parked work first arms a server schedule that fires a kick
    # this long after (ADR 0042 §3): if it dies in the middle, the next host runs the rest
    kick_after_s: float = Field(default=30.0, gt=0)
    # steps and waits one command may journal (ADR 0042); the next one blocks it journal_too_long
    journal_entries_max: int = Field(default=10_000, ge=1)
    drain_grace_s: float = Field(default=30.0, ge=0)
    health_port: int | None = Field(
        default=None, ge=0, le=65535, description="HTTP port of /livez and /readyz; unset: no HTTP server"
    )
    health_bind: str = Field(
        default="127.0.0.1",
        description="address the health server listens on; 0.0.0.0 where probes come from outside (containers)",
    )
    op_timeout_s: float = Field(default=5.0, gt=0, description="timeout of one NATS round trip")
    loop: Literal["asyncio", "uvloop"] = Field(
        default="uvloop",
        validation_alias=AliasChoices("JETAGENTS_EVENT_LOOP", "JETAGENTS_LOOP"),
        description="the host process's event loop (JETAGENTS_EVENT_LOOP; JETAGENTS_LOOP, the older name, too): "
        "uvloop, measurably cheaper per command (ADR 0041), or asyncio; without uvloop installed: asyncio",
    )
    out_flush_ms: int = Field(
        default=20,
        ge=0,
        le=10_000,
        description="a streaming action's chunks are gathered this long into one AGT_OUT message (ADR 0042)",
    )
    out_max_message_bytes: int = Field(
        default=256 * 1024, ge=1024, description="the largest AGT_OUT chunk message (at most max_payload_bytes)"
    )
    out_chunk_ttl_s: int = Field(default=600, ge=1, description="how long streamed chunks stay readable (Nats-TTL)")
    out_result_ttl_s: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="how long a stream's end message (the reply) stays readable; AGT_OUT's max_age when created",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    payload_ref_threshold_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="a step value, event data, commit result or snapshot state whose JSON is larger is stored in "
        "the Object Store bucket agt_blobs and referenced by its sha256 (ADR 0042 section 9)",
    )
    blob_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0, description="per-host LRU of blobs read or written")
    purge_sweep_s: float = Field(
        default=60.0,
        ge=0,
        description="how often the cluster leader purges deleted agents past their grace period (ADR 0052, the "
        "code of `jetagents purge`); 0: never (an operator runs `jetagents purge`)",
    )
    purge_nats_url: str = Field(
        default="",
        description="the connection the leader purges with: the operator user's under ops/nats/accounts.conf "
        "(hosts may not purge logs); empty: the host's own connection",
    )
    purge_inbox_prefix: str = Field(
        default="_INBOX.operator",
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="the inbox prefix of the purge_nats_url connection (its user's, as inbox_prefix)",
    )
    retention_sweep_s: float = Field(
        default=300.0,
        ge=0,
        description="how often the cluster leader applies retention to its types that declare keep_snapshots "
        "(ADR 0052, the code of `jetagents agent purge`), over purge_nats_url like the purge; 0: never",
    )
    call_path_max: int = Field(
        default=16,
        ge=1,
        le=64,
        description="agents a call chain may pass through (Agt-Call-Path); a longer chain fails with call_too_deep",
    )
    reply_prefixes: list[str] = Field(
        default_factory=lambda: ["_INBOX."],
        min_length=1,
        description="a host answers only on subjects under these (never '$' subjects nor the subject root)",
    )

    @model_validator(mode="after")
    def _check_pools(self) -> HostSettings:
        seen: dict[str, str] = {}
        for name, pool in self.pools.items():
            for t in pool.types:
                if t in seen:
                    raise ValueError(f"agent type {t!r} is in two worker pools: {seen[t]!r} and {name!r}")
                seen[t] = name
        return self

    @model_validator(mode="after")
    def _check_reply_prefixes(self) -> HostSettings:
        for prefix in self.reply_prefixes:
            validate_reply_prefix(prefix, self.subject_root)
        if not any(f"{self.inbox_prefix}.".startswith(p) for p in self.reply_prefixes):
            # hosts answer each other on their own inboxes
            raise ValueError(f"inbox_prefix {self.inbox_prefix!r} is under none of the reply prefixes")
        return self
