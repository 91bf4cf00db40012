"""Efficiency on real work: makespan and worker-seconds, real worker processes.

The plugin side is an in-process ``Scheduler`` with
``AdaptivePlugin(backend="local", minimum=0, maximum=M,
backend_options={"nthreads": 1})``, whose workers are ``dask worker``
processes; the other side is ``LocalCluster(n_workers=0,
threads_per_worker=1).adapt(minimum=0, maximum=M)``, whose workers are
processes under nannies in this process. Both keep their default timings
(idle timeout 2 s; ``Adaptive``: a check a second, three checks to retire).
A third side runs the same ``LocalCluster`` with
``cluster.adapt(Adaptive=ClusterAdaptive, minimum=0, maximum=M)``: the plugin
in that cluster's scheduler, scaling through ``cluster.scale``.

Tasks sleep, so cores are not the bottleneck. Each repetition starts a fresh
cluster at zero workers. Accounting starts just before the first submit;
makespan ends when the last result is in; worker-seconds (the integral of
connected workers, from the scheduler's add/remove-worker events) end when the
cluster is back at its minimum or ``horizon`` seconds after the last result,
whichever comes first: the same rule for both sides.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from distributed import Client, LocalCluster, Scheduler

from benchmarks.common import Row, WorkerTimeline, alternating, median, ratio
from dask_adaptive_plugin import AdaptivePlugin, ClusterAdaptive
from dask_adaptive_plugin.backends.local import LocalBackend

MINIMUM = 0
#: The slack for noise in "no worse than Adaptive": 2%.
NOISE = 1.02


@dataclass(frozen=True)
class Bursts:
    """Bursts of sleeping tasks with pauses between them.

    ``submit_every`` set: a trickle, one burst submitted every that many
    seconds without waiting for results. Otherwise each burst's results are
    awaited, then the next pause follows (a user looking at results).
    ``tasks_per_burst`` may give each burst its own size, in turn.
    """

    name: str
    bursts: int
    tasks_per_burst: int | tuple[int, ...]
    task_seconds: float
    pauses: tuple[float, ...] = ()
    submit_every: float | None = None

    def size_of(self, burst: int) -> int:
        sizes = self.tasks_per_burst
        return sizes[burst % len(sizes)] if isinstance(sizes, tuple) else sizes

    def pause_after(self, burst: int) -> float:
        return self.pauses[burst % len(self.pauses)] if self.pauses else 0.0

    async def run(self, client: Client) -> None:
        """Submit the bursts and wait for all their results."""
        pending = []
        for burst in range(self.bursts):
            futures = client.map(
                time.sleep, [self.task_seconds] * self.size_of(burst), pure=False
            )
            if self.submit_every is not None:
                pending += futures
                await asyncio.sleep(self.submit_every)
                continue
            await client.gather(futures)
            if burst < self.bursts - 1:
                await asyncio.sleep(self.pause_after(burst))
        await client.gather(pending)

    def describe(self) -> str:
        sizes = self.tasks_per_burst
        each = "/".join(map(str, sizes)) if isinstance(sizes, tuple) else str(sizes)
        tasks = f"{each} × {self.task_seconds:g} s sleep"
        if self.submit_every is not None:
            return (
                f"{self.bursts} tasks of {self.task_seconds:g} s, "
                f"one every {self.submit_every:g} s"
            )
        if self.bursts == 1:
            return tasks
        pauses = ", ".join(f"{p:g}" for p in self.pauses)
        return f"{self.bursts} bursts of {tasks}, pauses {pauses} s"


@dataclass(frozen=True)
class DataFramePipeline:
    """A ``dask.dataframe`` pipeline with a P2P shuffle: ``days`` partitions
    of :func:`dask.datasets.timeseries` (a row a second), shuffled on ``id``
    with ``shuffle_method="p2p"``, then grouped by ``name``.

    The workers run only dask's own functions, so ``dask worker`` processes
    need nothing from this file."""

    name: str
    days: int

    async def run(self, client: Client) -> None:
        import dask
        import pandas as pd

        start = pd.Timestamp("2000-01-01")
        df = dask.datasets.timeseries(
            start=start, end=start + pd.Timedelta(days=self.days), freq="1s",
            partition_freq="1D", seed=42,
        )  # fmt: skip
        shuffled = df.shuffle("id", shuffle_method="p2p")
        summary = shuffled.groupby("name").agg({"x": "mean", "y": "max"})
        await client.compute(summary)

    def describe(self) -> str:
        return (
            f"timeseries, {self.days} partitions of 86,400 rows → P2P shuffle → groupby"
        )


@dataclass(frozen=True)
class ArrayReduction:
    """A ``dask.array`` reduction: ``(x + x.T).mean(axis=0).std()`` of a
    random ``size`` × ``size`` array in ``chunk`` × ``chunk`` chunks."""

    name: str
    size: int
    chunk: int

    async def run(self, client: Client) -> None:
        import dask.array as da

        x = da.random.default_rng(42).random((self.size, self.size), chunks=self.chunk)
        await client.compute((x + x.T).mean(axis=0).std())

    def describe(self) -> str:
        chunks = (self.size // self.chunk) ** 2
        return f"(x + x.T).mean(axis=0).std(), {self.size}² floats in {chunks} chunks"


Workload = Bursts | DataFramePipeline | ArrayReduction


#: Three sleep workloads (the policy's figures, made to be simulated too) and
#: three that look like a user's day: a notebook session (bursts of various
#: sizes, think times of 2 to 12 s), a dataframe pipeline, an array reduction.
FULL: tuple[Workload, ...] = (
    Bursts("burst", bursts=1, tasks_per_burst=48, task_seconds=0.5),
    Bursts("bursts", bursts=4, tasks_per_burst=12, task_seconds=0.5, pauses=(2, 5, 2)),
    Bursts("trickle", bursts=50, tasks_per_burst=1, task_seconds=0.3, submit_every=0.6),
    Bursts(
        "notebook",
        bursts=6,
        tasks_per_burst=(8, 2, 16, 4, 12, 6),
        task_seconds=0.5,
        pauses=(3, 12, 2, 8, 5),
    ),
    DataFramePipeline("dataframe", days=30),
    ArrayReduction("array", size=24_000, chunk=2_000),
)
QUICK: tuple[Workload, ...] = (
    Bursts("burst", bursts=1, tasks_per_burst=12, task_seconds=0.3),
    Bursts("bursts", bursts=2, tasks_per_burst=6, task_seconds=0.3, pauses=(2,)),
    Bursts("trickle", bursts=8, tasks_per_burst=1, task_seconds=0.2, submit_every=0.5),
    Bursts(
        "notebook", bursts=3, tasks_per_burst=(4, 1, 6), task_seconds=0.2, pauses=(2, 3)
    ),
    DataFramePipeline("dataframe", days=4),
    ArrayReduction("array", size=4_000, chunk=1_000),
)


def spec(workload: Workload) -> dict[str, Any]:
    """The workload as plain data for the results file: its kind, its fields
    and how the report describes it."""
    return {
        "kind": type(workload).__name__,
        **asdict(workload),
        "describe": workload.describe(),
    }


# -- one run ------------------------------------------------------------------------------


async def measure(
    client: Client,
    timeline: WorkerTimeline,
    scale_calls: list[float],
    workload: Workload,
    horizon: float,
) -> dict[str, Any]:
    """Run ``workload`` on a cluster at its minimum; makespan, worker-seconds."""
    assert timeline.changes[-1][1] == MINIMUM, "a run starts at the minimum"
    start = time.perf_counter()
    await workload.run(client)
    done = time.perf_counter()
    end = await _back_to_minimum(timeline, done, horizon)
    arrivals = [t for t, n in timeline.changes if t > start]
    return {
        "makespan": done - start,
        "worker_seconds": timeline.worker_seconds(start, end),
        "accounted_until": end - start,
        "reached_minimum": timeline.back_to(MINIMUM, done) is not None,
        "first_scale_up": scale_calls[0] - start if scale_calls else None,
        "first_worker": arrivals[0] - start if arrivals else None,
        "scale_calls": len(scale_calls),
        "workers_started": _starts(timeline, start),
        "series": timeline.series(start, end),
    }


async def _back_to_minimum(
    timeline: WorkerTimeline, done: float, horizon: float
) -> float:
    deadline = done + horizon
    while time.perf_counter() < deadline:
        back = timeline.back_to(MINIMUM, done)
        if back is not None:
            return back
        await asyncio.sleep(0.05)
    return deadline


def _starts(timeline: WorkerTimeline, start: float) -> int:
    counts = [n for t, n in timeline.changes if t >= start]
    previous, starts = timeline.count_at(start), 0
    for n in counts:
        starts += max(0, n - previous)
        previous = n
    return starts


def _record_calls(obj: Any, name: str) -> list[float]:
    """Wrap ``obj.name`` so that each call notes ``time.perf_counter()`` first."""
    times: list[float] = []
    method = getattr(obj, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        times.append(time.perf_counter())
        return method(*args, **kwargs)

    setattr(obj, name, recorded)
    return times


async def plugin_run(
    workload: Workload, maximum: int, horizon: float
) -> dict[str, Any]:
    """One run of ``workload`` on the plugin with the ``local`` backend."""
    timeline = WorkerTimeline()
    plugin = AdaptivePlugin(
        backend="local",
        minimum=MINIMUM,
        maximum=maximum,
        backend_options={"nthreads": 1},
    )
    async with (
        Scheduler(
            dashboard_address=":0", host="127.0.0.1", plugins=[plugin, timeline]
        ) as s,
        Client(s.address, asynchronous=True) as client,
    ):
        while plugin.backend is None:
            await asyncio.sleep(0.01)
        calls = _record_calls(plugin.backend, "scale_up")
        offset = time.time() - time.perf_counter()
        result = await measure(client, timeline, calls, workload, horizon)
        result["decisions"] = _decisions(plugin.log, offset, timeline.changes[0][0])
        return result


def _decisions(
    log: Any, offset: float, start: float
) -> list[tuple[float, dict[str, Any]]]:
    """The plugin's scaling decisions, timed from ``start`` (a ``perf_counter``)."""
    return [
        (
            round(t - offset - start, 3),
            {k: entry[k] for k in ("status", "n", "workers", "reason") if k in entry},
        )
        for t, entry in log
        if entry["status"] in ("up", "down")
    ]


