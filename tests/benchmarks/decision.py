"""Decision cost at scale: one evaluation beside ``Scheduler.adaptive_target``.

The scheduler state is synthetic (see :func:`benchmarks.common.add_synthetic_workers`):
a ``Scheduler`` that is never started, with the plugin attached as the
scheduler attaches it (``plugin.start(scheduler)``) before any worker or task
exists, so that its hooks see everything arrive. An evaluation is
``plugin.controller.decide(now)`` on the controller's own clock
(``controller.now()``, the event loop's monotonic time): the statistics
snapshot, the supply from the ledger, the policy and the planner's actions.
Synthetic workers are named ``"<pool>-<i>"``, so that the ledger attributes
them to their pool as it attributes workers a backend started.

Three states:

- **busy**, at every worker count: ``tasks`` independent tasks submitted
  through the scheduler's graph intake; each worker runs what it can and the
  rest is queued. Workers are added in steps (100, then 1,000, ...) and queued
  tasks move onto them.
- **idle**, at every worker count: only idle workers, no task. The evaluation
  is timed when no idle timeout has run out (``hold``), when all have
  (``down``: choosing the workers to retire, all of them), and the policy
  alone with a ``minimum`` equal to the number of workers (every worker idle
  for long but kept).
- **pools**: 10 pools whose workers provide 1 to 5 ``GPU`` and 64 or 128
  ``MEM``, dearer with more of either, and 20 resource classes of tasks
  (``resources={"GPU": 1..5, "MEM": 16..128}``), each served by one to ten
  pools, cheapest first. The tasks are submitted before any worker connects,
  so the scheduler's own transitions leave them all without a worker
  (``no-worker``); the workers then connect, spread evenly over the pools,
  and stay idle (the synthetic intake does not offer ``no-worker`` tasks to a
  new worker, see :func:`~benchmarks.common.add_synthetic_workers`).
"""

from __future__ import annotations

import dataclasses
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
from dask_adaptive_plugin import AdaptivePlugin, policy
from dask_adaptive_plugin.controller import Controller
from dask_adaptive_plugin.planner import Evaluation
from dask_adaptive_plugin.policy import Plan
from dask_adaptive_plugin.pools import Pool

TARGET_EVALUATION = 100e-6
TARGET_RETIRE = 5e-3
#: Flat: the evaluation at the most workers within this factor of the fewest.
FLAT_FACTOR = 2.0
#: The pools state: one pool per worker shape (GPUs, MEM per worker).
POOL_GPUS = (1, 2, 3, 4, 5)
POOL_MEMORY = (64, 128)
#: Its resource classes: what a task needs (GPUs, MEM).
CLASS_GPUS = (1, 2, 3, 4, 5)
CLASS_MEMORY = (16, 32, 64, 128)
#: Each pool may grow to this many times the workers it has.
POOL_HEADROOM = 2


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


def evaluate_now(controller: Controller) -> Evaluation:
    """One evaluation at the controller's own time, as its event loop runs one."""
    return controller.decide(controller.now())


def plan_status(plan: Plan) -> str:
    """``"up"``, ``"down"``, ``"up and down"`` or ``"hold"``."""
    kinds = [kind for kind, items in (("up", plan.ups), ("down", plan.downs)) if items]
    return " and ".join(kinds) or "hold"


def plan_summary(plan: Plan) -> dict[str, Any]:
    """What a plan does per pool, as plain data: ups (pool -> total asked
    for) and downs (pool -> workers to retire; ``"None"``: no pool's)."""
    return {
        "status": plan_status(plan),
        "ups": {up.pool: up.n for up in plan.ups},
        "downs": {str(down.pool): len(down.workers) for down in plan.downs},
        "unsatisfiable": len(plan.unsatisfiable),
    }


