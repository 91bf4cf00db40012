"""Scheduler overhead: the same graph with and without the plugin installed.

A fixed ``LocalCluster`` (scheduler and client in this process, worker
processes) computes the same graph of many small tasks (a map of
``operator.add`` over integers and a tree sum over the results) in rounds that
alternate ABBA between a scheduler without the plugin and the same scheduler
with it. The plugin has ``minimum = maximum =`` the workers there are, so it
evaluates on every burst of events but never scales; its backend counts calls
and must see none.

Also here: the cost of one ``AdaptivePlugin.transition`` call, by ``timeit``
on a synthetic scheduler, and as total hook time over transitions in a real run.
"""

from __future__ import annotations

import asyncio
import gc
import operator
import time
import timeit
from typing import Any

from distributed import Client, LocalCluster, Scheduler

from benchmarks.common import (
    NullBackend,
    Row,
    add_synthetic_workers,
    median,
    ratio,
    submit_synthetic_tasks,
    synthetic_scheduler,
)
from dask_adaptive_plugin import AdaptivePlugin

TARGET_SLOWDOWN = 0.03


class TimedAdaptivePlugin(AdaptivePlugin):
    """The plugin, adding up the time spent in its ``transition`` hook."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.durations_ns: list[int] = []

    def transition(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter_ns()
        super().transition(*args, **kwargs)
        self.durations_ns.append(time.perf_counter_ns() - start)


# -- the graph ---------------------------------------------------------------------------


def tree_sum_graph(tasks: int, tag: str) -> tuple[dict[str, Any], str]:
    """About ``tasks`` tasks: ``tasks // 2`` leaves and a pairwise sum over them.

    Returns the graph and the key of its one result. ``tag`` keeps the keys of
    two runs apart (the prefixes, and so the duration estimates, are shared).
    """
    leaves = max(2, tasks // 2)
    dsk: dict[str, Any] = {
        f"leaf-{tag}-{i}": (operator.add, i, 1) for i in range(leaves)
    }
    level, layer = 0, list(dsk)
    while len(layer) > 1:
        level += 1
        nxt = []
        for j in range(0, len(layer), 2):
            key = f"sum-{tag}-{level}-{j // 2}"
            dsk[key] = (
                (operator.add, layer[j], layer[j + 1])
                if j + 1 < len(layer)
                else layer[j]
            )
            nxt.append(key)
        layer = nxt
    return dsk, layer[0]


def expected_sum(tasks: int) -> int:
    leaves = max(2, tasks // 2)
    return sum(range(1, leaves + 1))


# -- with and without ------------------------------------------------------------------------


async def bench_overhead(
    tasks: int = 5000, rounds: int = 4, workers: int = 2
) -> dict[str, Any]:
    """Seconds (wall and this process's CPU) per graph, with and without the plugin.

    The sides alternate ABBA, round by round.

    Returns
    -------
    dict
        ``{"with": [...], "without": [...]}`` (wall seconds), ``"cpu_with"``,
        ``"cpu_without"``, ``"tasks"`` (in the graph), ``"transitions"`` (per
        graph), and the hook timing of one extra run (``"hook_ns_per_transition"``).
    """
    async with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            asynchronous=True,
            dashboard_address=":0",
            host="127.0.0.1",
        ) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        s = cluster.scheduler
        await _compute(client, s, tasks, "warmup")
        results: dict[str, Any] = {
            k: [] for k in ("with", "without", "cpu_with", "cpu_without")
        }
        for r in range(rounds):
            for side in ("without", "with") if r % 2 == 0 else ("with", "without"):
                wall, cpu, transitions = await _one_run(
                    client, s, tasks, f"{r}{side}", side, workers
                )
                results[side].append(wall)
                results[f"cpu_{side}"].append(cpu)
        results["tasks"] = len(tree_sum_graph(tasks, "x")[0])
        results["transitions"] = transitions
        results.update(await _hook_time_in_a_real_run(client, s, tasks, workers))
    return results


async def _one_run(
    client: Client, s: Scheduler, tasks: int, tag: str, side: str, workers: int
) -> tuple[float, float, int]:
    plugin = await _install(s, AdaptivePlugin, workers) if side == "with" else None
    try:
        return await _compute(client, s, tasks, tag)
    finally:
        if plugin is not None:
            await _uninstall(s, plugin)


async def _install(
    s: Scheduler, cls: type[AdaptivePlugin], workers: int
) -> AdaptivePlugin:
    plugin = cls(backend=NullBackend, minimum=workers, maximum=workers)
    s.add_plugin(plugin)
    while plugin.controller is None:
        await asyncio.sleep(0.001)
    return plugin


async def _uninstall(s: Scheduler, plugin: AdaptivePlugin) -> None:
    backend = plugin.backend
    await plugin.stop("benchmark round done")
    s.remove_plugin("adaptive")
    assert backend is not None and backend.calls == 0, (
        "the plugin should not scale here"
    )


async def _compute(
    client: Client, s: Scheduler, tasks: int, tag: str
) -> tuple[float, float, int]:
    """Run the graph once: wall seconds, CPU seconds of this process, transitions."""
    dsk, final = tree_sum_graph(tasks, tag)
    gc.collect()
    transitions = s.transition_counter
    wall, cpu = time.perf_counter(), time.process_time()
    result = await client.get(dsk, final, sync=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result == expected_sum(tasks)
    await asyncio.sleep(0.2)  # let the released keys be forgotten before the next run
    return wall, cpu, s.transition_counter - transitions


async def _hook_time_in_a_real_run(
    client: Client, s: Scheduler, tasks: int, workers: int
) -> dict[str, Any]:
    plugin = await _install(s, TimedAdaptivePlugin, workers)
    assert isinstance(plugin, TimedAdaptivePlugin) and plugin.controller is not None
    evaluations = _time_evaluations(plugin.controller)
    try:
        wall, cpu, _ = await _compute(client, s, tasks, "timed")
    finally:
        await _uninstall(s, plugin)
    clock = _timer_overhead_ns()
    durations = sorted(plugin.durations_ns)
    in_plugin = (sum(durations) + sum(evaluations)) / 1e9
    return {
        "run_wall": wall,
        "run_cpu": cpu,
        "evaluations": len(evaluations),
        "evaluation_ns_median": median(evaluations),
        "evaluation_ns_total": sum(evaluations),
        "plugin_share_of_cpu": ratio(in_plugin, cpu),
        "hook_calls": len(durations),
        "hook_ns_total": sum(durations),
        "timer_overhead_ns": clock,
        "hook_ns_per_transition": ratio(sum(durations), len(durations)) - clock,
        "hook_ns_median": median(durations) - clock,
        "hook_ns_p99": durations[int(0.99 * (len(durations) - 1))] - clock,
    }


def _time_evaluations(controller: Any) -> list[int]:
    """Note how long each of the controller's evaluations takes (this run only)."""
    durations: list[int] = []
    evaluate = controller._evaluate

    def timed_evaluate() -> None:
        start = time.perf_counter_ns()
        evaluate()
        durations.append(time.perf_counter_ns() - start)

    controller._evaluate = timed_evaluate
    return durations


def _timer_overhead_ns(calls: int = 200_000) -> float:
    """What the two ``perf_counter_ns`` calls around a hook cost by themselves."""
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(calls):
        t = clock()
        t = clock() - t
    return (clock() - start) / calls


# -- one hook call, timed alone --------------------------------------------------------------------


async def bench_transition_hook(
    workers: int = 10, tasks: int = 1000, number: int = 50_000
) -> dict[str, Any]:
    """Nanoseconds per ``AdaptivePlugin.transition`` call, by ``timeit``.

    On a synthetic scheduler with ``workers`` workers and ``tasks`` tasks (some
    processing, the rest queued), one real task goes around the cycle
    released → waiting → processing → memory → released (the hook only: the
    scheduler's state is not changed), so the counters return to where they
    were. Beside it, the same calls on a plugin that is not attached (the
    hook's early return), which is the floor of a Python method call.
    """
    s = synthetic_scheduler()
    plugin = AdaptivePlugin(backend=NullBackend, minimum=0, maximum=workers)
    s.add_plugin(plugin)
    await plugin.start(s)
    add_synthetic_workers(s, workers)
    submit_synthetic_tasks(s, tasks)
    ts = next(t for t in s.tasks.values() if t.state == "processing")
    address = ts.processing_on.address
    cycle = _cycle(plugin, ts.key, address)
    detached = AdaptivePlugin(backend=NullBackend)
    floor = _cycle(detached, ts.key, address)
    result = {
        "ns_per_call": _ns_per_call(cycle, number),
        "ns_per_call_detached": _ns_per_call(floor, number),
        "workers": workers,
        "tasks": tasks,
    }
    await plugin.stop()
    await s.close()
    return result


def _cycle(plugin: AdaptivePlugin, key: str, worker: str) -> Any:
    hook = plugin.transition

    def four_transitions() -> None:
        hook(key, "released", "waiting", stimulus_id="b")
        hook(key, "waiting", "processing", stimulus_id="b")
        hook(key, "processing", "memory", stimulus_id="b", worker=worker)
        hook(key, "memory", "released", stimulus_id="b")

    return four_transitions


def _ns_per_call(cycle: Any, number: int, repeat: int = 5) -> float:
    runs = timeit.repeat(cycle, number=max(1, number // 4), repeat=repeat)
    return min(runs) / (max(1, number // 4) * 4) * 1e9


# -- rows ----------------------------------------------------------------------------------------


def overhead_rows(
    results: dict[str, Any], hook: dict[str, Any] | None = None
) -> list[Row]:
    """Table rows: graph time with and without, and the hook's cost."""
    with_, without = median(results["with"]), median(results["without"])
    cpu_with, cpu_without = median(results["cpu_with"]), median(results["cpu_without"])
    slowdown = ratio(with_, without) - 1
    n = len(results["with"])
    rows = [
        Row(
            benchmark="2 overhead",
            metric=f"{results['tasks']:,}-task graph, wall, median of {n}",
            unit="s",
            plugin=with_,
            reference=without,
            reference_name="no plugin",
            target="≤ 3% slower",
            holds=slowdown <= TARGET_SLOWDOWN,
            note=f"{slowdown:+.1%}",
        ),
        Row(
            benchmark="2 overhead",
            metric="same, CPU of scheduler+client process",
            unit="s",
            plugin=cpu_with,
            reference=cpu_without,
            reference_name="no plugin",
            note=f"{ratio(cpu_with, cpu_without) - 1:+.1%}",
        ),
        Row(
            benchmark="2 overhead",
            metric=f"transition hook in the real run, mean of {results['hook_calls']:,}",
            unit="ns/call",
            plugin=results["hook_ns_per_transition"],
            note=f"median {results['hook_ns_median']:.0f} ns, p99 "
            f"{results['hook_ns_p99']:.0f} ns; timer's "
            f"{results['timer_overhead_ns']:.0f} ns subtracted",
        ),
        Row(
            benchmark="2 overhead",
            metric=f"time in the plugin (hooks + {results['evaluations']:,} "
            "evaluations) / process CPU",
            unit="%",
            plugin=100 * results["plugin_share_of_cpu"],
            note=f"evaluation median {results['evaluation_ns_median'] / 1e3:.0f} µs",
        ),
    ]
    if hook is not None:
        rows.append(
            Row(
                benchmark="2 overhead",
                metric="transition hook, timeit (attached vs detached)",
                unit="ns/call",
                plugin=hook["ns_per_call"],
                reference=hook["ns_per_call_detached"],
                reference_name="detached hook (early return)",
            )
        )
    return rows