async def adaptive_run(
    workload: Workload, maximum: int, horizon: float
) -> dict[str, Any]:
    """One run of ``workload`` on ``LocalCluster(n_workers=0).adapt(...)``."""
    timeline = WorkerTimeline()
    async with _reference_cluster() as cluster:
        cluster.scheduler.add_plugin(timeline)
        calls = _record_calls(cluster, "scale")
        adaptive = cluster.adapt(minimum=MINIMUM, maximum=maximum)
        async with Client(cluster, asynchronous=True) as client:
            result = await measure(client, timeline, calls, workload, horizon)
        adaptive.stop(reason="benchmark done")
        return result


async def cluster_adaptive_run(
    workload: Workload, maximum: int, horizon: float
) -> dict[str, Any]:
    """One run of ``workload`` on the reference ``LocalCluster``, adapted by
    ``cluster.adapt(Adaptive=ClusterAdaptive)``."""
    timeline = WorkerTimeline()
    async with _reference_cluster() as cluster:
        cluster.scheduler.add_plugin(timeline)
        calls = _record_calls(cluster, "scale")
        adaptive = await cluster.adapt(
            Adaptive=ClusterAdaptive, minimum=MINIMUM, maximum=maximum
        )
        offset = time.time() - time.perf_counter()
        async with Client(cluster, asynchronous=True) as client:
            result = await measure(client, timeline, calls, workload, horizon)
        result["decisions"] = _decisions(adaptive.log, offset, timeline.changes[0][0])
        adaptive.stop(reason="benchmark done")
        return result