async def bench_decision(
    worker_counts: tuple[int, ...] = (100, 1000, 10000), tasks: int = 1_000_000
) -> dict[str, Any]:
    """Seconds per evaluation, ``adaptive_target`` and ``workers_to_close``.

    Returns
    -------
    dict
        ``{"busy": {n: {...}}, "idle": {n: {...}}, "pools": {...}, "tasks":
        tasks, "seed_seconds": ..., "submit_seconds": ...}`` with the median
        seconds of each call; the pools state has the most workers.
    """
    busy, extra = await _busy(worker_counts, tasks)
    idle = {n: await _idle(n) for n in worker_counts}
    pools = await bench_pools(workers=max(worker_counts), tasks=tasks)
    return {"tasks": tasks, "busy": busy, "idle": idle, "pools": pools, **extra}


async def _attached_plugin(**options: Any) -> tuple[Any, AdaptivePlugin]:
    s = synthetic_scheduler()
    if "pools" not in options:
        options["backend"] = NullBackend
    plugin = AdaptivePlugin(**options)
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
    add_synthetic_workers(s, worker_counts[0], pool="default")
    start = time.perf_counter()
    submit_synthetic_tasks(s, tasks)
    submitted = time.perf_counter() - start
    for n in worker_counts:
        add_synthetic_workers(s, n - len(s.workers), pool="default")
        results[n] = {
            "evaluation": median_seconds(lambda: evaluate_now(controller)),
            "decision": plan_status(evaluate_now(controller).plan),
            "adaptive_target": median_seconds(s.adaptive_target, repeat=20),
            "workers_to_close": median_seconds(s.workers_to_close, repeat=20),
            "queued": len(s.queued),
            "processing": sum(len(ws.processing) for ws in s.workers.values()),
        }
    stats = plugin.stats
    assert stats is not None
    extra = {
        "seed_seconds": median_seconds(stats.reseed, 3, 0),
        "submit_seconds": submitted,
    }
    await _close(s, plugin)
    return results, extra


async def _idle(n: int) -> dict[str, Any]:
    s, plugin = await _attached_plugin(minimum=0, maximum=n)
    controller, stats = plugin.controller, plugin.stats
    assert controller is not None and stats is not None
    planner = controller.planner
    add_synthetic_workers(s, n, pool="default")
    now = controller.now()
    later = now + plugin.pools[0].idle_timeout + 1
    down = controller.decide(later).plan
    assert sum(len(d.workers) for d in down.downs) == n, down
    snapshot = stats.snapshot()
    kept = dataclasses.replace(planner.supply(later), minimum=n)
    assert not plugin.policy.decide(snapshot, kept, later).downs
    result = {
        "choose_none": median_seconds(
            lambda: policy.choose_idle_workers(snapshot, kept, {"default": 0}, later)
        ),
        "evaluation_hold": median_seconds(lambda: controller.decide(now)),
        "evaluation_retire_all": median_seconds(lambda: controller.decide(later), 50),
        "evaluation_kept_by_minimum": median_seconds(
            lambda: plugin.policy.decide(snapshot, kept, later)
        ),
        "adaptive_target": median_seconds(s.adaptive_target, repeat=20),
        "workers_to_close": median_seconds(s.workers_to_close, repeat=20),
        "workers_to_close_count": len(s.workers_to_close()),
    }
    planner.minimum = n  # the same, as a whole evaluation
    result["evaluation_kept_whole"] = median_seconds(lambda: controller.decide(later))
    await _close(s, plugin)
    return result


# -- the pools state -------------------------------------------------------------------------


def pool_declarations(maximum: int) -> dict[str, dict[str, Any]]:
    """The pools: one per worker shape, each up to ``maximum`` workers.

    A worker with more GPUs costs more; 128 MEM costs half a GPU more than 64.
    """
    return {
        f"gpu{gpus}-mem{memory}": {
            "backend": NullBackend,
            "maximum": maximum,
            "resources": {"GPU": gpus, "MEM": memory},
            "cost": gpus + (0.5 if memory > min(POOL_MEMORY) else 0.0),
        }
        for gpus in POOL_GPUS
        for memory in POOL_MEMORY
    }


def resource_classes() -> list[dict[str, float]]:
    """What the tasks of each class need: every GPU count with every MEM amount."""
    return [{"GPU": g, "MEM": m} for g in CLASS_GPUS for m in CLASS_MEMORY]


