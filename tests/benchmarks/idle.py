"""Idle cost: CPU time of a scheduler process with nothing to do.

Four subprocesses run at the same time, one per side, each for the same number
of equal windows after a short warm-up, and report the CPU time
(``time.process_time()``, all threads) of each window:

- ``scheduler``: a bare ``Scheduler``, the baseline of the plugin;
- ``plugin``: the same with ``AdaptivePlugin(backend="local", maximum=2)``;
- ``cluster``: ``LocalCluster(n_workers=0)``, the baseline of ``Adaptive``;
- ``adaptive``: the same with ``.adapt(minimum=0, maximum=2)`` (defaults).

Each also reports how often its adaptivity evaluated during the windows: the
controller's evaluations for the plugin, calls of the scheduler's
``adaptive_target`` handler for ``Adaptive``.

Run one side by hand: ``PYTHONPATH=tests python -m benchmarks.idle plugin 10 5``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Row, median, ratio

SIDES = ("scheduler", "plugin", "cluster", "adaptive")
WARMUP = 2.0
TESTS = Path(__file__).resolve().parent.parent


def bench_idle(seconds: float = 60.0, windows: int = 6) -> dict[str, Any]:
    """CPU seconds per window of each side, measured at the same time.

    Returns
    -------
    dict
        ``{side: {"cpu": [...], "evaluations": n, "window": s}}``.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    procs = {
        side: subprocess.Popen(
            [sys.executable, "-m", "benchmarks.idle", side, str(seconds), str(windows)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        for side in SIDES
    }
    results = {}
    for side, proc in procs.items():
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"idle benchmark side {side} exited with {proc.returncode}"
            )
        results[side] = json.loads(out.strip().splitlines()[-1])
    return results


# -- one side, in its own process ---------------------------------------------------------------


async def measure_side(side: str, seconds: float, windows: int) -> dict[str, Any]:
    """Start ``side``, warm up, then measure CPU time per window."""
    async with _start(side) as (count_evaluations, stop):
        await asyncio.sleep(WARMUP)
        before = count_evaluations()
        cpu = []
        for _ in range(windows):
            start = time.process_time()
            await asyncio.sleep(seconds / windows)
            cpu.append(time.process_time() - start)
        evaluations = count_evaluations() - before
        stop()
    return {"cpu": cpu, "evaluations": evaluations, "window": seconds / windows}


class _start:
    """An async context: the side running, a counter of its evaluations, a stop."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.server: Any = None

    async def __aenter__(self) -> tuple[Callable[[], int], Callable[[], None]]:
        from distributed import LocalCluster, Scheduler

        from dask_adaptive_plugin import AdaptivePlugin

        options = {"dashboard_address": ":0", "host": "127.0.0.1"}
        if self.side in ("scheduler", "plugin"):
            plugins = []
            if self.side == "plugin":
                plugins = [AdaptivePlugin(backend="local", minimum=0, maximum=2)]
            self.server = await Scheduler(plugins=plugins, **options)
            return self._plugin_counter(plugins), lambda: None
        self.server = await LocalCluster(n_workers=0, asynchronous=True, **options)
        if self.side == "adaptive":
            adaptive = self.server.adapt(minimum=0, maximum=2)
            return _count_handler(
                self.server.scheduler, "adaptive_target"
            ), lambda: adaptive.stop()
        return (lambda: 0), lambda: None

    @staticmethod
    def _plugin_counter(plugins: list[Any]) -> Callable[[], int]:
        if not plugins:
            return lambda: 0
        plugin = plugins[0]
        return lambda: plugin.controller.evaluations if plugin.controller else 0

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


def _count_handler(scheduler: Any, name: str) -> Callable[[], int]:
    """Count calls of one of the scheduler's comm handlers."""
    calls = [0]
    handler = scheduler.handlers[name]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return handler(*args, **kwargs)

    scheduler.handlers[name] = counted
    return lambda: calls[0]


# -- rows ----------------------------------------------------------------------------------------


def per_minute(side: dict[str, Any]) -> float:
    """Median CPU seconds per window, scaled to one minute."""
    return median(side["cpu"]) * 60 / side["window"]


def idle_rows(results: dict[str, Any]) -> list[Row]:
    """Table rows: CPU per minute of each side, the added cost, the evaluations."""
    cpu = {side: per_minute(results[side]) for side in SIDES}
    added_plugin = cpu["plugin"] - cpu["scheduler"]
    added_adaptive = cpu["adaptive"] - cpu["cluster"]
    window = results["plugin"]["window"] * len(results["plugin"]["cpu"])
    return [
        Row(
            benchmark="4 idle",
            metric="CPU per minute, whole process (median window × 60/window)",
            unit="s/min",
            plugin=cpu["plugin"],
            reference=cpu["adaptive"],
            reference_name="LocalCluster + Adaptive",
            note=f"baselines: bare scheduler {cpu['scheduler']:.3f}, "
            f"LocalCluster {cpu['cluster']:.3f}",
        ),
        Row(
            benchmark="4 idle",
            metric="CPU per minute added by adaptivity (side − its baseline)",
            unit="s/min",
            plugin=added_plugin,
            reference=added_adaptive,
            reference_name="Adaptive",
            note="differences of medians: noise can make them negative",
        ),
        Row(
            benchmark="4 idle",
            metric=f"evaluations in {window:g} s idle",
            unit="count",
            plugin=results["plugin"]["evaluations"],
            reference=results["adaptive"]["evaluations"],
            reference_name="Adaptive (adaptive_target calls)",
            target="plugin: 0 (no periodic work)",
            holds=results["plugin"]["evaluations"] == 0,
        ),
    ]


def idle_ratio(results: dict[str, Any]) -> float:
    return ratio(per_minute(results["plugin"]), per_minute(results["adaptive"]))


if __name__ == "__main__":
    _side, _seconds, _windows = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(measure_side(_side, _seconds, _windows))))