async def bench_efficiency(
    workloads: tuple[Workload, ...] = FULL,
    repeats: int = 3,
    maximum: int = 3,
    horizon: float = 20.0,
) -> dict[str, Any]:
    """Each workload ``repeats`` times per side, sides alternating.

    The third side, ``cluster_adaptive``, runs after each pair.

    Returns
    -------
    dict
        ``{"workloads": {name: {"plugin": [run, ...], "adaptive": [...],
        "cluster_adaptive": [...], "spec": {...}}}, "maximum": M, "horizon": s}``.
    """
    sides = {
        "plugin": plugin_run,
        "adaptive": adaptive_run,
        "cluster_adaptive": cluster_adaptive_run,
    }
    results: dict[str, Any] = {
        w.name: {**{side: [] for side in sides}, "spec": spec(w)} for w in workloads
    }
    for order in alternating(repeats):
        for workload in workloads:
            for side in (*order, "cluster_adaptive"):
                run = await sides[side](workload, maximum, horizon)
                results[workload.name][side].append(run)
    return {"workloads": results, "maximum": maximum, "horizon": horizon}


# -- why: how long a worker takes to start -------------------------------------------------------


async def bench_worker_startup(repeats: int = 3) -> dict[str, list[float]]:
    """Seconds from asking for one worker to its registration with the scheduler.

    ``local``: the plugin's local backend (a nanny in the scheduler's process
    spawning the worker process); ``local, dask worker``: the same with
    ``worker_args`` (a ``dask worker`` process whose nanny spawns the
    worker); ``local --no-nanny``: a ``dask worker`` process without a nanny;
    ``LocalCluster``: a nanny in this process spawning the worker process.
    """
    results: dict[str, list[float]] = {
        "local": [],
        "local, dask worker": [],
        "local --no-nanny": [],
        "LocalCluster": [],
    }
    for _ in range(repeats):
        results["local"].append(await _backend_startup([]))
        # --nanny is dask worker's default: worker_args that change nothing
        results["local, dask worker"].append(await _backend_startup(["--nanny"]))
        results["local --no-nanny"].append(await _backend_startup(["--no-nanny"]))
        results["LocalCluster"].append(await _cluster_startup())
    return results


