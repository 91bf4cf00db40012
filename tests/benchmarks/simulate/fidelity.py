"""The simulator's fidelity: simulated against real efficiency runs.

Usage::

    python tests/benchmarks/run.py --only efficiency,startup     # the real runs (~10 min)
    python tests/benchmarks/simulate/fidelity.py [RESULTS_JSON]  # default bench-results/results.json
    python tests/benchmarks/simulate/fidelity.py --json [RESULTS_JSON]

Each workload of ``tests/benchmarks/efficiency.py`` found in the results (its
``spec``: bursts, tasks per burst, task seconds, pauses, ``submit_every``)
becomes a simulator workload: one burst; or bursts whose results are awaited
before each pause (``pauses``); or, with ``submit_every``, bursts submitted
that often without waiting. It runs against the plugin side's configuration
(``AdaptivePlugin(backend="local", minimum=0, maximum=M,
backend_options={"nthreads": 1})``) on one pool whose start-up latency is the
median of the measured start-up of the ``local`` backend (the ``startup``
results), fixed. Worker-seconds are counted as the real runs count them:
until the cluster is back at its minimum, or ``horizon`` seconds after the
last result (the simulator's ``drain``). The goal: simulated makespan within
10% and worker-seconds within 15% of the real runs' medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dask_adaptive_plugin.simulate import simulate

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "bench-results" / "results.json"
#: The largest relative difference that passes, per figure.
TOLERANCES = {"makespan": 0.10, "worker_seconds": 0.15}
#: The real tasks are ``time.sleep``: their prefix.
PREFIX = "sleep"


def expressible(spec: Mapping[str, Any]) -> bool:
    """Whether a workload spec is bursts of sleeping tasks of one size (the
    dataframe and array workloads, and bursts of several sizes, are not)."""
    return "task_seconds" in spec and isinstance(spec.get("tasks_per_burst"), int)


def workload_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A simulator workload (phases) from an efficiency ``Workload`` spec."""
    task = {"prefix": PREFIX, "duration": float(spec["task_seconds"])}
    tasks, bursts = int(spec["tasks_per_burst"]), int(spec["bursts"])
    if spec.get("submit_every") is not None:
        phase = {"kind": "bursts", "count": bursts, "every": float(spec["submit_every"])}
    elif bursts == 1:
        phase = {"kind": "burst"}
    else:  # each burst's results awaited, then the next pause
        pauses = [float(p) for p in spec.get("pauses") or ()] or [0.0]
        phase = {"kind": "bursts", "count": bursts, "pauses": pauses}
    return {"phases": [{**phase, "name": spec["name"], "tasks": tasks, **task}]}


def config_of(maximum: int, latency: float, horizon: float) -> dict[str, Any]:
    """The plugin side's configuration, on a simulated pool of ``latency``."""
    return {
        "backend": "local",
        "minimum": 0,
        "maximum": maximum,
        "backend_options": {"nthreads": 1},
        "simulate": {"latency": latency, "drain": horizon},
    }


def compare(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per workload, the real runs' medians, the simulated figures, their
    ratios and whether each is within its tolerance.

    ``results`` is the ``results`` object of ``run.py``'s JSON, holding
    ``efficiency`` and ``startup``.
    """
    efficiency = results["efficiency"]["result"]
    latency = statistics.median(results["startup"]["result"]["local"])
    maximum, horizon = efficiency["maximum"], efficiency["horizon"]
    rows: dict[str, Any] = {}
    skipped = []
    for name, sides in efficiency["workloads"].items():
        runs = sides["plugin"]
        if not expressible(sides["spec"]) or not runs:
            skipped.append(name)
            continue
        simulated = simulate(
            workload_of(sides["spec"]), config_of(maximum, latency, horizon)
        )
        figures = {
            "makespan": simulated.makespan,
            "worker_seconds": simulated.figures()["worker_seconds"],
        }
        rows[name] = {
            key: _row(statistics.median(run[key] for run in runs), figures[key], key)
            for key in TOLERANCES
        }
        rows[name]["runs"] = len(runs)
    return {
        "latency": latency,
        "maximum": maximum,
        "horizon": horizon,
        "workloads": rows,
        "skipped": skipped,
    }


def _row(real: float, simulated: float, key: str) -> dict[str, Any]:
    ratio = simulated / real
    return {
        "real": real,
        "simulated": simulated,
        "ratio": ratio,
        "holds": abs(ratio - 1) <= TOLERANCES[key],
    }


def table(comparison: Mapping[str, Any]) -> str:
    """The comparison as markdown."""
    lines = [
        f"start-up latency {comparison['latency']:.2f} s (median of the measured "
        f"`local`), maximum {comparison['maximum']}, horizon {comparison['horizon']:g} s",
        "",
        "| workload | figure | real (median of n) | simulated | simulated / real | holds |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, row in comparison["workloads"].items():
        for key, tolerance in TOLERANCES.items():
            r = row[key]
            verdict = "✅ yes" if r["holds"] else "❌ no"
            lines.append(
                f"| {name} | {key.replace('_', '-')} | {r['real']:.2f} (n={row['runs']}) "
                f"| {r['simulated']:.2f} | {r['ratio']:.2f} | {verdict} (±{tolerance:.0%}) |"
            )
    if comparison["skipped"]:
        lines += ["", f"not simulated (not bursts of one size): {', '.join(comparison['skipped'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    document = json.loads(args.results.read_text())
    comparison = compare(document["results"])
    mode = document.get("load", {}).get("mode", "?")
    if args.json:
        print(json.dumps({"mode": mode, **comparison}, indent=1))
    else:
        print(f"results {args.results} ({mode} run)\n")
        print(table(comparison))
    rows = comparison["workloads"].values()
    return 0 if all(row[k]["holds"] for row in rows for k in TOLERANCES) else 1


if __name__ == "__main__":
    sys.exit(main())
