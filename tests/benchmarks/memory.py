"""Memory: bytes the plugin keeps per worker and per task.

``tracemalloc`` counts the memory still allocated after N workers, then N
tasks, are added to a synthetic scheduler with the plugin attached, and
attributes each block to the file that allocated it: blocks allocated in
``dask_adaptive_plugin`` are the plugin's, the rest the scheduler's own
(shown for scale). Tasks are counted while they sit in the scheduler
(processing or queued), and again once they have all finished and are in
memory, as the difference between N and 2N tasks.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    NullBackend,
    Row,
    add_synthetic_workers,
    ratio,
    submit_synthetic_tasks,
    synthetic_scheduler,
)
from dask_adaptive_plugin import AdaptivePlugin

PLUGIN_FILES = "*dask_adaptive_plugin*"


def allocated(action: Callable[[], Any]) -> dict[str, int]:
    """Bytes still allocated after ``action()``, by the plugin and by everything."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    action()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    only_plugin = [tracemalloc.Filter(True, PLUGIN_FILES)]
    return {
        "plugin": _grown(
            before.filter_traces(only_plugin), after.filter_traces(only_plugin)
        ),
        "total": _grown(before, after),
    }


def _grown(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


async def bench_memory(workers: int = 1000, tasks: int = 10_000) -> dict[str, Any]:
    """Bytes per worker, and per task as the difference of ``tasks`` and ``2 * tasks``.

    Per task, the difference between a run with ``2 * tasks`` and one with
    ``tasks`` (same workers) leaves out what depends on the workers only (a
    worker's entry moving between the idle and busy mappings, its idle-since
    time), which a plain division would spread over the tasks.

    Returns
    -------
    dict
        ``{"workers": {...}, "tasks": {...}, "tasks_in_memory": {...}}``, each
        ``{"plugin": bytes, "total": bytes, "count": n}``.
    """
    small = await _one_state(workers, tasks)
    large = await _one_state(workers, 2 * tasks)
    return {
        "workers": {**small["workers"], "count": workers},
        "tasks": {**_difference(large["tasks"], small["tasks"]), "count": tasks},
        "tasks_in_memory": {
            **_difference(large["finished"], small["finished"]),
            "count": tasks,
        },
    }


def _difference(large: dict[str, int], small: dict[str, int]) -> dict[str, int]:
    return {k: large[k] - small[k] for k in small}


async def _one_state(workers: int, tasks: int) -> dict[str, dict[str, int]]:
    s = synthetic_scheduler()
    plugin = AdaptivePlugin(backend=NullBackend, minimum=0, maximum=workers)
    s.add_plugin(plugin)
    await plugin.start(s)
    result = {
        "workers": allocated(lambda: add_synthetic_workers(s, workers)),
        "tasks": allocated(lambda: submit_synthetic_tasks(s, tasks)),
        "finished": allocated(lambda: _finish_all(s)),
    }
    await plugin.stop()
    await s.close()
    return result


def _finish_all(s: Any) -> None:
    """Every task finishes, as the workers' ``task-finished`` messages report it."""
    while processing := [ts for ts in s.tasks.values() if ts.state == "processing"]:
        for ts in processing:
            now = time.time()
            s.handle_task_finished(
                key=ts.key,
                worker=ts.processing_on.address,
                stimulus_id="benchmark-finish",
                run_id=ts.run_id,
                metadata={},
                nbytes=8,
                type=None,
                typename="int",
                startstops=[{"action": "compute", "start": now, "stop": now}],
            )


def memory_rows(results: dict[str, Any]) -> list[Row]:
    """Table rows in bytes per worker and per task."""
    rows = []
    for what, label in (
        ("workers", "per worker"),
        ("tasks", "per task (processing/queued)"),
        ("tasks_in_memory", "per task (in memory)"),
    ):
        r = results[what]
        per_plugin = ratio(r["plugin"], r["count"])
        rows.append(
            Row(
                benchmark="5 memory",
                metric=f"bytes kept {label}, {r['count']:,} added"
                + (" (2N − N)" if what != "workers" else ""),
                unit="B",
                plugin=per_plugin,
                reference=ratio(r["total"], r["count"]),
                reference_name="whole process (scheduler + plugin)",
                target="0 per task" if what != "workers" else "",
                holds=None if what == "workers" else per_plugin < 1,
            )
        )
    return rows