async def _backend_startup(worker_args: list[str]) -> float:
    async with Scheduler(dashboard_address=":0", host="127.0.0.1") as s:
        backend = LocalBackend(s, nthreads=1, worker_args=worker_args)
        try:
            start = time.perf_counter()
            await backend.scale_up(1)
            return await _first_worker(s, start)
        finally:
            await backend.close()


def _reference_cluster() -> LocalCluster:
    """The reference side: ``LocalCluster(n_workers=0)``, one thread per worker."""
    return LocalCluster(
        n_workers=0,
        threads_per_worker=1,
        asynchronous=True,
        dashboard_address=":0",
        host="127.0.0.1",
    )


async def _cluster_startup() -> float:
    async with _reference_cluster() as cluster:
        start = time.perf_counter()
        cluster.scale(1)
        return await _first_worker(cluster.scheduler, start)


async def _first_worker(s: Scheduler, start: float, timeout: float = 60) -> float:
    while not s.workers:
        if time.perf_counter() - start > timeout:
            raise TimeoutError("no worker registered")
        await asyncio.sleep(0.01)
    return time.perf_counter() - start


# -- rows ----------------------------------------------------------------------------------------


def efficiency_rows(
    results: dict[str, Any], startup: dict[str, list[float]] | None = None
) -> list[Row]:
    """Per workload: makespan and worker-seconds, medians, plugin vs Adaptive."""
    rows = []
    for name, sides in results["workloads"].items():
        makespan = _medians(sides, "makespan")
        seconds = _medians(sides, "worker_seconds")
        better_on_one = makespan[0] < makespan[1] or seconds[0] < seconds[1]
        n = len(sides["plugin"])
        better = "better on one: " + ("yes" if better_on_one else "no")
        within = all(ours <= NOISE * theirs for ours, theirs in (makespan, seconds))
        for metric, (plugin, adaptive), unit in (
            ("makespan", makespan, "s"),
            ("worker-seconds", seconds, "worker·s"),
        ):
            rows.append(
                Row(
                    benchmark=f"6 efficiency: {name}",
                    metric=f"{metric}, median of {n}",
                    unit=unit,
                    plugin=plugin,
                    reference=adaptive,
                    reference_name=f"LocalCluster.adapt(maximum={results['maximum']})",
                    target=f"≤ Adaptive +{NOISE - 1:.0%} on both, < on one",
                    holds=within and better_on_one,
                    note=_start_note(sides) if metric == "makespan" else better,
                )
            )
    rows += cluster_adaptive_rows(results)
    if startup:
        rows += [
            Row(
                benchmark="6 efficiency: why",
                metric=f"one worker's start-up, {name}",
                unit="s",
                plugin=median(times),
                reference=median(startup["LocalCluster"]),
                reference_name="LocalCluster (nanny in-process)",
            )
            for name, times in startup.items()
            if name != "LocalCluster"
        ]
    return rows


