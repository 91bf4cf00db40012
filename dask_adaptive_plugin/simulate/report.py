"""What a simulation reports: the figures, as data, text, JSON and a plot.

The figures (:meth:`SimulationResult.figures`) depend only on the workload,
the configuration and the seed: the same inputs give the same figures. How
long the simulation took on this machine is apart
(:meth:`SimulationResult.performance`).
"""

from __future__ import annotations

import json
import math
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Wait times are counted in buckets 1% wide: percentiles within 1%.
BUCKET_RATIO = 1.01
_LOG_RATIO = math.log(BUCKET_RATIO)
#: Waits at most this long count as no wait.
NO_WAIT = 1e-9
PERCENTILES = (0.5, 0.9, 0.99)


class Histogram:
    """Counts of values in buckets 1% wide, and their exact mean and maximum.

    Adding ``n`` equal values costs the same as adding one.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.zero = 0
        self.buckets: dict[int, int] = {}

    def add(self, value: float, n: int = 1) -> None:
        self.count += n
        self.total += value * n
        self.max = max(self.max, value)
        if value <= NO_WAIT:
            self.zero += n
            return
        i = math.floor(math.log(value) / _LOG_RATIO)
        self.buckets[i] = self.buckets.get(i, 0) + n

    def quantile(self, q: float) -> float | None:
        """The smallest bucket's upper edge below which a fraction ``q`` of
        the values lie (capped at the maximum); ``None`` if empty."""
        if not self.count:
            return None
        rank = q * self.count
        seen = self.zero
        if seen >= rank:
            return 0.0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                return min(BUCKET_RATIO ** (i + 1), self.max)
        return self.max

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def summary(self) -> dict[str, float | None]:
        result: dict[str, float | None] = {
            f"p{round(q * 100)}": self.quantile(q) for q in PERCENTILES
        }
        result["max"] = self.max if self.count else None
        result["mean"] = self.mean
        return result


class Timeline:
    """Workers and demand over time, per pool, for the plot; at most
    :attr:`LIMIT` points (older ones thinned as it grows)."""

    LIMIT = 20_000

    def __init__(self, pools: Sequence[str]) -> None:
        self.pools = list(pools)
        self.times: list[float] = []
        self.runnable: list[int] = []
        #: per point, per pool: (connected, on their way, desired)
        self.rows: list[tuple[tuple[int, int, int], ...]] = []
        self.spacing = 0.0

    def add(self, t: float, runnable: int, row: Sequence[tuple[int, int, int]]) -> None:
        row = tuple(row)
        if self.rows and self.rows[-1] == row and self.runnable[-1] == runnable:
            return
        if self.times and t - self.times[-1] < self.spacing:
            self.times.pop(), self.runnable.pop(), self.rows.pop()
        self.times.append(t)
        self.runnable.append(runnable)
        self.rows.append(row)
        if len(self.times) > self.LIMIT:
            self._thin()

    def _thin(self) -> None:
        self.times, self.runnable, self.rows = (
            self.times[::2],
            self.runnable[::2],
            self.rows[::2],
        )
        self.spacing = 2 * (self.times[-1] - self.times[0]) / self.LIMIT


@dataclass(frozen=True)
class PoolFigures:
    """One pool's figures."""

    cost: float
    nthreads: int
    #: Seconds its workers were connected, added up.
    worker_seconds: float
    #: The same, times the pool's cost.
    cost_seconds: float
    #: Thread-seconds its workers spent running tasks.
    busy_seconds: float
    peak_workers: int
    #: Workers its backend launched, those that never connected, and those
    #: cancelled before they connected (overdue).
    requested: int
    never_delivered: int
    cancelled: int
    #: ``up`` and ``down`` decisions.
    ups: int
    downs: int
    #: Start-up latency as the ledger measured it (recent requests).
    startup_median: float | None
    startup_p90: float | None

    @property
    def utilisation(self) -> float | None:
        capacity = self.worker_seconds * self.nthreads
        return self.busy_seconds / capacity if capacity else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "cost": self.cost,
            "nthreads": self.nthreads,
            "worker_seconds": self.worker_seconds,
            "cost_weighted_worker_seconds": self.cost_seconds,
            "busy_thread_seconds": self.busy_seconds,
            "utilisation": self.utilisation,
            "peak_workers": self.peak_workers,
            "requested": self.requested,
            "never_delivered": self.never_delivered,
            "cancelled": self.cancelled,
            "ups": self.ups,
            "downs": self.downs,
            "startup_median": self.startup_median,
            "startup_p90": self.startup_p90,
        }


