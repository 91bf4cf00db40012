"""What the benchmarks share: statistics, recording backends, a worker timeline,
a synthetic scheduler state, table rows and a description of the machine."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dask
import distributed
from dask._task_spec import Task
from distributed import Scheduler
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.scheduler import WorkerState
from inprocess import InProcessBackend

from dask_adaptive_plugin import Backend

# -- statistics ---------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median, or NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN where that is undefined."""
    if not denominator or math.isnan(denominator):
        return float("nan")
    return numerator / denominator


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum and count, for the JSON results."""
    values = list(values)
    return {
        "median": median(values),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "n": len(values),
    }


def alternating(repeats: int) -> list[tuple[str, str]]:
    """Pairs of sides in the order to run them: ABBA, so neither always goes first."""
    return [
        ("plugin", "adaptive") if i % 2 == 0 else ("adaptive", "plugin")
        for i in range(repeats)
    ]


# -- table rows ----------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table.

    ``plugin`` and ``reference`` are in ``unit``; ``ratio`` is plugin over
    reference, so below 1 means the plugin needed less. ``holds`` is whether
    the target holds (``None`` when the row has no target).
    """

    benchmark: str
    metric: str
    unit: str
    plugin: float | None
    reference: float | None = None
    reference_name: str = ""
    target: str = ""
    holds: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.plugin is None or self.reference is None:
            return None
        return ratio(self.plugin, self.reference)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


# -- backends that record --------------------------------------------------------------


class RecordingBackend(InProcessBackend):
    """The test backend (in-process workers) that notes when ``scale_up`` is called."""

    def __init__(self, scheduler: Any, **options: Any) -> None:
        super().__init__(scheduler, **options)
        self.up_times: list[float] = []

    async def scale_up(self, n: int, **kwargs: Any) -> None:
        self.up_times.append(time.perf_counter())
        await super().scale_up(n, **kwargs)


class NullBackend(Backend):
    """Starts nothing; counts the calls (a benchmark that expects none checks)."""

    def __init__(self, scheduler: Any) -> None:
        super().__init__(scheduler)
        self.calls = 0

    def scale_up(self, n: int, **kwargs: Any) -> None:
        self.calls += 1

    def scale_down(self, workers: list[str]) -> None:
        self.calls += 1


# -- the number of workers over time --------------------------------------------------------


class WorkerTimeline(SchedulerPlugin):
    """Records ``(time.perf_counter(), number of workers)`` at every change."""

    name = "benchmark-worker-timeline"

    def __init__(self) -> None:
        self.changes: list[tuple[float, int]] = [(time.perf_counter(), 0)]

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.changes.append((time.perf_counter(), len(scheduler.workers)))

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self.changes.append((time.perf_counter(), len(scheduler.workers)))

    def count_at(self, when: float) -> int:
        """Workers connected at time ``when``."""
        count = 0
        for t, n in self.changes:
            if t > when:
                break
            count = n
        return count

    def back_to(self, minimum: int, after: float) -> float | None:
        """The first time after ``after`` when the count is at ``minimum``."""
        if self.count_at(after) <= minimum:
            return after
        for t, n in self.changes:
            if t > after and n <= minimum:
                return t
        return None

    def worker_seconds(self, start: float, end: float) -> float:
        """The integral of the number of workers over ``[start, end]``."""
        total, count, since = 0.0, self.count_at(start), start
        for t, n in self.changes:
            if start < t < end:
                total += count * (t - since)
                count, since = n, t
        return total + count * (end - since)

    def series(self, start: float, end: float) -> list[tuple[float, int]]:
        """Steps ``(seconds since start, count)`` within ``[start, end]``, for plots."""
        steps = [(0.0, self.count_at(start))]
        steps += [(t - start, n) for t, n in self.changes if start < t <= end]
        return steps + [(end - start, self.count_at(end))]


# -- a scheduler state built without starting a scheduler ------------------------------------


def synthetic_scheduler() -> Scheduler:
    """A ``Scheduler`` that is not started: its state is filled in directly.

    The active memory manager is off: it reads worker heartbeats, which
    synthetic workers never send.
    """
    with dask.config.set({"distributed.scheduler.active-memory-manager.start": False}):
        return Scheduler(dashboard_address=":0", validate=False)


