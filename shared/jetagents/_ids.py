"""Agent addresses, NATS-safe tokens and the partition function.

The partition of an agent is NATS's own ``partition(P, 1, 2)`` subject-mapping function:
FNV-1a (32 bit) over the type token followed directly by the id token (no separator),
modulo ``P``. The server computes the same value in the ``AGT_CMD`` stream's subject
transform, so a client may compute it locally and agree with the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def validate_token(value: str, what: str = "token") -> str:
    """Return ``value`` if it is a NATS-safe subject token, else raise ``ValueError``."""
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-128 characters of [A-Za-z0-9_-]")
    return value


def is_valid_token(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _TOKEN_RE.fullmatch(value) is not None


def fnv1a_32(data: bytes) -> int:
    h = _FNV32_OFFSET
    for byte in data:
        h ^= byte
        h = (h * _FNV32_PRIME) & 0xFFFFFFFF
    return h


def partition_of(agent_type: str, agent_id: str, partitions: int) -> int:
    """Partition of ``(agent_type, agent_id)``, identical to the server's ``partition()``.

    >>> partition_of("counter", "c1", 8)
    3
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return fnv1a_32((agent_type + agent_id).encode()) % partitions


@dataclass(frozen=True, slots=True)
class AgentId:
    """The address of an agent: its type and its id, both NATS-safe tokens.

    >>> AgentId("counter", "c1").key
    'counter.c1'
    """

    type: str
    id: str

    def __post_init__(self) -> None:
        validate_token(self.type, "agent type")
        validate_token(self.id, "agent id")

    @property
    def key(self) -> str:
        return f"{self.type}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> AgentId:
        """Parse ``TYPE/ID`` (the CLI form) or ``TYPE.ID``."""
        for sep in ("/", "."):
            if sep in text:
                agent_type, _, agent_id = text.partition(sep)
                return cls(agent_type, agent_id)
        raise ValueError(f"invalid agent address {text!r}: expected TYPE/ID")

    def __str__(self) -> str:
        return f"{self.type}/{self.id}"
