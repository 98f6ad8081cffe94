"""Payloads by reference (ADR 0042 section 9), pure: content-addressed names and the
``{"$ref": "<type>.<id>/sha256:<hex>", "bytes": n}`` form a journal entry, an event's data,
a commit's result or a snapshot's state takes when its JSON is larger than the threshold.

The blob is the value's JSON bytes (orjson), named by the agent whose log or snapshot holds
the reference and by the bytes' SHA-256 (ADR 0052: an agent's purge removes the blobs under
its name, and no other agent's log can name them); a reader fetches it from the Object Store
bucket ``agt_blobs``, checks the digest and parses it. Names without the agent
(``sha256:<hex>``, written before) are still read.

>>> data = b'{"big":true}'
>>> ref = ref_of(data, "counter.c1")
>>> ref["$ref"][:18], ref["bytes"], is_ref(ref)
('counter.c1/sha256:', 12, True)
>>> check(ref["$ref"], data)
>>> owner_of(ref["$ref"]), owner_of(name_of(data))
('counter.c1', '')
>>> is_ref({"$ref": "sha256:nothex", "bytes": 1}), is_ref({"a": 1}), is_ref(ref_of(data))
(False, False, True)
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .errors import InternalError

REF: str = "$ref"
_NAME_RE = re.compile(r"(?:[A-Za-z0-9_-]{1,128}\.[A-Za-z0-9_-]{1,128}/)?sha256:[0-9a-f]{64}")
OWNER_SEP: str = "/"


class BlobUnreadable(InternalError):
    """A reference whose blob is missing from ``agt_blobs`` or does not match its digest:
    the value it stands for cannot be rebuilt (never a silent wrong state). On the wire it
    is ``internal``: a subclass, not an error code of its own."""

    code = InternalError.code


def name_of(data: bytes, owner: str = "") -> str:
    """The name of ``data`` stored for agent ``owner`` (``<type>.<id>``):
    ``<owner>/sha256:<hex>``; ``sha256:<hex>`` without an owner."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return f"{owner}{OWNER_SEP}{digest}" if owner else digest


def ref_of(data: bytes, owner: str = "") -> dict[str, Any]:
    """The reference that stands for ``data`` in the JSON of agent ``owner``."""
    return {REF: name_of(data, owner), "bytes": len(data)}


def owner_of(name: str) -> str:
    """The agent (``<type>.<id>``) a blob name is scoped to; ``""`` for an unscoped name."""
    owner, sep, _ = name.rpartition(OWNER_SEP)
    return owner if sep else ""


def is_ref(value: Any) -> bool:
    """Whether ``value`` is a reference: exactly ``{"$ref": "sha256:<64 hex>", "bytes": n}``."""
    return (
        type(value) is dict
        and len(value) == 2
        and isinstance(value.get(REF), str)
        and _NAME_RE.fullmatch(value[REF]) is not None
        and type(value.get("bytes")) is int
    )


def check(name: str, data: bytes | None, where: str = "") -> None:
    """Raise ``BlobUnreadable`` unless ``data`` is the blob named ``name``."""
    at = f" (named by {where})" if where else ""
    if data is None:
        raise BlobUnreadable(f"blob {name}{at} is missing from agt_blobs", details={"ref": name, "missing": True})
    got = name_of(data, owner_of(name))
    if got != name:
        raise BlobUnreadable(
            f"blob {name}{at} does not match its digest (read {got})", details={"ref": name, "digest": got}
        )
