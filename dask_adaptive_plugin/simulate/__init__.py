"""Simulate adaptive scaling in virtual time: the real policy, ledger and
planner against simulated pools and a simulated scheduler.

>>> from dask_adaptive_plugin.simulate import simulate
>>> result = simulate(
...     {"phases": [{"kind": "burst", "tasks": 100, "duration": "2s"}]},
...     {"maximum": 10, "simulate": {"latency": "5s"}},
... )
>>> result.finished
100
>>> result.time_to_first_worker
5.0

The command line: ``dask adaptive simulate WORKLOAD [--config FILE.yaml]
[--plot out.png] [--json] [--seed N]``. See ``docs/simulation.md``.
"""

from __future__ import annotations

from typing import Any

from dask_adaptive_plugin.simulate.engine import Engine
from dask_adaptive_plugin.simulate.report import SimulationResult, peak_memory
from dask_adaptive_plugin.simulate.settings import (
    ConfigError,
    Settings,
    SimulatedPool,
    load_settings,
)
from dask_adaptive_plugin.simulate.workload import (
    Workload,
    WorkloadError,
    load_workload,
)
from dask_adaptive_plugin.trace import TraceError

__all__ = [
    "ConfigError",
    "Settings",
    "SimulatedPool",
    "SimulationResult",
    "TraceError",
    "Workload",
    "WorkloadError",
    "load_settings",
    "load_workload",
    "simulate",
]


def simulate(
    workload: Any,
    config: Any = None,
    seed: int = 0,
    *,
    kind: str | None = None,
    horizon: float | None = None,
) -> SimulationResult:
    """Run the plugin's decision logic against a simulated cluster.

    Parameters
    ----------
    workload
        A file (YAML phases, a trace recorded with ``record_trace``, or a
        saved ``client.get_task_stream()``), a mapping ``{"phases": [...]}``,
        or a :class:`Workload`.
    config
        A dask config YAML file (``adaptive-plugin:`` and ``simulate:``), a
        mapping of ``AdaptivePlugin`` keyword arguments plus ``simulate``, or
        ``None`` for the current dask config.
    seed
        Every random draw derives from it: the same seed, the same figures.
    kind
        ``"phases"``, ``"trace"`` or ``"task-stream"``, if the file's
        content should not decide.
    horizon
        Stop at this virtual time at the latest.

    Raises
    ------
    WorkloadError, TraceError, ConfigError
        naming the file and the phase, line or field that is wrong.
    """
    settings = config if isinstance(config, Settings) else load_settings(config)
    engine = Engine(settings, load_workload(workload, kind), seed, horizon)
    result = engine.run()
    result.peak_memory = peak_memory()
    return result
