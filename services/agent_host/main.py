"""Entry point of one agent-host process (``python -m agent_host``, the container's PID 1).

The service's code lives in the library (``jetagents._service``: agent loading, signals,
health, the graceful drain); this package only starts it, so the library never imports
the service (ADR 0040).
"""

from __future__ import annotations

import sys

from jetagents._service import load_agents, run, serve

__all__ = ["load_agents", "main", "run", "serve"]


def main(argv: list[str] | None = None) -> None:
    from jetagents.cli import app

    app(["host", *(argv if argv is not None else sys.argv[1:])])
