"""The simulator: the real planner and policy in virtual time, against
simulated pools and a simulated scheduler. Small workloads: seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test, inc, slowinc
from helpers import adaptive_cluster, until

from dask_adaptive_plugin.ledger import RUNNING
from dask_adaptive_plugin.simulate import (
    ConfigError,
    TraceError,
    WorkloadError,
    load_settings,
    load_workload,
    simulate,
)
from dask_adaptive_plugin.simulate.engine import Engine
from dask_adaptive_plugin.simulate.report import Histogram

#: One pool, unbounded but for ``maximum``, workers connecting after 1 s.
ONE_SECOND = {"maximum": 10, "simulate": {"latency": "1s"}}


def burst(tasks: int = 100, duration: str = "3s", **fields) -> dict:
    return {"phases": [{"kind": "burst", "tasks": tasks, "duration": duration, **fields}]}


MIXED = {
    "phases": [
        {"kind": "burst", "tasks": 200, "duration": {"median": "2s", "p90": "8s"}},
        {"kind": "trickle", "for": "2m", "rate": "1/s", "duration": "1s"},
        {"kind": "notebook", "sessions": 3, "for": "5m", "cells": 4,
         "think": {"median": "20s", "p90": "1m"}, "duration": "3s"},
        {"kind": "burst", "at": "1m", "tasks": 20, "duration": "5s",
         "resources": {"GPU": 1}},
    ]
}
POOLS = {
    "pools": {
        "cpu": {"backend": "local", "maximum": 20},
        "gpu": {"backend": "local", "maximum": 4, "cost": 5, "resources": {"GPU": 1}},
    },
    "simulate": {
        "latency": {"median": "10s", "p90": "40s"},
        "pools": {"cpu": {"never-deliver": 0.1}},
    },
}


# -- determinism ---------------------------------------------------------------------------


def test_the_same_workload_and_seed_give_the_same_figures():
    first = simulate(MIXED, POOLS, seed=3)
    second = simulate(MIXED, POOLS, seed=3)
    assert first.figures() == second.figures()
    assert first.finished == first.tasks > 200
    other = simulate(MIXED, POOLS, seed=4)
    assert other.figures() != first.figures()  # the seed does draw


def test_the_same_figures_in_another_process(tmp_path: Path):
    """No dict or set order that depends on the process (hash seeds)."""
    workload, config = _write(tmp_path, MIXED, _dask_config(POOLS))
    here = simulate(workload, config, seed=1).figures()
    out = _cli(workload, "--config", config, "--json", "--seed", "1",
               env={"PYTHONHASHSEED": "123"})
    assert json.loads(out)["figures"] == json.loads(json.dumps(here))


# -- each kind of phase ----------------------------------------------------------------------


def test_a_burst_on_a_pool_with_a_fixed_latency():
    result = simulate(burst(100, "3s"), ONE_SECOND)
    assert result.time_to_first_worker == 1.0
    # ten workers from 1 s on, ten rounds of 3 s
    assert result.makespan == pytest.approx(31.0)
    assert result.finished == result.tasks == 100
    assert result.pools["default"].peak_workers == 10
    assert result.pools["default"].busy_seconds == pytest.approx(300)
    waits = result.waits.summary()
    assert waits["max"] == pytest.approx(28.0)  # the last round starts at 28 s
    assert waits["p50"] == pytest.approx(13.0, rel=0.02)
    # the workers retire once idle: the cluster ends empty
    assert result.records["up"] == 1 and result.records["down"] >= 1
    assert result.pools["default"].worker_seconds >= 10 * 30


def test_a_trickle_arrives_at_its_rate():
    result = simulate(
        {"phases": [{"kind": "trickle", "for": "60s", "rate": "2/s",
                     "arrivals": "regular", "duration": "1s"}]},
        ONE_SECOND,
    )
    assert result.tasks == result.finished == 120
    # the policy lets up to target-duration (5 s) of work wait: two workers
    # keep up, with a backlog of a few tasks
    assert 60 <= result.makespan <= 65
    assert result.pools["default"].peak_workers == 2
    assert result.waits.max <= 5


def test_bursts_with_pauses_scale_up_and_down_for_each():
    result = simulate(
        {"phases": [{"kind": "bursts", "count": 3, "every": "5m", "tasks": 20,
                     "duration": "10s"}]},
        {"maximum": 10, "idle_timeout": "30s", "simulate": {"latency": "5s"}},
    )
    assert result.tasks == result.finished == 60
    assert 600 + 5 + 20 <= result.makespan <= 600 + 5 + 25
    assert result.pools["default"].ups >= 3  # the cluster empties between bursts
    assert result.records["down"] >= 3


def test_bursts_with_awaited_results_pause_after_each_burst_ends():
    result = simulate(
        {"phases": [{"kind": "bursts", "count": 3, "pauses": ["10s", "20s"],
                     "tasks": 2, "duration": "1s"}]},
        {"minimum": 1, "maximum": 1},
    )
    # one worker: burst 1 runs 0-2 s, pause 10 s, burst 2 at 12-14 s,
    # pause 20 s, burst 3 at 34-36 s (the pauses cycle; there is no fourth)
    assert result.tasks == result.finished == 6
    assert result.makespan == pytest.approx(36)
    assert result.waits.max == pytest.approx(1)  # the second task of each burst


def test_notebook_sessions_wait_for_results_then_think():
    result = simulate(
        {"phases": [{"kind": "notebook", "sessions": 2, "for": "100s", "cells": 5,
                     "think": "10s", "duration": "2s"}]},
        {"minimum": 2, "maximum": 2},
    )
    # each session: think 10 s, a cell of 5 tasks on its share of 2 workers
    # (2 s a round, 3 rounds between them), think 10 s...: about one cell
    # every 16 s, so five or six cells in 100 s
    cells = result.tasks // 5
    assert result.tasks % 5 == 0 and result.finished == result.tasks
    assert 2 * 5 <= cells <= 2 * 7
    assert result.waits.max < 10  # never waits for a worker: minimum 2


def test_a_daily_cycle_follows_its_rate():
    result = simulate(
        {"phases": [{"kind": "daily", "period": "10m", "days": 2, "peak": "10/s",
                     "arrivals": "regular", "every": "10s", "duration": "1s"}]},
        {"maximum": 20, "simulate": {"latency": "5s"}},
    )
    # a cosine from 0 to 10/s: on average 5/s over two periods of 600 s
    assert result.tasks == pytest.approx(6000, abs=2)
    assert result.finished == result.tasks
    assert result.pools["default"].ups >= 2  # one per day, at least


def test_chains_run_link_after_link():
    result = simulate(burst(10, "1s", chain=3), {"minimum": 1, "maximum": 1})
    assert result.tasks == result.finished == 30
    assert result.makespan == pytest.approx(30.0)  # 30 links, one thread


def test_lognormal_durations_have_their_median():
    result = simulate(
        burst(2000, {"median": "2s", "p90": "6s"}), {"minimum": 2000, "maximum": 2000}
    )
    busy = result.pools["default"].busy_seconds
    # the mean of a lognormal is above its median: exp(sigma^2 / 2) * median
    assert 2000 * 2 < busy < 2000 * 4


# -- pools ---------------------------------------------------------------------------------------


def test_tasks_needing_a_gpu_go_to_the_gpu_pool_and_plain_tasks_do_not():
    result = simulate(
        {"phases": [
            {"kind": "burst", "tasks": 40, "duration": "5s"},
            {"kind": "burst", "at": "2m", "tasks": 8, "duration": "5s",
             "resources": {"GPU": 1}},
        ]},
        {**POOLS, "simulate": {"latency": "3s"}},
    )
    assert result.finished == 48
    cpu, gpu = result.pools["cpu"], result.pools["gpu"]
    assert cpu.busy_seconds == pytest.approx(40 * 5)
    assert gpu.busy_seconds == pytest.approx(8 * 5)
    assert gpu.peak_workers == 4  # its maximum


def test_a_pool_that_never_delivers_falls_back_to_the_dearer_one():
    """As tests/test_pools.py shows with real workers: the cheap pool's
    requests time out, and the dear pool serves."""
    config = {
        "pools": {
            "spot": {"backend": "local", "cost": 1, "start_timeout": "30s"},
            "on-demand": {"backend": "local", "cost": 3, "maximum": 5},
        },
        "simulate": {
            "pools": {"spot": {"never-deliver": 1.0}, "on-demand": {"latency": "10s"}}
        },
    }
    result = simulate(burst(50, "10s"), config)
    assert result.finished == 50
    spot, dear = result.pools["spot"], result.pools["on-demand"]
    assert spot.worker_seconds == 0 and spot.requested == spot.cancelled > 0
    assert dear.busy_seconds == pytest.approx(500)
    story = [(e["status"], e.get("pool")) for _, e in result.log]
    assert story[:4] == [
        ("up", "spot"),
        ("error", "spot"),
        ("fallback", "spot"),
        ("up", "on-demand"),
    ]
    assert result.time_to_first_worker == pytest.approx(30 + 10, abs=0.1)


def test_a_need_no_pool_provides_is_left_unfinished_and_the_run_ends():
    result = simulate(burst(5, "1s", resources={"FPGA": 1}), POOLS)
    assert result.finished == 0 and result.unfinished == 5
    assert result.records.get("unsatisfiable") == 1
    assert result.worker_seconds == 0


def test_the_ledger_agrees_with_the_simulated_scheduler_at_the_end():
    workload = load_workload(MIXED)
    engine = Engine(load_settings({**POOLS, "minimum": 3}), workload, seed=0)
    engine.run()
    ledger = engine.planner.ledger
    running = {e.address for e in ledger.entries() if e.state == RUNNING}
    assert running == set(engine.workers) and len(running) == 3
    # learned as the scheduler learns them, after 0.5 s for a prefix unseen
    assert engine.estimate("trickle") == 1.0
    assert engine.estimate("nothing-yet") == 0.5


def test_the_fixed_policy_keeps_its_number():
    result = simulate(burst(30, "2s"), {"policy": "fixed", "n": 3, "maximum": 10})
    assert result.pools["default"].peak_workers == 3
    assert result.makespan == pytest.approx(20.0)


def test_a_dask_config_file_and_keyword_arguments_are_the_same_config(tmp_path: Path):
    _, path = _write(tmp_path, {}, _dask_config(POOLS))
    from_file = simulate(MIXED, path).figures()
    from_arguments = simulate(MIXED, POOLS).figures()
    for figures in (from_file, from_arguments):
        del figures["config"]
    assert from_file == from_arguments


# -- a recorded trace and a task stream ----------------------------------------------------------


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_recorded_trace_replays(tmp_path: Path):
    path = tmp_path / "trace.jsonl"
    async with adaptive_cluster(maximum=2, record_trace=str(path)) as (_, c, _, _):
        slow = c.map(slowinc, range(6), delay=0.1, pure=False)
        after = c.map(inc, slow)  # dependents: runnable when their input is
        gpu = c.map(inc, range(3), resources={"GPU": 1}, pure=False)
        await c.gather(after + gpu)
        await until(lambda: path.exists() and "durations" in path.read_text())
    result = simulate(path, {"maximum": 2, "simulate": {"latency": "1s"}})
    assert result.workload == f"trace {path}"
    assert result.tasks == result.finished == 15
    busy = result.pools["default"].busy_seconds
    assert busy == pytest.approx(0.6, rel=0.5)  # six slowinc of 0.1 s, and the rest
    assert result.figures() == simulate(path, {"maximum": 2, "simulate": {"latency": "1s"}}).figures()


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_saved_task_stream_replays(tmp_path: Path):
    async with (
        Scheduler(dashboard_address=":0", host="127.0.0.1") as s,
        Worker(s.address, nthreads=2),
        Client(s.address, asynchronous=True) as c,
    ):
        await c.get_task_stream()  # the scheduler records from now on
        slow = c.map(slowinc, range(6), delay=0.05, pure=False)
        await c.gather(c.map(inc, slow))
        stream = await c.get_task_stream()
    path = tmp_path / "stream.json"
    path.write_text(json.dumps(stream, default=str, indent=1))
    assert load_workload(path).source == f"task stream {path}"
    result = simulate(path, ONE_SECOND)
    assert result.tasks == result.finished == len(stream) == 12
    assert result.pools["default"].busy_seconds >= 6 * 0.05
    # one record a line works too
    lines = tmp_path / "stream.jsonl"
    lines.write_text("\n".join(json.dumps(r, default=str) for r in stream))
    assert simulate(lines, ONE_SECOND).figures()["pools"] == result.figures()["pools"]


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phases, message",
    [
        ([{"kind": "avalanche"}], r"phase 1: invalid kind: 'avalanche'; expected one of burst"),
        ([{"kind": "burst", "tasks": 3}], r"phase 1 \(burst\): missing field duration"),
        (
            [{"kind": "burst", "tasks": 1, "duration": "1s"},
             {"kind": "trickle", "name": "api", "rate": "10/s", "duration": "1s"}],
            r"phase 2 \(trickle 'api'\): missing field end or for",
        ),
        ([{"kind": "burst", "tasks": -1, "duration": "1s"}], r"phase 1 \(burst\): invalid tasks: -1"),
        ([{"kind": "burst", "tasks": 1, "duration": "soon"}], r"invalid duration: 'soon'; expected a duration"),
        (
            [{"kind": "burst", "tasks": 1, "duration": {"median": "5s", "p90": "1s"}}],
            r"invalid duration: .*median <= p90",
        ),
        ([{"kind": "trickle", "for": "1m", "rate": "fast", "duration": "1s"}], r"invalid rate: 'fast'"),
        ([{"kind": "burst", "tasks": 1, "duration": "1s", "colour": "red"}], r"unknown field\(s\) \['colour'\]"),
        ([{"kind": "burst", "tasks": 1, "duration": "1s", "resources": {"GPU": "x"}}], r"invalid resources"),
        ([{"kind": "notebook", "for": "1m", "cells": 2, "duration": "1s"}], r"missing field think"),
        ([{"kind": "bursts", "count": 2, "tasks": 1, "duration": "1s"}], r"missing field every or pauses"),
        (
            [{"kind": "bursts", "count": 2, "tasks": 1, "duration": "1s", "every": "1m", "pauses": ["1s"]}],
            r"give every or pauses, not both",
        ),
        ([{"kind": "bursts", "count": 2, "tasks": 1, "duration": "1s", "pauses": []}], r"invalid pauses: \[\]"),
        ([{"kind": "bursts", "count": 2, "tasks": 1, "duration": "1s", "pauses": ["later"]}], r"invalid pauses"),
    ],
)
def test_a_bad_phase_is_named_with_its_field(tmp_path: Path, phases, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"phases": phases}))
    with pytest.raises(WorkloadError, match=message) as info:
        simulate(path)
    assert str(path) in str(info.value)


def test_bad_yaml_names_the_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("phases:\n  - kind: burst\n    tasks: [1, 2\n")
    with pytest.raises(WorkloadError, match=rf"workload {path}, line \d+: not YAML"):
        simulate(path)


def test_a_bad_trace_line_is_named(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"format": "dask-adaptive-trace", "version": 1, "started": 0}\n'
        '{"t": 1, "runnable": [["inc", {}, 3]]}\n'
        '{"t": 2, "runnable": [["inc", {}, "many"]]}\n'
    )
    with pytest.raises(TraceError, match=rf"trace {path}, line 3"):
        simulate(path)


def test_an_empty_trace_says_so(tmp_path: Path):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"format": "dask-adaptive-trace", "version": 1, "started": 0}\n')
    with pytest.raises(WorkloadError, match="holds no runnable work"):
        simulate(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[\n{"key": "a-1", "startstops": [{"action": "compute", "start": 1, "stop": 2}]},\n'
         '{"key": "b-1"}\n]', r"line 3: no startstops"),
        ('[\n{"key": "a-1", "startstops": [{"action": "compute", "start": 1}]}\n]',
         r"line 2: a startstops entry needs numbers start and stop"),
        ('[\n{"key": "a-1", "startstops": [{"action": "compute", "start": 1, "stop": 2}]}\n'
         '{"key": "b"}]', r"line 3: expected ',' or ']'"),
        ('{"key": "a-1", "startstops": [{"action": "compute", "start": 3, "stop": 2}]}\n',
         r"line 1: a startstops entry stops before it starts"),
        ('{"key": "a-1", "startstops": [{"action": "compute", "start": 1, "stop": 2}]}\nnope\n',
         r"line 2: not JSON"),
        ('[\n[1, 2]\n]', r"line 2: expected a task-stream record"),
    ],
)
def test_a_bad_task_stream_record_is_named_by_its_line(tmp_path: Path, text, message):
    path = tmp_path / "stream.json"
    path.write_text(text)
    with pytest.raises(WorkloadError, match=rf"task stream {path}, {message}"):
        simulate(path, kind="task-stream")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"simulate": {"latency": "soon"}}, r"simulate.pools.default.latency: invalid 'soon'"),
        ({"simulate": {"pools": {"gpu": {}}}}, r"simulate.pools names \['gpu'\], which are not pools"),
        ({**POOLS, "simulate": {"pools": {"cpu": {"never-deliver": 2}}}},
         r"simulate.pools.cpu.never-deliver: invalid 2; expected a fraction"),
        ({"simulate": {"pools": {"default": {"speed": 1}}}}, r"unknown field\(s\) \['speed'\]"),
        ({"pools": {"cpu": {"backend": "local", "cost": -1}}}, r"pools.cpu.cost .*-1"),
        ({"target_duration": "never"}, r"invalid target_duration"),
    ],
)
def test_a_bad_config_is_named_with_its_field(config, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_a_bad_config_file_is_named(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("adaptive-plugin:\n  minimum: many\n")
    with pytest.raises(ConfigError, match=rf"config {path}: invalid minimum"):
        load_settings(path)


# -- the figures and the command line ------------------------------------------------------------------


def test_wait_percentiles_from_the_histogram_are_within_one_percent():
    histogram = Histogram()
    for i in range(1, 1001):
        histogram.add(i / 10)
    histogram.add(0, 1000)
    assert histogram.quantile(0.5) == 0
    assert histogram.quantile(0.75) == pytest.approx(50, rel=0.01)
    assert histogram.quantile(1.0) == 100
    assert histogram.mean == pytest.approx(sum(range(1, 1001)) / 10 / 2000)


def test_the_command_line_prints_json_and_plots(tmp_path: Path):
    pytest.importorskip("matplotlib")
    workload, config = _write(tmp_path, MIXED, _dask_config(POOLS))
    plot = tmp_path / "out.png"
    out = _cli(workload, "--config", config, "--json", "--plot", plot)
    data = json.loads(out)
    assert data["figures"]["finished"] == data["figures"]["tasks"] > 0
    assert set(data["figures"]["pools"]) == {"cpu", "gpu"}
    assert data["performance"]["decisions_per_second"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = _cli(workload, "--config", config)
    assert "makespan" in text and "cpu" in text


def test_the_command_line_names_a_bad_input(tmp_path: Path):
    workload, _ = _write(tmp_path, {"phases": [{"kind": "burst"}]}, {})
    run = subprocess.run(
        [sys.executable, "-m", "dask_adaptive_plugin.simulate", str(workload)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # the same command, on its own
    assert run.returncode == 1
    assert f"workload {workload}, phase 1 (burst): missing field" in run.stderr


def test_the_scale_benchmark_runs_small_and_its_proposals_keep_the_figures():
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks" / "simulate"))
    try:
        import scale
    finally:
        sys.path.pop(0)
    as_is = scale.run(0.001, 0, None)
    proposed = scale.run(0.001, 0, None, proposed=True)
    assert as_is["figures"]["finished"] == as_is["figures"]["tasks"] > 5_000
    for key in ("tasks", "finished", "makespan", "wait", "records"):
        assert proposed["figures"][key] == as_is["figures"][key]
    assert set(as_is["seconds"]) >= {"evaluate", "finished", "rest of the simulator"}


def _benchmark(name: str):
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks" / "simulate"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_the_latency_sweep_compares_the_default_with_each_fixed_timeout():
    sweep = _benchmark("sweep")
    workload = {"phases": [{"kind": "bursts", "count": 3, "tasks": 4, "duration": "2s",
                            "pauses": ["1s", "50s"]}]}
    (result,) = sweep.sweep(workload, latencies=[1.0], timeouts=[2.0, 60.0],
                            seeds=[0], maximum=4)
    rows = result["rows"]
    assert set(rows) == {"default", "T=2s", "T=60s"}
    for row in rows.values():
        assert row["product"] == pytest.approx(row["makespan"] * row["worker_seconds"])
    # a start-up of 1 s: the default keeps idle workers for its 2 s idle
    # timeout, as T=2s does; T=60s keeps them through the 50 s pause too
    assert rows["T=60s"]["worker_seconds"] > rows["T=2s"]["worker_seconds"] + 4 * 40
    assert result["best_fixed"] == "T=2s"
    assert result["ratio"] == pytest.approx(
        rows["default"]["product"] / rows["T=2s"]["product"]
    )
    assert result["holds"] and result["ratio"] < 1.05
    assert "| 1 s | default |" in sweep.table([result])


def test_fidelity_turns_efficiency_workloads_into_phases_and_compares():
    fidelity = _benchmark("fidelity")
    spec = {"name": "bursts", "bursts": 2, "tasks_per_burst": 2, "task_seconds": 1.0,
            "pauses": [3.0], "submit_every": None}
    assert fidelity.workload_of(spec)["phases"][0]["pauses"] == [3.0]
    trickle = {**spec, "name": "trickle", "submit_every": 0.5}
    assert fidelity.workload_of(trickle)["phases"][0]["every"] == 0.5
    runs = [{"makespan": m, "worker_seconds": 5.0} for m in (9.0, 9.5, 30.0)]
    results = {
        "startup": {"result": {"local": [1.0, 1.0, 5.0]}},
        "efficiency": {"result": {"maximum": 2, "horizon": 20.0, "workloads": {
            "bursts": {"spec": spec, "plugin": runs},
            "notebook": {"spec": {**spec, "tasks_per_burst": [2, 4]}, "plugin": runs},
            "dataframe": {"spec": {"name": "dataframe", "days": 3}, "plugin": runs}}}},
    }
    assert fidelity.compare(results)["skipped"] == ["notebook", "dataframe"]
    row = fidelity.compare(results)["workloads"]["bursts"]
    # one worker at 1 s (1 s of estimated work), the burst done at 3 s, a
    # pause of 3 s, the worker retired after its 2 s idle timeout, the next
    # one at 7 s, the second burst done at 9 s, that worker retired at 11 s
    assert row["makespan"]["simulated"] == pytest.approx(9.0)
    assert row["makespan"]["real"] == 9.5 and row["makespan"]["holds"]
    assert row["worker_seconds"]["simulated"] == pytest.approx((5 - 1) + (11 - 7))
    assert not row["worker_seconds"]["holds"]  # 8 against 5


# -- helpers ------------------------------------------------------------------------------------------


def _dask_config(arguments: dict) -> dict:
    """The same configuration as a dask config file holds it."""
    plugin = {k.replace("_", "-"): v for k, v in arguments.items() if k != "simulate"}
    return {"adaptive-plugin": plugin, "simulate": arguments.get("simulate", {})}


def _write(tmp_path: Path, workload: dict, config: dict) -> tuple[Path, Path]:
    w, c = tmp_path / "workload.yaml", tmp_path / "config.yaml"
    w.write_text(yaml.safe_dump(workload))
    c.write_text(yaml.safe_dump(config))
    return w, c


#: ``dask adaptive simulate``, through dask's own command and its entry points.
DASK_ADAPTIVE_SIMULATE = [sys.executable, "-m", "dask", "adaptive", "simulate"]


def _cli(*args, env: dict | None = None) -> str:
    run = subprocess.run(
        [*DASK_ADAPTIVE_SIMULATE, *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )
    assert run.returncode == 0, run.stderr
    return run.stdout
