"""Per-agent health (ADR 0059): what a type allows its agents, and the arithmetic of a CPU share.

A ``HealthPolicy`` is declared on an agent class (``Agent.health``) or given per type in
``HostSettings.health`` (the settings win: an operator tunes a deployment without a release).
It bounds two things the host measures:

* **CPU share**: CPU seconds per wall second spent in the type's actions on one host, as an
  exponentially decayed sum (``Decayed``; time constant ``window_s``): an agent's own share
  (``cpu_share``) and its type's total on the host (``type_cpu_share``). Over it, the agent
  (or the whole type) is throttled, passivated or restarted (``on_cpu``).
* **Instance memory**: the bytes of the objects an agent instance holds besides its state
  (its own attributes, measured every ``memory_every`` commands). Over ``memory_bytes`` the
  agent is restarted (instance dropped, state rebuilt from its log) or passivated
  (``on_memory``). The state is not bounded here: a restart rebuilds the same state.

A passivation or a restart of one agent happens at most once per ``min_interval_s``, so a
policy that does not cure the cause does not loop.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Decayed", "HealthPolicy"]


class HealthPolicy(BaseModel):
    """The limits of one agent type's health, and what the host does past them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_share: float | None = Field(
        default=None, gt=0, description="CPU seconds per second one agent's actions may use (1.0: a whole core)"
    )
    type_cpu_share: float | None = Field(
        default=None, gt=0, description="CPU seconds per second all of the type's actions on one host may use"
    )
    on_cpu: Literal["throttle", "passivate", "restart"] = Field(
        default="throttle",
        description="an agent over cpu_share: its commands refused 'throttled' (retryable, retry_after_s) "
        "until its share is under the limit again; or passivated, or restarted; a type over type_cpu_share "
        "is always throttled",
    )
    memory_bytes: int | None = Field(
        default=None, ge=1024, description="bytes one agent instance may hold besides its state"
    )
    on_memory: Literal["restart", "passivate"] = Field(
        default="restart", description="an agent over memory_bytes: restarted (rebuilt from its log) or passivated"
    )
    memory_every: int = Field(default=16, ge=1, description="an instance's size is measured every this many commands")
    window_s: float = Field(default=10.0, gt=0, description="time constant of the decayed CPU sums")
    min_interval_s: float = Field(
        default=30.0, ge=0, description="at most one passivation or restart of an agent per this many seconds"
    )

    @property
    def measures_cpu(self) -> bool:
        return self.cpu_share is not None or self.type_cpu_share is not None


class Decayed:
    """A sum that decays exponentially with time constant ``tau_s``: for a steady rate r
    added per second it settles at ``r * tau_s``, so ``share() = sum / tau_s`` reads r."""

    __slots__ = ("at", "tau_s", "value")

    def __init__(self, tau_s: float) -> None:
        self.tau_s = tau_s
        self.value = 0.0
        self.at = 0.0

    def _decay(self, now: float) -> float:
        if now > self.at:
            self.value *= math.exp((self.at - now) / self.tau_s)
            self.at = now
        return self.value

    def add(self, amount: float, now: float) -> None:
        """Add ``amount`` (a negative one corrects an earlier estimate; never below 0)."""
        self.value = max(0.0, self._decay(now) + amount)

    def share(self, now: float) -> float:
        return self._decay(now) / self.tau_s

    def under_in(self, limit: float, now: float) -> float:
        """Seconds until ``share`` falls to ``limit`` with nothing added (0: it is under)."""
        value = self._decay(now)
        floor = limit * self.tau_s
        if value <= floor:
            return 0.0
        return self.tau_s * math.log(value / floor)