def add_synthetic_workers(
    scheduler: Scheduler,
    count: int,
    *,
    memory_limit: int = 4 * 2**30,
    pool: str | None = None,
    resources: Mapping[str, float] | None = None,
) -> list[str]:
    """Add ``count`` one-thread workers as ``Scheduler.add_worker`` records them.

    Only the bookkeeping of ``add_worker`` that the adaptive decisions read is
    done (no comm, no heartbeat); the plugins' ``add_worker`` hooks are called
    as the scheduler calls them, and queued tasks move onto the new workers.
    Tasks without a worker (``no-worker``) stay there: the real
    ``add_worker`` offers each of them to the new worker, which costs
    O(tasks x workers) per worker at these sizes.

    Parameters
    ----------
    scheduler
        A scheduler that was never started (:func:`synthetic_scheduler`).
    count
        Workers to add.
    memory_limit
        Each worker's memory limit, in bytes.
    pool
        Names the workers ``"<pool>-<i>"``, which is how the plugin's ledger
        attributes a worker it did not ask for to a pool; ``None``:
        ``"synthetic-<i>"``, a worker no pool claims.
    resources
        What each worker provides (``dask worker --resources``), registered
        as the worker's heartbeat registers it.
    """
    first = len(scheduler.workers)
    prefix = pool if pool is not None else "synthetic"
    addresses = [
        _add_one_worker(scheduler, i, memory_limit, f"{prefix}-{i}", resources)
        for i in range(first, first + count)
    ]
    scheduler.stimulus_queue_slots_maybe_opened(stimulus_id="benchmark-add-workers")
    return addresses


def _add_one_worker(
    scheduler: Scheduler,
    i: int,
    memory_limit: int,
    name: str,
    resources: Mapping[str, float] | None,
) -> str:
    host = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
    address = f"tcp://{host}:40000"
    ws = WorkerState(
        address=address,
        status=Status.running,
        pid=i,
        name=name,
        nthreads=1,
        memory_limit=memory_limit,
        local_directory="/tmp",
        nanny=None,
        server_id=f"synthetic-{i}",
        scheduler=scheduler,
    )
    scheduler.workers[address] = ws
    scheduler.running.add(ws)
    info = scheduler.host_info.setdefault(host, {"addresses": set(), "nthreads": 0})
    info["addresses"].add(address)
    info["nthreads"] += ws.nthreads
    scheduler.total_memory += ws.memory_limit
    scheduler.total_nthreads += ws.nthreads
    scheduler.aliases[ws.name] = address
    if resources:
        scheduler.add_resources(worker=address, resources=dict(resources))
    scheduler.check_idle_saturated(ws)
    for plugin in list(scheduler.plugins.values()):
        plugin.add_worker(scheduler=scheduler, worker=address)
    return address


def submit_synthetic_tasks(
    scheduler: Scheduler,
    count: int,
    prefix: str = "inc",
    resources: Mapping[str, float] | None = None,
) -> None:
    """Submit ``count`` independent tasks through the scheduler's own graph intake.

    ``_create_taskstate_from_graph`` is what ``update_graph`` calls once a
    client's graph is unpacked: tasks get priorities and go through the real
    transitions (to ``processing`` where a worker has room, else ``queued``;
    tasks with ``resources`` that no connected worker provides, to
    ``no-worker``).

    Parameters
    ----------
    scheduler
        A scheduler that was never started (:func:`synthetic_scheduler`).
    count
        Tasks to submit, keys ``"<prefix>-<i>"``.
    prefix
        Their task prefix.
    resources
        The annotation ``resources=`` of every task (one resource class), or
        ``None`` for plain tasks.
    """
    dsk = {f"{prefix}-{i}": Task(f"{prefix}-{i}", _never_run, i) for i in range(count)}
    # one dict per task, as a client's graph arrives unpacked
    annotations = (
        {"resources": {key: dict(resources) for key in dsk}} if resources else {}
    )
    scheduler._create_taskstate_from_graph(
        start=time.time(),
        dsk=dsk,
        keys=set(dsk),
        ordered={key: i for i, key in enumerate(dsk)},
        client="benchmark",
        annotations_by_type=annotations,
        global_annotations=None,
        stimulus_id="benchmark-submit",
        submitting_task=None,
        span_metadata={},
    )


def _never_run(i: int) -> int:  # pragma: no cover - the synthetic workers run nothing
    return i


# -- the machine ------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU model, Python and distributed versions, and the load now."""
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(_memory_bytes() / 2**30, 1),
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "distributed": distributed.__version__,
        "dask": dask.__version__,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
