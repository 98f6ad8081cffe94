"""One error hierarchy for the client, the host and the wire.

::

    JetAgentsError                      retryable?
    ├── AgentTimeout                    yes  no reply within the deadline
    ├── Unavailable                     yes  NATS down, no host answering, stream refused
    │   └── PartitionError              yes  the cluster cannot reach quorum
    ├── FencedError                     yes  another host wrote the agent's log first
    ├── UnknownAgentType                no
    ├── UnknownAgent                    no   type requires spawn and this id has none
    ├── UnknownAction                   no
    ├── InvalidParams                   no
    ├── PayloadTooLarge                 no
    ├── MalformedCommand                no   not JSON, wrong shape, bad headers
    │   └── UnsupportedEncoding         no   an Agt-Encoding the host does not read (ADR 0043)
    ├── DeadlineExceeded                no   the command's deadline passed before or while it ran
    ├── ActionTimeout                   no   the action overran its time limit and was cancelled
    ├── NonDeterministic                no   a re-run reached a step its journal holds under another name
    │   └── JournalTooLong              no   an action's journal reached journal_entries_max (ADR 0042)
    ├── Deadlock                        no   a call would close a wait-for cycle (ADR 0042 section 7)
    ├── CallCycle                       no   a call came back along its chain to a non-re-entrant agent
    ├── CallTooDeep                     no   a call chain longer than call_path_max
    ├── AgentSuspended                  yes  a write to an agent whose action is suspended (policy reject)
    ├── SignalBufferFull                yes  a signal nobody waits for, and the agent's buffer is full
    ├── ActionCancelled                 no   the command was cancelled (``cancel``) while running or suspended
    ├── AgentDeleted                    no   the agent was deleted (``jetagents agent delete``, ADR 0052)
    ├── AgentQuarantined                no   the agent kept failing activation; an operator releases it (ADR 0053)
    ├── Throttled                       yes  over its CPU share (agent or type); retry after retry_after_s (ADR 0059)
    ├── PermissionDenied                no   the server refused the publish: this user may not use that subject
    ├── DomainError                     no   raised by an agent's action on purpose
    │   └── BudgetExceeded              no   a model call would exceed a token or cost budget
    └── InternalError                   no   the action raised something unexpected

Every error has a stable ``code`` that is what travels on the wire (see
``docs/wire-contract.md``); :func:`error_from_wire` turns a wire error back into the
typed exception.
"""

from __future__ import annotations

from typing import Any, ClassVar


class JetAgentsError(Exception):
    """Base of every jetagents error. ``retryable`` says whether trying again may help."""

    code: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.details is not None:
            out["details"] = self.details
        return out


class AgentTimeout(JetAgentsError):
    code = "timeout"
    retryable = True


class Unavailable(JetAgentsError):
    code = "unavailable"
    retryable = True


class PartitionError(Unavailable):
    code = "partition"


class FencedError(JetAgentsError):
    code = "fenced"
    retryable = True


class UnknownAgentType(JetAgentsError):
    code = "unknown_agent_type"


class UnknownAgent(JetAgentsError):
    code = "unknown_agent"


class UnknownAction(JetAgentsError):
    code = "unknown_action"


class InvalidParams(JetAgentsError):
    code = "invalid_params"


class PayloadTooLarge(JetAgentsError):
    code = "payload_too_large"


class MalformedCommand(JetAgentsError):
    code = "malformed"


class UnsupportedEncoding(MalformedCommand):
    """The body's ``Agt-Encoding`` names an encoding the host does not read (ADR 0043);
    ``details``: ``{"encoding", "supported"}``. Not retryable: send it plain or as ``zstd``."""

    code = "unsupported_encoding"


class DeadlineExceeded(JetAgentsError):
    code = "deadline_exceeded"


class ActionTimeout(JetAgentsError):
    """The action ran longer than its limit (``@action(timeout_s=...)``, the type's
    ``action_timeout_s`` or the host's) and was cancelled; none of its events were kept."""

    code = "action_timeout"


class InternalError(JetAgentsError):
    code = "internal"


class NonDeterministic(JetAgentsError):
    """A re-run of a journaled action reached a step its journal holds under another name
    (the code changed while the action was in flight, ADR 0042). Its journal stays open and
    blocked: closing it would make a later run repeat every side effect."""

    code = "nondeterministic"


class JournalTooLong(NonDeterministic):
    """An action reached more steps and waits than ``journal_entries_max`` allows one command
    (ADR 0042): blocked like a ``nondeterministic`` journal, so a loop that never ends stops
    before it fills the agent's log. ``details``: ``step``, ``position``, ``max``."""

    code = "journal_too_long"