def class_prefix(needs: dict[str, float]) -> str:
    """The task prefix of a class: ``"needs-GPU3-MEM32"``."""
    return "needs-" + "-".join(f"{r}{a:g}" for r, a in sorted(needs.items()))


async def bench_pools(workers: int = 10_000, tasks: int = 1_000_000) -> dict[str, Any]:
    """Seconds per evaluation with 10 pools and 20 resource classes.

    ``workers`` are spread evenly over the pools, ``tasks`` over the classes.

    Returns
    -------
    dict
        The median seconds of an evaluation and of ``adaptive_target``, the
        plan the evaluation makes (:func:`plan_summary`), the sizes built and
        how long building them took.
    """
    per_pool = max(1, workers // (len(POOL_GPUS) * len(POOL_MEMORY)))
    declarations = pool_declarations(POOL_HEADROOM * per_pool)
    s, plugin = await _attached_plugin(pools=declarations)
    controller = plugin.controller
    assert controller is not None
    classes = resource_classes()
    start = time.perf_counter()
    for needs in classes:
        submit_synthetic_tasks(s, tasks // len(classes), class_prefix(needs), needs)
    submitted = time.perf_counter() - start
    for name, declaration in declarations.items():
        add_synthetic_workers(
            s, per_pool, pool=name, resources=declaration["resources"]
        )
    evaluation = evaluate_now(controller)
    result = {
        "pools": len(declarations),
        "classes": len(controller.stats.needs()),
        "workers": len(s.workers),
        "tasks": len(s.tasks),
        "no_worker": len(s.unrunnable),
        "unclaimed_workers": controller.ledger.count(None, "running"),
        "fitting_pools": _fitting_pools(plugin.pools, classes),
        "plan": plan_summary(evaluation.plan),
        "evaluation": median_seconds(lambda: evaluate_now(controller), 500),
        "adaptive_target": median_seconds(s.adaptive_target, repeat=20),
        "submit_seconds": submitted,
    }
    await _close(s, plugin)
    return result


def _fitting_pools(
    pools: tuple[Pool, ...], classes: list[dict[str, float]]
) -> dict[str, list[str]]:
    """Class -> the pools that serve it, cheapest first (as the plugin orders them)."""
    by_cost = sorted(pools, key=lambda p: p.cost)
    return {
        class_prefix(needs): [p.name for p in by_cost if p.fits(needs)]
        for needs in classes
    }


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
    rows.append(_pools_row(results["pools"]))
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
        note=f"policy.decide alone; of which choose_idle_workers(nothing to "
        f"retire) {r['choose_none'] * 1e6:.2f} µs; whole evaluation "
        f"{r['evaluation_kept_whole'] * 1e6:.1f} µs",
    )


def _pools_row(r: dict[str, Any]) -> Row:
    return Row(
        benchmark="3 decision",
        metric=f"evaluation, {r['pools']} pools, {r['classes']} resource classes, "
        f"{r['workers']:,} workers, {r['tasks']:,} tasks",
        unit="µs",
        plugin=r["evaluation"] * 1e6,
        reference=r["adaptive_target"] * 1e6,
        reference_name="Scheduler.adaptive_target(), which ignores resources",
        target="≤ 100 µs",
        holds=r["evaluation"] <= TARGET_EVALUATION,
        note=f"plan: {_describe_plan(r['plan'])}",
    )


def _describe_plan(summary: dict[str, Any]) -> str:
    """``"up 10 pools (each to 2,000), down none"``, or each pool's number."""
    parts = []
    for kind, per_pool in (("up", summary["ups"]), ("down", summary["downs"])):
        counts = set(per_pool.values())
        if not per_pool:
            parts.append(f"{kind} none")
        elif len(counts) == 1 and len(per_pool) > 1:
            each = "to" if kind == "up" else "retiring"
            parts.append(f"{kind} {len(per_pool)} pools (each {each} {counts.pop():,})")
        else:
            parts.append(
                f"{kind} " + ", ".join(f"{p} {n:,}" for p, n in per_pool.items())
            )
    return ", ".join(parts)
