"""Cluster coordination: membership, the leader lease, the ring and partition claims
(``coordinator.py``), over the :class:`~jetagents._core.kv.ClusterStore` seam, and the
status view (``status.py``). No NATS here: the JetStream store is ``_nats/kv.py``."""

from ..._core.kv import CasConflict, ClusterStore, Entry
from .coordinator import ClusterConfig, Coordinator, Hooks, RingView
from .status import cluster_status

__all__ = [
    "CasConflict",
    "ClusterConfig",
    "ClusterStore",
    "Coordinator",
    "Entry",
    "Hooks",
    "RingView",
    "cluster_status",
]
