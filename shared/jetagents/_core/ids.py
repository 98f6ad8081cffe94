"""Agent addresses, NATS-safe tokens and the partition function.

The partition of an agent is NATS's own ``partition(P, 1, 2)`` subject-mapping function:
FNV-1a (32 bit) over the type token followed directly by the id token (no separator),
modulo ``P``. The server computes the same value in the ``AGT_CMD`` stream's subject
transform, so a client may compute it locally and agree with the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
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


# A literal subject: dot-separated non-empty tokens of printable ASCII other than the
# separator and the wildcards (no whitespace, control or non-ASCII bytes). Checked as one
# character class over the whole subject (the separator included) and then no empty token:
# ``re`` takes several times as long for the same rule written as a repeated group, and
# every call's reply subject is checked.
_LITERAL_CHARS_RE = re.compile(r"[!-)+-=?-~]+")


def _is_literal(subject: str) -> bool:
    """A literal subject (see above)."""
    return (
        _LITERAL_CHARS_RE.fullmatch(subject) is not None
        and ".." not in subject
        and subject[0] != "."
        and subject[-1] != "."
    )


MAX_REPLY_SUBJECT_LEN = 256
# Namespaces a reply prefix may never reach: every "$" subject belongs to the server
# ($JS, $KV, $O, $SYS, $SRV, $MQTT, $NRG, ...), the rest to jetagents' own wire.
_SERVER_NAMESPACE = "$"


def is_reply_subject(subject: object, prefixes: Iterable[str]) -> bool:
    """True when a host may publish a reply to ``subject``: a literal subject (no
    wildcards, whitespace, control or non-ASCII bytes, no empty token) of at most
    ``MAX_REPLY_SUBJECT_LEN`` characters that starts with one of ``prefixes``
    (each ends with ``.``, see :func:`validate_reply_prefix`).

    >>> is_reply_subject("_INBOX.client.abc.1", ["_INBOX."])
    True
    >>> is_reply_subject("agt.evt.counter.c1", ["_INBOX."])
    False
    """
    if not isinstance(subject, str) or len(subject) > MAX_REPLY_SUBJECT_LEN:
        return False
    for prefix in prefixes:
        # nothing past the prefix: it ends with '.', which no literal subject does (and an
        # empty subject starts with no prefix)
        if subject.startswith(prefix):
            return _is_literal(subject)
    return False


def validate_reply_prefix(prefix: str, subject_root: str) -> str:
    """Return ``prefix`` if hosts may answer under it, else raise ``ValueError``.

    A reply prefix is one or more literal tokens followed by ``.`` (``_INBOX.``). It may
    not start with ``$`` (the server's namespaces: ``$JS.``, ``$KV.``, ``$O.``, ``$SYS.``,
    ``$SRV.``, ...) nor overlap the subject root (``agt.``: commands, events, dead
    letters, counters, host-to-host traffic), in either direction.
    """
    if not isinstance(prefix, str) or not prefix.endswith(".") or len(prefix) > MAX_REPLY_SUBJECT_LEN // 2:
        raise ValueError(f"invalid reply prefix {prefix!r}: literal tokens ending with '.', e.g. '_INBOX.'")
    if not _is_literal(prefix[:-1]):
        raise ValueError(f"invalid reply prefix {prefix!r}: no wildcards, whitespace, control or non-ASCII bytes")
    if prefix.startswith(_SERVER_NAMESPACE):
        raise ValueError(f"reply prefix {prefix!r} reaches the server's '$' subjects ($JS, $KV, $SYS, ...)")
    root = f"{subject_root}."
    if prefix.startswith(root) or root.startswith(prefix):
        raise ValueError(f"reply prefix {prefix!r} overlaps the subject root {subject_root!r}")
    return prefix


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
    # ``type.id``, made once: the host looks agents up by it on every command
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_token(self.type, "agent type")
        validate_token(self.id, "agent id")
        object.__setattr__(self, "key", f"{self.type}.{self.id}")

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
