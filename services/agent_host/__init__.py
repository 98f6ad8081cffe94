"""The deployable agent-host service: settings, agent loading, signals, graceful drain."""

from .main import load_agents, run, serve

__all__ = ["load_agents", "run", "serve"]