@dataclass
class SimulationResult:
    """What one simulation found.

    Times are virtual seconds from the start of the simulation.
    """

    workload: str
    config: str
    seed: int
    #: Tasks that arrived (each link of a chain counted), and that finished.
    tasks: int
    finished: int
    #: When the last task finished.
    makespan: float
    #: When the simulation stopped (the cluster quiet, or the drain over).
    end: float
    #: From the first work arriving to the first worker connected.
    time_to_first_worker: float | None
    #: From a task becoming runnable to its start.
    waits: Histogram
    pools: dict[str, PoolFigures]
    #: Decision records by status (``up``, ``down``, ``fallback``, ``error``...).
    records: dict[str, int]
    evaluations: int
    actions: int
    wall_seconds: float
    decide_errors: list[str] = field(default_factory=list)
    timeline: Timeline | None = None
    #: The last decision records, as ``(virtual time, record)``.
    log: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    #: The process's peak resident memory, in bytes, when it finished.
    peak_memory: int | None = None

    @property
    def unfinished(self) -> int:
        return self.tasks - self.finished

    @property
    def worker_seconds(self) -> float:
        return sum(p.worker_seconds for p in self.pools.values())

    @property
    def cost_seconds(self) -> float:
        return sum(p.cost_seconds for p in self.pools.values())

    @property
    def scale_events(self) -> int:
        return self.records.get("up", 0) + self.records.get("down", 0)

    @property
    def decisions_per_second(self) -> float | None:
        return self.evaluations / self.wall_seconds if self.wall_seconds else None

    def figures(self) -> dict[str, Any]:
        """The figures: the same for the same workload, config and seed."""
        return {
            "workload": self.workload,
            "config": self.config,
            "seed": self.seed,
            "tasks": self.tasks,
            "finished": self.finished,
            "unfinished": self.unfinished,
            "makespan": self.makespan,
            "end": self.end,
            "time_to_first_worker": self.time_to_first_worker,
            "wait": self.waits.summary(),
            "worker_seconds": self.worker_seconds,
            "cost_weighted_worker_seconds": self.cost_seconds,
            "scale_events": self.scale_events,
            "records": dict(self.records),
            "evaluations": self.evaluations,
            "actions": self.actions,
            "decide_errors": list(self.decide_errors),
            "pools": {name: p.as_dict() for name, p in self.pools.items()},
        }

    def performance(self) -> dict[str, Any]:
        """How the simulation ran on this machine (not reproducible)."""
        return {
            "wall_seconds": self.wall_seconds,
            "decisions_per_second": self.decisions_per_second,
            "peak_memory_bytes": self.peak_memory,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(
            {"figures": self.figures(), "performance": self.performance()},
            indent=indent,
        )

    def summary(self) -> str:
        """The figures as a few lines of text."""
        waits = self.waits.summary()
        lines = [
            f"{self.workload}, {self.config}, seed {self.seed}",
            f"tasks {self.tasks:,} ({self.finished:,} finished), makespan "
            f"{_s(self.makespan)}, simulated until {_s(self.end)}",
            f"time to first worker {_s(self.time_to_first_worker)}; task wait "
            f"p50 {_s(waits['p50'])}, p90 {_s(waits['p90'])}, p99 {_s(waits['p99'])}, "
            f"max {_s(waits['max'])}",
            f"worker-seconds {self.worker_seconds:,.0f}, cost-weighted "
            f"{self.cost_seconds:,.0f}; scale events {self.scale_events} (up "
            f"{self.records.get('up', 0)}, down {self.records.get('down', 0)}); "
            f"other records: {_records(self.records)}",
            "",
            "pool          cost  worker-s   cost-weighted  busy  peak  requested  never  cancelled  ups  downs",
        ]
        for name, p in self.pools.items():
            busy = "-" if p.utilisation is None else f"{p.utilisation:.0%}"
            lines.append(
                f"{name:<12} {p.cost:>5g} {p.worker_seconds:>9,.0f} {p.cost_seconds:>15,.0f} "
                f"{busy:>5} {p.peak_workers:>5} {p.requested:>10} {p.never_delivered:>6} "
                f"{p.cancelled:>10} {p.ups:>4} {p.downs:>6}"
            )
        lines += [
            "",
            f"{self.evaluations:,} decisions in {self.wall_seconds:.2f}s "
            f"({self.decisions_per_second or 0:,.0f}/s); peak memory "
            f"{(self.peak_memory or 0) / 2**20:,.0f} MiB",
        ]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        """Workers (connected, on their way) against demand (what the policy
        wanted) over time, one panel per pool, runnable tasks on top; a PNG.

        Raises
        ------
        ImportError
            if matplotlib is not installed.
        """
        plot_timeline(self, Path(path))


def peak_memory() -> int:
    """This process's peak resident memory, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def plot_timeline(result: SimulationResult, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "the plot needs matplotlib: pip install 'dask-adaptive-plugin[simulate]'"
        ) from None
    timeline = result.timeline
    if timeline is None or not timeline.times:
        raise ValueError("nothing to plot: the simulation made no decision")
    pools = timeline.pools
    figure, axes = plt.subplots(
        len(pools) + 1, 1, sharex=True, figsize=(9, 2 + 1.8 * len(pools)), squeeze=False
    )
    times = [t / 60 for t in timeline.times]
    top = axes[0][0]
    top.step(times, timeline.runnable, where="post", color="tab:gray")
    top.set_ylabel("runnable\ntasks")
    top.set_title(f"{result.workload} — {result.config}, seed {result.seed}", fontsize=9)
    for i, name in enumerate(pools, 1):
        ax = axes[i][0]
        for column, label, style in (
            (2, "wanted by the policy", ":"),
            (1, "on their way", "--"),
            (0, "connected", "-"),
        ):
            ax.step(times, [row[i - 1][column] for row in timeline.rows], style,
                    where="post", label=label)
        ax.set_ylabel(f"{name}\nworkers")
    axes[1][0].legend(loc="upper right", fontsize=7)
    axes[-1][0].set_xlabel("virtual time (minutes)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.3g}s"
    if seconds < 7200:
        return f"{seconds / 60:.3g}min"
    return f"{seconds / 3600:.3g}h"


def _records(records: dict[str, int]) -> str:
    others = [f"{s} {n}" for s, n in records.items() if s not in ("up", "down")]
    return ", ".join(others) or "none"
