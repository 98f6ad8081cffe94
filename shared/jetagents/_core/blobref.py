"""Payloads by reference (ADR 0042 section 9), pure: content-addressed names and the
``{"$ref": "sha256:<hex>", "bytes": n}`` form a journal entry, an event's data, a commit's
result or a snapshot's state takes when its JSON is larger than the threshold.

The blob is the value's JSON bytes (orjson), named by their SHA-256; a reader fetches it from
the Object Store bucket ``agt_blobs``, checks the digest and parses it.

>>> data = b'{"big":true}'
>>> ref = ref_of(data)
>>> ref["$ref"][:7], ref["bytes"], is_ref(ref)
('sha256:', 12, True)
>>> check(ref["$ref"], data)
>>> is_ref({"$ref": "sha256:nothex", "bytes": 1}), is_ref({"a": 1})
(False, False)
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .errors import InternalError

REF: str = "$ref"
_NAME_RE = re.compile(r"sha256:[0-9a-f]{64}")


class BlobUnreadable(InternalError):
    """A reference whose blob is missing from ``agt_blobs`` or does not match its digest:
    the value it stands for cannot be rebuilt (never a silent wrong state). On the wire it
    is ``internal``: a subclass, not an error code of its own."""

    code = InternalError.code


def name_of(data: bytes) -> str:
    """The content address of ``data``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def ref_of(data: bytes) -> dict[str, Any]:
    """The reference that stands for ``data`` in the JSON."""
    return {REF: name_of(data), "bytes": len(data)}


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
    got = name_of(data)
    if got != name:
        raise BlobUnreadable(
            f"blob {name}{at} does not match its digest (read {got})", details={"ref": name, "digest": got}
        )