def cluster_adaptive_rows(results: dict[str, Any]) -> list[Row]:
    """The same LocalCluster, ``adapt(Adaptive=ClusterAdaptive)`` against
    ``adapt()``: reaction over every run; makespan and worker-seconds per workload."""
    workloads = results["workloads"]
    if not all(sides.get("cluster_adaptive") for sides in workloads.values()):
        return []
    every = {
        side: [run for sides in workloads.values() for run in sides[side]]
        for side in ("adaptive", "cluster_adaptive")
    }
    n = len(every["cluster_adaptive"])
    rows = [_versus(results, "reaction", f"submit → cluster.scale, median of {n}",
                    "s", "first_scale_up", every)]  # fmt: skip
    for name, sides in workloads.items():
        n = len(sides["cluster_adaptive"])
        for metric, unit, key in (
            ("makespan", "s", "makespan"),
            ("worker-seconds", "worker·s", "worker_seconds"),
        ):
            metric = f"{metric}, median of {n}"
            rows.append(_versus(results, name, metric, unit, key, sides))
    return rows


def _versus(
    results: dict[str, Any],
    name: str,
    metric: str,
    unit: str,
    key: str,
    sides: dict[str, Any],
) -> Row:
    """One row: ClusterAdaptive's median of ``key`` against ``Adaptive``'s."""
    ours, theirs = _medians(sides, key, "cluster_adaptive")
    return Row(
        benchmark=f"6 efficiency, ClusterAdaptive: {name}",
        metric=metric,
        unit=unit,
        plugin=ours,
        reference=theirs,
        reference_name=f"LocalCluster.adapt(maximum={results['maximum']})",
        target="≤ Adaptive",
        holds=ours <= theirs,
    )


def _medians(
    sides: dict[str, Any], key: str, side: str = "plugin"
) -> tuple[float, float]:
    """Medians of ``key`` for ``side`` and for distributed's ``Adaptive``."""
    return (
        median(run[key] for run in sides[side] if run[key] is not None),
        median(run[key] for run in sides["adaptive"] if run[key] is not None),
    )


def _start_note(sides: dict[str, Any]) -> str:
    def first(side: str, key: str) -> float:
        return median(r[key] for r in sides[side] if r[key] is not None)

    return (
        f"first scale-up {first('plugin', 'first_scale_up'):.2f} vs "
        f"{first('adaptive', 'first_scale_up'):.2f} s, first worker "
        f"{first('plugin', 'first_worker'):.2f} vs {first('adaptive', 'first_worker'):.2f} s; "
        f"workers started {median(r['workers_started'] for r in sides['plugin']):g} vs "
        f"{median(r['workers_started'] for r in sides['adaptive']):g}"
    )


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Plugin over Adaptive, per workload and figure."""
    return {
        name: {
            key: ratio(*_medians(sides, key)) for key in ("makespan", "worker_seconds")
        }
        for name, sides in results["workloads"].items()
    }
