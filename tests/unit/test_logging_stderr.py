"""Logs go to the ``sys.stderr`` of the moment they are written (``_obs/logging.py``)."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from jetagents._obs.logging import configure_logging


def test_a_stderr_closed_after_configuring_neither_raises_nor_swallows_later_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved = structlog.get_config()
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("json")
    try:
        structlog.get_logger("t").warning("before")
        first.close()  # what a CLI runner does with the stream it lent
        with pytest.raises(ValueError):
            first.write("x")
        structlog.get_logger("t").warning("while_closed")  # dropped, not raised into the caller
        later = io.StringIO()
        monkeypatch.setattr(sys, "stderr", later)
        structlog.get_logger("t").warning("after")
        assert '"event": "after"' in later.getvalue()
    finally:
        structlog.configure(**saved)
