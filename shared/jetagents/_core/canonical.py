"""Deterministic JSON of a value (pure, no I/O): the tie-breaker of versions and the
identity of set elements, shared by vector clocks (``_vclock``) and CRDTs (``_crdt``)."""

from __future__ import annotations

from typing import Any

import orjson


def canonical(value: Any) -> bytes:
    """Deterministic JSON of a value: the tie-breaker and the identity of set elements.

    >>> canonical({"b": 1, "a": [2]})
    b'{"a":[2],"b":1}'
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
