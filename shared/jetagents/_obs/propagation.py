"""``traceparent`` propagation (W3C trace context) through NATS headers.

With an OpenTelemetry SDK configured, the current span's context is injected; without
one, a traceparent is still generated at the client and carried unchanged through the
host to the events and the reply, so one id correlates the whole path.
"""

from __future__ import annotations

import os
import random
import re

from opentelemetry import propagate, trace

from .._core.wire import TRACEPARENT, TRACESTATE

_rng = random.Random()  # our own: never disturbs (or is disturbed by) the global one
os.register_at_fork(after_in_child=_rng.seed)  # a forked child must not repeat the parent's ids
_bits = _rng.getrandbits
_TRACEPARENT_RE = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def new_traceparent() -> str:
    # random ids, as the OpenTelemetry SDK makes them (not secrets: no system call needed)
    return f"00-{_bits(128) or 1:032x}-{_bits(64) or 1:016x}-01"


def valid_traceparent(value: str | None) -> bool:
    # fullmatch: ``$`` would let a trailing newline through into the headers this host sends
    return value is not None and _TRACEPARENT_RE.fullmatch(value) is not None


def inject_current(headers: dict[str, str]) -> None:
    """Put the current trace context into ``headers``, generating one if none is active."""
    span = trace.get_current_span()
    if span.get_span_context().is_valid:
        propagate.inject(headers)
    if TRACEPARENT not in headers:
        headers[TRACEPARENT] = new_traceparent()


def carry_received(traceparent: str | None, tracestate: str | None, outgoing: dict[str, str]) -> None:
    """``carry_context`` where no span can be recording (no tracing SDK): the received
    context (a valid ``traceparent``) unchanged, without asking OpenTelemetry for the
    current span on every command."""
    if valid_traceparent(traceparent):
        outgoing[TRACEPARENT] = traceparent  # type: ignore[assignment]
        if tracestate:
            outgoing[TRACESTATE] = tracestate


def carry_context(traceparent: str | None, tracestate: str | None, outgoing: dict[str, str]) -> None:
    """The current span's context into ``outgoing`` when one records, else the received one
    (a valid ``traceparent``) unchanged."""
    span = trace.get_current_span()
    if span.get_span_context().is_valid and span.is_recording():
        propagate.inject(outgoing)
        return
    if valid_traceparent(traceparent):
        outgoing[TRACEPARENT] = traceparent  # type: ignore[assignment]
        if tracestate:
            outgoing[TRACESTATE] = tracestate
