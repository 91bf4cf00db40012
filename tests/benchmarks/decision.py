"""Decision cost at scale: one policy evaluation beside ``Scheduler.adaptive_target``.

The scheduler state is synthetic (see :func:`benchmarks.common.add_synthetic_workers`):
a ``Scheduler`` that is never started, with the plugin attached as the
scheduler attaches it (``plugin.start(scheduler)``) before any worker or task
exists, so that its hooks see everything arrive.

Two states, each at every worker count:

- **busy**: ``tasks`` independent tasks submitted through the scheduler's graph
  intake; each worker runs what it can and the rest is queued. Workers are
  added in steps (100, then 1,000, ...) and queued tasks move onto them.
- **idle**: only idle workers, no task. The plugin's evaluation is timed when
  no idle timeout has run out (``hold``), when all have (``down``: choosing the
  workers to retire, all of them), and with ``minimum`` equal to the number of
  workers (every worker idle for long but kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    NullBackend,
    Row,
    add_synthetic_workers,
    median,
    ratio,
    submit_synthetic_tasks,
    synthetic_scheduler,
)
from dask_adaptive_plugin import AdaptivePlugin, AdaptivePolicy, policy

TARGET_EVALUATION = 100e-6
TARGET_RETIRE = 5e-3
#: Flat: the evaluation at the most workers within this factor of the fewest.
FLAT_FACTOR = 2.0


def median_seconds(
    fn: Callable[[], Any], repeat: int = 200, budget: float = 2.0
) -> float:
    """The median duration of ``fn()``: ``repeat`` calls, or fewer within ``budget`` s."""
    durations: list[float] = []
    deadline = time.perf_counter() + budget
    while len(durations) < repeat and (
        len(durations) < 3 or time.perf_counter() < deadline
    ):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return median(durations)


async def bench_decision(
    worker_counts: tuple[int, ...] = (100, 1000, 10000), tasks: int = 1_000_000
) -> dict[str, Any]:
    """Seconds per evaluation, ``adaptive_target`` and ``workers_to_close``.

    Returns
    -------
    dict
        ``{"busy": {n: {...}}, "idle": {n: {...}}, "tasks": tasks,
        "seed_seconds": ..., "submit_seconds": ...}`` with the median seconds of each call.
    """
    busy, extra = await _busy(worker_counts, tasks)
    idle = {n: await _idle(n) for n in worker_counts}
    return {"tasks": tasks, "busy": busy, "idle": idle, **extra}


async def _attached_plugin(**options: Any) -> tuple[Any, AdaptivePlugin]:
    s = synthetic_scheduler()
    plugin = AdaptivePlugin(backend=NullBackend, **options)
    s.add_plugin(plugin)
    await plugin.start(s)
    return s, plugin


async def _busy(
    worker_counts: tuple[int, ...], tasks: int
) -> tuple[dict[int, dict[str, Any]], dict[str, float]]:
    s, plugin = await _attached_plugin(minimum=0, maximum=max(worker_counts))
    controller = plugin.controller
    assert controller is not None
    results = {}
    add_synthetic_workers(s, worker_counts[0])
    start = time.perf_counter()
    submit_synthetic_tasks(s, tasks)
    submitted = time.perf_counter() - start
    for n in worker_counts:
        add_synthetic_workers(s, n - len(s.workers))
        results[n] = {
            "evaluation": median_seconds(lambda: controller.decide(time.time())),
            "decision": controller.decide(time.time()).status,
            "adaptive_target": median_seconds(s.adaptive_target, repeat=20),
            "workers_to_close": median_seconds(s.workers_to_close, repeat=20),
            "queued": len(s.queued),
            "processing": sum(len(ws.processing) for ws in s.workers.values()),
        }
    stats = plugin.stats
    assert stats is not None
    extra = {
        "seed_seconds": median_seconds(lambda: stats.reseed(time.time()), 3, 0),
        "submit_seconds": submitted,
    }
    await _close(s, plugin)
    return results, extra


async def _idle(n: int) -> dict[str, Any]:
    s, plugin = await _attached_plugin(minimum=0, maximum=n)
    controller, stats = plugin.controller, plugin.stats
    assert controller is not None and stats is not None
    add_synthetic_workers(s, n)
    now = time.time()
    later = now + plugin.policy.idle_timeout + 1
    down = controller.decide(later)
    assert down.status == "down" and len(down.workers) == n, down
    timeout = plugin.policy.idle_timeout
    kept = AdaptivePolicy(minimum=n, maximum=n, idle_timeout=timeout)
    snapshot = stats.snapshot(pending=0, threads_per_worker=1)
    result = {
        "choose_none": median_seconds(
            lambda: policy.choose_idle_workers(snapshot, 0, later, timeout)
        ),
        "evaluation_hold": median_seconds(lambda: controller.decide(now)),
        "evaluation_retire_all": median_seconds(lambda: controller.decide(later), 50),
        "evaluation_kept_by_minimum": median_seconds(
            lambda: kept.decide(snapshot, later)
        ),
        "adaptive_target": median_seconds(s.adaptive_target, repeat=20),
        "workers_to_close": median_seconds(s.workers_to_close, repeat=20),
        "workers_to_close_count": len(s.workers_to_close()),
    }
    await _close(s, plugin)
    return result


async def _close(s: Any, plugin: AdaptivePlugin) -> None:
    await plugin.stop("benchmark done")
    await s.close()


# -- rows ------------------------------------------------------------------------------------


def decision_rows(results: dict[str, Any]) -> list[Row]:
    """Table rows in microseconds and milliseconds, with the targets."""
    busy, idle = results["busy"], results["idle"]
    counts = sorted(busy)
    rows = [_busy_row(n, busy[n], results["tasks"]) for n in counts]
    rows.append(_flat_row(busy, counts))
    rows += [_idle_row(n, idle[n]) for n in sorted(idle)]
    rows += [_retire_row(n, idle[n]) for n in sorted(idle)]
    rows += [_kept_row(n, idle[n]) for n in sorted(idle)]
    rows.append(
        Row(
            benchmark="3 decision",
            metric=f"seeding the statistics (one scan, {results['tasks']:,} tasks)",
            unit="ms",
            plugin=results["seed_seconds"] * 1e3,
            note="once, when the plugin attaches",
        )
    )
    return rows


def _busy_row(n: int, r: dict[str, Any], tasks: int) -> Row:
    return Row(
        benchmark="3 decision",
        metric=f"evaluation, {n:,} busy workers, {tasks:,} tasks",
        unit="µs",
        plugin=r["evaluation"] * 1e6,
        reference=r["adaptive_target"] * 1e6,
        reference_name="Scheduler.adaptive_target()",
        target="≤ 100 µs",
        holds=r["evaluation"] <= TARGET_EVALUATION,
        note=f"workers_to_close {r['workers_to_close'] * 1e6:,.0f} µs; "
        f"decision {r['decision']}",
    )


def _flat_row(busy: dict[Any, Any], counts: list[int]) -> Row:
    low, high = busy[counts[0]]["evaluation"], busy[counts[-1]]["evaluation"]
    growth = ratio(high, low)
    return Row(
        benchmark="3 decision",
        metric=f"evaluation at {counts[-1]:,} / at {counts[0]:,} busy workers",
        unit="×",
        plugin=growth,
        reference=ratio(
            busy[counts[-1]]["adaptive_target"], busy[counts[0]]["adaptive_target"]
        ),
        reference_name="adaptive_target, same ratio",
        target=f"flat (≤ {FLAT_FACTOR:g}×)",
        holds=growth <= FLAT_FACTOR,
    )


def _idle_row(n: int, r: dict[str, Any]) -> Row:
    return Row(
        benchmark="3 decision",
        metric=f"evaluation, {n:,} idle workers, none timed out (hold)",
        unit="µs",
        plugin=r["evaluation_hold"] * 1e6,
        reference=r["adaptive_target"] * 1e6,
        reference_name="Scheduler.adaptive_target()",
        target="≤ 100 µs",
        holds=r["evaluation_hold"] <= TARGET_EVALUATION,
    )


def _retire_row(n: int, r: dict[str, Any]) -> Row:
    return Row(
        benchmark="3 decision",
        metric=f"evaluation choosing {n:,} idle workers to retire",
        unit="ms",
        plugin=r["evaluation_retire_all"] * 1e3,
        reference=r["workers_to_close"] * 1e3,
        reference_name="Scheduler.workers_to_close()",
        target="≤ 5 ms at 10,000" if n >= 10_000 else "",
        holds=r["evaluation_retire_all"] <= TARGET_RETIRE if n >= 10_000 else None,
    )


def _kept_row(n: int, r: dict[str, Any]) -> Row:
    return Row(
        benchmark="3 decision",
        metric=f"evaluation, {n:,} idle workers all kept by minimum={n:,}",
        unit="µs",
        plugin=r["evaluation_kept_by_minimum"] * 1e6,
        reference=r["adaptive_target"] * 1e6,
        reference_name="Scheduler.adaptive_target()",
        target="≤ 100 µs",
        holds=r["evaluation_kept_by_minimum"] <= TARGET_EVALUATION,
        note=f"of which choose_idle_workers(count=0) {r['choose_none'] * 1e6:.2f} µs",
    )