class Deadlock(JetAgentsError):
    """A call would have queued behind an action that waits, through the call's path, on
    this very call (ADR 0042 section 7): refused at once instead of waiting for timeouts.
    ``details``: ``chain``, ``path`` (the agents in the cycle, oldest first) and
    ``waiting_on`` (the agent the receiver waits on)."""

    code = "deadlock"


class CallCycle(JetAgentsError):
    """A call came back along its own chain to an agent (or action) with re-entrancy off."""

    code = "call_cycle"


class CallTooDeep(JetAgentsError):
    """A call chain would name more agents than ``call_path_max``."""

    code = "call_too_deep"


class AgentSuspended(JetAgentsError):
    """A write command reached an agent whose action is suspended, and the action's
    ``while_suspended`` policy is ``reject`` (ADR 0042 section 4): try again later."""

    code = "agent_suspended"
    retryable = True


class SignalBufferFull(JetAgentsError):
    """A signal nobody waits for, and the agent already buffers ``signal_buffer_per_agent``."""

    code = "signal_buffer_full"
    retryable = True


class ActionCancelled(JetAgentsError):
    """The command was cancelled (ADR 0042 section 8). Raised inside a running action at
    its next step boundary (it may catch it and run compensating steps), and what the
    command's caller gets."""

    code = "cancelled"


class AgentDeleted(JetAgentsError):
    """The agent was deleted (a tombstone in ``agt_tomb``, ADR 0052): commands to it are
    refused, answered and acknowledged, never run and never dead-lettered."""

    code = "agent_deleted"


class AgentQuarantined(JetAgentsError):
    """The agent kept failing activation (its snapshot or log could not be read or applied) and
    is quarantined: its commands are dead-lettered until an operator releases it (ADR 0053)."""

    code = "agent_quarantined"


class Throttled(JetAgentsError):
    """The agent (or its whole type) used more CPU than its health policy allows (ADR 0059):
    refused before it ran; ``details.retry_after_s`` says when its share is back under."""

    code = "throttled"
    retryable = True


class PermissionDenied(JetAgentsError):
    """The server refused to take a publish of this connection (its user's permissions);
    the connection stays open. ``details.subject`` is the subject refused."""

    code = "permission_denied"


class DomainError(JetAgentsError):
    """Raised by an action to refuse a command; reaches the caller as the same type.

    ``reason`` is a short machine-readable name (``"insufficient_funds"``).

    >>> raise DomainError("insufficient_funds", "balance 5 < 10")  # doctest: +SKIP
    """

    code = "domain"

    def __init__(self, reason: str, message: str = "", *, details: Any = None) -> None:
        super().__init__(message or reason, details=details)
        self.reason = reason

    def to_wire(self) -> dict[str, Any]:
        out = super().to_wire()
        out["reason"] = self.reason
        return out


class BudgetExceeded(DomainError):
    """A model call was refused: the agent's or its tenant's token or cost budget would be
    exceeded (``jetagents.ai``, ADR 0047). ``details``: ``{"scope", "key", "limit", "spent",
    "unit"}``."""

    code = "budget_exceeded"

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__("budget_exceeded", message, details=details)


_BY_CODE: dict[str, type[JetAgentsError]] = {
    cls.code: cls
    for cls in (
        AgentTimeout,
        Unavailable,
        PartitionError,
        FencedError,
        UnknownAgentType,
        UnknownAgent,
        UnknownAction,
        InvalidParams,
        PayloadTooLarge,
        MalformedCommand,
        DeadlineExceeded,
        ActionTimeout,
        InternalError,
        NonDeterministic,
        JournalTooLong,
        Deadlock,
        CallCycle,
        CallTooDeep,
        AgentSuspended,
        SignalBufferFull,
        ActionCancelled,
        AgentDeleted,
        BudgetExceeded,
        AgentQuarantined,
        UnsupportedEncoding,
        Throttled,
        PermissionDenied,
    )
}


def error_from_wire(data: Any) -> JetAgentsError:
    """Rebuild the typed error from a wire ``error`` object."""
    if not isinstance(data, dict):
        return InternalError(f"unreadable error reply: {data!r}")
    code = str(data.get("code", "internal"))
    message = str(data.get("message", code))
    details = data.get("details")
    if code == DomainError.code:
        return DomainError(str(data.get("reason", "domain")), message, details=details)
    cls = _BY_CODE.get(code, InternalError)
    return cls(message, details=details)
