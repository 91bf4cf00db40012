"""Adaptive scaling for Dask clusters, inside the Dask scheduler.

Start it with ``dask scheduler --preload dask_adaptive_plugin`` or add an
:class:`AdaptivePlugin` to a scheduler. See the README for an example.
"""

from __future__ import annotations

from dask_adaptive_plugin.backend import PENDING, RUNNING, Backend, PoolContext
from dask_adaptive_plugin.cluster_adaptive import ClusterAdaptive
from dask_adaptive_plugin.config import load_defaults
from dask_adaptive_plugin.hints import request_workers
from dask_adaptive_plugin.plugin import AdaptivePlugin
from dask_adaptive_plugin.policy import (
    AdaptivePolicy,
    Down,
    FixedPolicy,
    Plan,
    Policy,
    PoolSupply,
    Supply,
    Up,
)
from dask_adaptive_plugin.pools import Pool
from dask_adaptive_plugin.stats import ClusterStats, Need, Snapshot

__version__ = "0.2.0"

__all__ = [
    "PENDING",
    "RUNNING",
    "AdaptivePlugin",
    "AdaptivePolicy",
    "Backend",
    "ClusterAdaptive",
    "ClusterStats",
    "Down",
    "FixedPolicy",
    "Need",
    "Plan",
    "Policy",
    "Pool",
    "PoolContext",
    "PoolSupply",
    "Snapshot",
    "Supply",
    "Up",
    "dask_setup",
    "request_workers",
]

load_defaults()

# ``--preload dask_adaptive_plugin`` looks up ``dask_setup`` on this module.
from dask_adaptive_plugin.cli import dask_setup  # noqa: E402
