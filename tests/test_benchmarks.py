"""Smoke runs of every benchmark at tiny sizes: well-formed, positive results.

No timing target is asserted here; ``python tests/benchmarks/run.py`` measures.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from benchmarks import decision, efficiency, idle, memory, overhead, reaction, report
from benchmarks.common import Row, WorkerTimeline, machine_info

pytestmark = pytest.mark.benchmark


def positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def well_formed(rows: list[Row]) -> None:
    assert rows
    for row in rows:
        assert row.benchmark and row.metric and row.unit
        assert row.plugin is not None and math.isfinite(row.plugin)
        assert row.holds in (True, False, None)


def test_reaction() -> None:
    results = asyncio.run(reaction.bench_reaction(repeats=2))
    assert len(results["plugin"]) == len(results["adaptive"]) == 2
    assert all(positive(t) for t in results["plugin"] + results["adaptive"])
    well_formed(reaction.reaction_rows(results))


def test_overhead_and_hook() -> None:
    results = asyncio.run(overhead.bench_overhead(tasks=100, rounds=2))
    for side in ("with", "without"):
        assert len(results[side]) == 2 and all(positive(t) for t in results[side])
    assert results["hook_calls"] > 0 and results["evaluations"] > 0
    assert positive(results["hook_ns_total"])
    hook = asyncio.run(overhead.bench_transition_hook(workers=4, tasks=50, number=400))
    assert positive(hook["ns_per_call"]) and positive(hook["ns_per_call_detached"])
    well_formed(overhead.overhead_rows(results, hook))


def test_tree_sum_graph_sums_the_leaves() -> None:
    dsk, final = overhead.tree_sum_graph(11, "t")
    assert final in dsk and len(dsk) == 5 + 3 + 2 + 1  # leaves, then each level
    assert overhead.expected_sum(11) == 1 + 2 + 3 + 4 + 5


def test_decision() -> None:
    results = asyncio.run(decision.bench_decision(worker_counts=(10, 30), tasks=200))
    for n in (10, 30):
        busy, idle_ = results["busy"][n], results["idle"][n]
        assert all(positive(busy[k]) for k in ("evaluation", "adaptive_target"))
        assert busy["decision"] in ("up", "hold")
        assert all(
            positive(v) for k, v in idle_.items() if k != "workers_to_close_count"
        )
    assert results["pools"]["workers"] == 30
    well_formed(decision.decision_rows(results))


def test_decision_pools() -> None:
    """The pools state, tiny: every class, every pool, and a real plan."""
    results = asyncio.run(decision.bench_pools(workers=20, tasks=2000))
    assert (results["pools"], results["classes"]) == (10, 20)
    assert (results["workers"], results["tasks"]) == (20, 2000)
    assert results["no_worker"] == 2000 and results["unclaimed_workers"] == 0
    fitting = results["fitting_pools"]
    assert fitting["needs-GPU5-MEM128"] == ["gpu5-mem128"]
    assert len(fitting["needs-GPU1-MEM16"]) == 10
    # 100 tasks per class want more than the two workers of each pool:
    # every pool grows to its maximum, twice that
    assert results["plan"]["ups"] == dict.fromkeys(fitting["needs-GPU1-MEM16"], 4)
    assert positive(results["evaluation"]) and positive(results["adaptive_target"])


def test_idle() -> None:
    results = idle.bench_idle(seconds=1.0, windows=2)
    assert set(results) == set(idle.SIDES)
    assert all(
        len(r["cpu"]) == 2 and all(c >= 0 for c in r["cpu"]) for r in results.values()
    )
    assert results["plugin"]["evaluations"] == 0
    well_formed(idle.idle_rows(results))


def test_memory() -> None:
    results = asyncio.run(memory.bench_memory(workers=20, tasks=100))
    assert positive(results["workers"]["plugin"])
    assert all(results[k]["total"] > 0 for k in ("workers", "tasks"))
    well_formed(memory.memory_rows(results))


def test_efficiency_and_startup(tmp_path: Path) -> None:
    tiny = (
        efficiency.Bursts("burst", bursts=1, tasks_per_burst=2, task_seconds=0.05),
    )
    results = asyncio.run(
        efficiency.bench_efficiency(tiny, repeats=1, maximum=1, horizon=0.5)
    )
    for side in ("plugin", "adaptive", "cluster_adaptive"):
        (run,) = results["workloads"]["burst"][side]
        assert positive(run["makespan"]) and positive(run["worker_seconds"])
        assert run["series"][0] == (0.0, 0)
    startup = asyncio.run(efficiency.bench_worker_startup(repeats=1))
    assert all(positive(t) for times in startup.values() for t in times)
    rows = efficiency.efficiency_rows(results, startup)
    well_formed(rows)
    assert [r.metric for r in rows if "ClusterAdaptive" in r.benchmark] == [
        "submit → cluster.scale, median of 1",
        "makespan, median of 1",
        "worker-seconds, median of 1",
    ]
    report.plot_efficiency(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


@pytest.mark.parametrize(
    "workload",
    [
        efficiency.Bursts("notebook", 2, (2, 1), 0.05, pauses=(0.1,)),
        efficiency.DataFramePipeline("dataframe", days=2),
        efficiency.ArrayReduction("array", size=1000, chunk=500),
    ],
    ids=lambda w: w.name,
)
def test_each_kind_of_workload_computes_on_the_plugin(workload) -> None:
    """The notebook, dataframe (P2P shuffle) and array workloads run on
    real ``dask worker`` processes the plugin starts."""
    run = asyncio.run(efficiency.plugin_run(workload, maximum=1, horizon=0.5))
    assert positive(run["makespan"]) and run["workers_started"] >= 1


def test_worker_timeline_integrates_steps() -> None:
    timeline = WorkerTimeline()
    timeline.changes = [(0.0, 0), (1.0, 2), (3.0, 1), (4.0, 0)]
    assert timeline.worker_seconds(0.0, 5.0) == pytest.approx(2 * 2 + 1 * 1)
    assert timeline.worker_seconds(2.0, 3.5) == pytest.approx(2 * 1 + 1 * 0.5)
    assert timeline.back_to(0, 1.5) == 4.0


def test_report_table_and_generated_block() -> None:
    rows = [Row("b", "m", "s", 1.0, 2.0, "ref", "t", True)]
    table = report.markdown_table(rows)
    assert "| b | m | s | 1 | 2 (ref) | 0.5 | t | ✅ yes |" in table
    document = report.replace_generated("# Title\n", "first")
    assert report.replace_generated(document, "second").count("second") == 1
    assert "first" not in report.replace_generated(document, "second")
    assert machine_info()["cores"] >= 1
