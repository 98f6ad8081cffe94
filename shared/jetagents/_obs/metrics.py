"""The host's counters, from one source (ADR 0040).

``Metrics.inc(name, n, **attributes)`` counts in ``stats`` (what the health endpoint,
``jetagents status``, the micro service's stats and the tests read, by these names) and adds to
the OpenTelemetry counter of the same thing, when there is one, in the same call: the two can
no longer drift apart. Attributes are given by short names (``agent_type=...``) and go to the
OpenTelemetry counter only; ``stats`` counts totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .._core.latency import LatencyWindow
from .telemetry import ACTION, AGENT_TYPE, DEDUP_SOURCE, DELIVERY, ERROR_TYPE, HostTelemetry

# the host's counters, in the order its logs and status show them
STATS = (
    "processed",
    "duplicates",
    "dead_letters",
    "activations",
    "passivations",
    "fenced",
    "naks",
    "retries",
    "consumers_recreated",
    "dead_letters_lost",
    "replies_refused",
    "action_timeouts",
    "agent_busy",
    "loop_blocked",
    "calls_dropped",
    "stranded_swept",
    # pub-sub fan-out (ADR 0049): topic messages handled, commands sent, refused, dead-lettered
    "pubsub_messages",
    "pubsub_deliveries",
    "pubsub_refused",
    "pubsub_dead_letters",
    # supervision (ADR 0053): agents quarantined, agents rebuilt from an older snapshot or a
    # shorter log than they had
    "quarantines",
    "restores",
    # health (ADR 0059): commands refused because their agent or type is over its CPU share;
    # agents restarted or passivated by their type's health policy
    "throttled",
    "health_restarts",
    "health_passivations",
    # deletion (ADR 0052): agents the leader's sweep purged; its runs refused or failed
    "agents_purged",
    "purge_sweep_failed",
    # retention (ADR 0052): logs the leader's sweep cut; its runs refused or failed
    "logs_retained",
    "retention_sweep_failed",
)

# short attribute names at the call site -> OpenTelemetry attribute keys
_ATTRIBUTES = {
    "agent_type": AGENT_TYPE,
    "action": ACTION,
    "error": ERROR_TYPE,
    "delivery": DELIVERY,
    "source": DEDUP_SOURCE,
}


class Metrics:
    """The counters of one host."""

    __slots__ = ("_counters", "_counts", "_tel", "latency", "stats")

    def __init__(self, tel: HostTelemetry) -> None:
        self._counts: dict[str, int] = dict.fromkeys(STATS, 0)
        # read-only: every count goes through inc()
        self.stats: Mapping[str, int] = MappingProxyType(self._counts)
        self._tel = tel
        self.latency = LatencyWindow()  # the last commands' receipt-to-answer times, for heartbeats
        self._counters: dict[str, Any] = {
            "duplicates": tel.duplicates,
            "activations": tel.activations,
            "passivations": tel.passivations,
            "dead_letters": tel.dead_letters,
            "loop_blocked": tel.loop_blocks,
            "action_timeouts": tel.action_timeouts,
            "agent_busy": tel.agent_busy,
        }

    def add_counter(self, name: str, counter: Any) -> None:
        """The OpenTelemetry counter that ``inc(name)`` also adds to (a part's own)."""
        self._counters[name] = counter

    def processed(self, elapsed_s: float) -> None:
        """``inc("processed")`` (a count without an OpenTelemetry counter: the commands
        metric says it, by outcome) and its receipt-to-answer time, in one call: it is
        every command's."""
        self._counts["processed"] += 1
        self.latency.record(elapsed_s)

    def inc(self, name: str, n: int = 1, **attributes: str) -> None:
        """Count ``n`` more ``name`` (also from the loop watchdog's thread: the SDK's
        counters are thread-safe)."""
        self._counts[name] += n
        counter = self._counters.get(name)
        if counter is not None and self._tel.metering:
            counter.add(n, {_ATTRIBUTES[k]: v for k, v in attributes.items()})


# -- model calls (jetagents.ai), OpenTelemetry GenAI semantic conventions --------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
# the conventions' advisory buckets: tokens in powers of 4, seconds from 10 ms to 82 s
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
GEN_AI_DURATION_BUCKETS_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


class GenAiMetrics:
    """``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration`` of the model
    calls made by durable pydantic-ai agents, and totals by model (``totals``) for status
    pages and tests. Attributes are bounded by configuration (model names), never by data."""

    __slots__ = ("_tel", "duration", "tokens", "totals")

    def __init__(self, meter_provider: Any = None) -> None:
        from .telemetry import Telemetry

        self._tel = Telemetry("jetagents.ai", meter_provider=meter_provider)
        m = self._tel.meter
        self.tokens = m.create_histogram(
            "gen_ai.client.token.usage",
            "{token}",
            "tokens used by model calls, by model and token type (input, output)",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.duration = m.create_histogram(
            "gen_ai.client.operation.duration",
            "s",
            "duration of one model call (each try)",
            explicit_bucket_boundaries_advisory=GEN_AI_DURATION_BUCKETS_S,
        )
        self.totals: dict[str, dict[str, int]] = {}

    def call(
        self, model: str, provider: str, input_tokens: int, output_tokens: int, elapsed_s: float, error: str = ""
    ) -> None:
        t = self.totals.setdefault(model, {"calls": 0, "errors": 0, "input": 0, "output": 0})
        t["calls"] += 1
        t["input"] += input_tokens
        t["output"] += output_tokens
        if error:
            t["errors"] += 1
        if not self._tel.metering:
            return
        base = {GEN_AI_OPERATION_NAME: "chat", GEN_AI_PROVIDER_NAME: provider, GEN_AI_REQUEST_MODEL: model}
        self.duration.record(elapsed_s, {**base, ERROR_TYPE: error} if error else base)
        if not error:
            self.tokens.record(input_tokens, {**base, GEN_AI_TOKEN_TYPE: "input"})
            self.tokens.record(output_tokens, {**base, GEN_AI_TOKEN_TYPE: "output"})
