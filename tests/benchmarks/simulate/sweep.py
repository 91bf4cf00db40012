"""The start-up latency sweep: the default policy against fixed idle timeouts.

Usage::

    python tests/benchmarks/simulate/sweep.py           # a table per workload
    python tests/benchmarks/simulate/sweep.py --json    # the same, as JSON

For each bursty workload (``sweep-workload.yaml``: small bursts, pauses up to
20 minutes; ``sweep-busy-workload.yaml``: large bursts, pauses up to 2
minutes; beside this file), each pool start-up latency (1 s, 30 s, 300 s,
fixed) and each seed, the workload runs in the simulator once with the
plugin's defaults (no policy options: idle workers kept for the retention
learned from the gaps seen, a stabilization window of one retention) and
once per fixed idle timeout ``T`` in {2 s, 10 s, 60 s, 300 s}
(``retention: idle-timeout``, ``stabilization: 0``, ``idle_timeout: T``: what
distributed's ``Adaptive`` does). The objective is makespan × worker-seconds
(one pool of cost 1: worker-seconds are the cost), the median over the
seeds; the goal holds at a latency when the default's is within 5% of the
best fixed timeout's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dask_adaptive_plugin.simulate import load_workload, simulate
from dask_adaptive_plugin.simulate.distributions import seconds

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "sweep-workload.yaml"
WORKLOADS = (WORKLOAD, HERE / "sweep-busy-workload.yaml")
LATENCIES = (1.0, 30.0, 300.0)
TIMEOUTS = (2.0, 10.0, 60.0, 300.0)
SEEDS = (0, 1, 2, 3, 4)
MAXIMUM = 20
#: ``start_timeout`` is this many median latencies, plus a minute.
START_TIMEOUT_FACTOR = 4
#: The default may be at most this much worse than the best fixed timeout.
TOLERANCE = 1.05
DEFAULT = "default"


def config(latency: Any, maximum: int, timeout: float | None = None) -> dict[str, Any]:
    """The simulator config: the plugin's defaults (``timeout`` ``None``), or
    distributed's fixed idle timeout ``timeout``, on one pool of ``latency``.

    ``start_timeout`` is set above the latency (as anyone whose workers take
    five minutes would set it), the same for every policy: with the default
    120 s, workers that take 300 s would be cancelled before they come.
    """
    arguments: dict[str, Any] = {
        "maximum": maximum,
        "start_timeout": START_TIMEOUT_FACTOR * _median(latency) + 60,
        "simulate": {"latency": latency},
    }
    if timeout is not None:
        arguments.update(
            idle_timeout=timeout, retention="idle-timeout", stabilization=0
        )
    return arguments


def _median(latency: Any) -> float:
    """The median of a latency spec: fixed seconds, or ``{median, p90}``."""
    if isinstance(latency, Mapping):
        return seconds(latency["median"])
    return seconds(latency)


def run_once(
    workload: Any, arguments: Mapping[str, Any], seed: int
) -> dict[str, float]:
    """Makespan, worker-seconds and their product of one simulation."""
    result = simulate(workload, dict(arguments), seed=seed)
    if result.finished != result.tasks:
        raise RuntimeError(f"{result.tasks - result.finished} tasks unfinished")
    seconds = result.figures()["cost_weighted_worker_seconds"]
    return {
        "makespan": result.makespan,
        "worker_seconds": seconds,
        "product": result.makespan * seconds,
    }


def medians(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per figure, the median over the runs (of each run's own product)."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def sweep_latency(
    workload: Any,
    latency: Any,
    timeouts: Iterable[float] = TIMEOUTS,
    seeds: Iterable[int] = SEEDS,
    maximum: int = MAXIMUM,
    default_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One latency: per policy (``"default"``, ``"T=2s"``, ...) the medians,
    the best fixed timeout, and the default's ratio to it.

    ``default_options``: policy options for the default (a diagnosis: which
    part of the default rule costs what); none for the figure itself.
    """
    seeds = list(seeds)
    configs = {DEFAULT: {**config(latency, maximum), **(default_options or {})}}
    configs.update({f"T={t:g}s": config(latency, maximum, t) for t in timeouts})
    rows = {
        name: medians([run_once(workload, arguments, s) for s in seeds])
        for name, arguments in configs.items()
    }
    best = min((n for n in rows if n != DEFAULT), key=lambda n: rows[n]["product"])
    ratio = rows[DEFAULT]["product"] / rows[best]["product"]
    return {
        "latency": latency,
        "rows": rows,
        "best_fixed": best,
        "ratio": ratio,
        "holds": ratio <= TOLERANCE,
    }


def sweep(
    workload: Any = WORKLOAD,
    latencies: Iterable[Any] = LATENCIES,
    timeouts: Iterable[float] = TIMEOUTS,
    seeds: Iterable[int] = SEEDS,
    maximum: int = MAXIMUM,
    default_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """:func:`sweep_latency` for each latency."""
    workload = load_workload(workload)
    timeouts, seeds = list(timeouts), list(seeds)
    return [
        sweep_latency(workload, latency, timeouts, seeds, maximum, default_options)
        for latency in latencies
    ]


def table(results: Sequence[Mapping[str, Any]]) -> str:
    """The figures as markdown: a block of rows per latency."""
    lines = [
        "| latency | policy | makespan (s) | worker-seconds | makespan × worker-s | / best fixed | holds (≤ 1.05) |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for result in results:
        best = result["rows"][result["best_fixed"]]["product"]
        for name, row in result["rows"].items():
            verdict = ""
            if name == DEFAULT:
                verdict = "✅ yes" if result["holds"] else "❌ no"
            elif name == result["best_fixed"]:
                verdict = "(best fixed)"
            lines.append(
                f"| {_latency(result['latency'])} | {name} | {row['makespan']:,.0f} "
                f"| {row['worker_seconds']:,.0f} | {row['product']:.3g} "
                f"| {row['product'] / best:.3f} | {verdict} |"
            )
    return "\n".join(lines)


def _latency(latency: Any) -> str:
    if isinstance(latency, Mapping):
        return f"{latency['median']} (p90 {latency['p90']})"
    return f"{latency:g} s" if isinstance(latency, (int, float)) else str(latency)


def _option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key.replace("-", "_"), float(value)
    except ValueError:
        return key.replace("-", "_"), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--workload",
        action="append",
        help="a workload YAML (repeatable; default: the two beside this file)",
    )
    parser.add_argument(
        "--seeds", type=int, default=len(SEEDS), help="seeds 0..N-1 (default 5)"
    )
    parser.add_argument(
        "--lognormal",
        action="store_true",
        help="lognormal latencies, p90 three times the median, instead of fixed",
    )
    parser.add_argument(
        "--default-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a policy option for the default only (diagnosis), e.g. stabilization=0",
    )
    args = parser.parse_args(argv)
    options = dict(_option(o) for o in args.default_option)
    latencies: list[Any] = list(LATENCIES)
    if args.lognormal:
        latencies = [{"median": f"{x:g}s", "p90": f"{3 * x:g}s"} for x in LATENCIES]
    results = {
        str(workload): sweep(
            workload, latencies, seeds=range(args.seeds), default_options=options
        )
        for workload in args.workload or [str(w) for w in WORKLOADS]
    }
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print("\n\n".join(f"{Path(w).name}:\n\n{table(r)}" for w, r in results.items()))
    holds = all(r["holds"] for rows in results.values() for r in rows)
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
