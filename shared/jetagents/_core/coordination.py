"""Coordination for users, the pure part: key names and the typed errors of leases,
barriers and the cache (``jetagents._client.coordination`` does the I/O).

Everything lives in one KV bucket, ``<root>_coord``: ``lease.<name>``, ``data.<key>`` (a
lease's fenced writes), ``barrier.<name>.<party>``, ``cache.<key>``. Names are one or more
dot-separated tokens of ``[A-Za-z0-9_-]``.

>>> coord_key("lease", "billing.leader")
'lease.billing.leader'
"""

from __future__ import annotations

import re
from typing import Final

from .errors import AgentTimeout, FencedError

_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}(?:\.[A-Za-z0-9_-]{1,128}){0,7}")
KINDS: Final = frozenset({"lease", "data", "barrier", "cache"})


def coord_key(kind: str, name: str) -> str:
    """The bucket key of ``name`` in ``kind``; ``ValueError`` for a name that is no key."""
    if kind not in KINDS:
        raise ValueError(f"unknown coordination kind {kind!r}")
    if not isinstance(name, str) or len(name) > 200 or not _NAME.fullmatch(name):
        raise ValueError(f"invalid name {name!r}: dot-separated tokens of [A-Za-z0-9_-], at most 200 characters")
    return f"{kind}.{name}"


class LeaseLost(FencedError):
    """The lease is no longer ours (it expired and someone else holds it, or its renewal
    failed for a whole TTL): a fenced write was refused, or the holder must stop acting."""


class LeaseBusy(AgentTimeout):
    """Someone else held the lease for the whole wait."""


class BarrierTimeout(AgentTimeout):
    """Not every party reached the barrier in time (one died, or is late):
    ``details = {"barrier", "arrived", "parties"}``."""


class CacheTimeout(AgentTimeout):
    """Another process was computing the value and did not finish in time."""
