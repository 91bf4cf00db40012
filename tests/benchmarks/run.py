"""Run every benchmark, print the table, write the JSON (and the docs).

Usage::

    python tests/benchmarks/run.py            # full run, ~32 min; updates docs/
    python tests/benchmarks/run.py --quick    # CI-sized, ~2 min; docs untouched
    python tests/benchmarks/run.py --only reaction,decision
    python tests/benchmarks/run.py --from-results bench-results/results.json

Results go to ``bench-results/results.json`` (git-ignored). A full run also
rewrites the generated part of ``docs/benchmarks.md`` and the plot
``docs/img/benchmark-workers.png`` (which needs matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Quiet logs here and in every worker process started from here.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from benchmarks import decision, efficiency, idle, memory, overhead, reaction, report
from benchmarks.common import Row, machine_info

DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "benchmark-workers.png"

FULL: dict[str, dict[str, Any]] = {
    "reaction": {"repeats": 20},
    "overhead": {"tasks": 10_000, "rounds": 6},
    "hook": {},
    "decision": {"worker_counts": (100, 1000, 10_000), "tasks": 1_000_000},
    "idle": {"seconds": 60.0, "windows": 12},
    "memory": {"workers": 1000, "tasks": 10_000},
    "startup": {"repeats": 5},
    "efficiency": {
        "workloads": efficiency.FULL,
        "repeats": 3,
        "maximum": 3,
        "horizon": 20.0,
    },
}
QUICK: dict[str, dict[str, Any]] = {
    "reaction": {"repeats": 10},
    "overhead": {"tasks": 1000, "rounds": 2},
    "hook": {"number": 20_000},
    "decision": {"worker_counts": (100, 1000, 10_000), "tasks": 10_000},
    "idle": {"seconds": 10.0, "windows": 5},
    "memory": {"workers": 200, "tasks": 2000},
    "startup": {"repeats": 1},
    "efficiency": {
        "workloads": efficiency.QUICK,
        "repeats": 1,
        "maximum": 3,
        "horizon": 6.0,
    },
}


def _run_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda **kwargs: asyncio.run(fn(**kwargs))


#: name -> (run it with keyword arguments, rows from its result)
BENCHMARKS: dict[str, tuple[Callable[..., Any], Callable[[Any], list[Row]]]] = {
    "reaction": (_run_async(reaction.bench_reaction), reaction.reaction_rows),
    "overhead": (_run_async(overhead.bench_overhead), overhead.overhead_rows),
    "hook": (_run_async(overhead.bench_transition_hook), lambda r: []),
    "decision": (_run_async(decision.bench_decision), decision.decision_rows),
    "idle": (idle.bench_idle, idle.idle_rows),
    "memory": (_run_async(memory.bench_memory), memory.memory_rows),
    "startup": (_run_async(efficiency.bench_worker_startup), lambda r: []),
    "efficiency": (_run_async(efficiency.bench_efficiency), efficiency.efficiency_rows),
}


def run_all(config: dict[str, dict[str, Any]], only: list[str]) -> dict[str, Any]:
    """Run the chosen benchmarks; their results, durations and the load around each."""
    results: dict[str, Any] = {}
    for name in only:
        run, _ = BENCHMARKS[name]
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        start, load = time.perf_counter(), os.getloadavg()
        results[name] = {
            "result": run(**config[name]),
            "seconds": time.perf_counter() - start,
            "load_before": list(load),
            "load_after": list(os.getloadavg()),
        }
        print(
            f"[bench] {name}: {results[name]['seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return results


def table_rows(results: dict[str, Any]) -> list[Row]:
    """All rows, in benchmark order; overhead also shows the timed hook."""
    rows: list[Row] = []
    for name, (_, to_rows) in BENCHMARKS.items():
        if name not in results:
            continue
        result = results[name]["result"]
        if name == "overhead":
            hook = results.get("hook", {}).get("result")
            rows += overhead.overhead_rows(result, hook)
        elif name == "efficiency":
            startup = results.get("startup", {}).get("result")
            rows += efficiency.efficiency_rows(result, startup)
        else:
            rows += to_rows(result)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    only = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        print(
            f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    if args.from_results:
        return _rewrite_from(args.from_results, args.no_docs)
    config = QUICK if args.quick else FULL
    started, load_start = time.time(), list(os.getloadavg())
    results = run_all(config, only)
    rows = table_rows(results)
    load = {
        "start": load_start,
        "end": list(os.getloadavg()),
        "when": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
        "mode": "quick" if args.quick else "full",
        "seconds": time.time() - started,
    }
    machine = machine_info()
    table = report.markdown_table(rows)
    print(table)
    _write_json(args.output, results, rows, machine, load, config)
    if not args.quick and not args.no_docs:
        _write_docs(results, table, machine, load)
    return 0


def _rewrite_from(path: Path, no_docs: bool) -> int:
    """The table (and, unless ``no_docs``, the docs) again from a results
    file: after a change to how rows are made, without measuring again."""
    document = json.loads(path.read_text(), object_hook=_whole_number_keys)
    table = report.markdown_table(table_rows(document["results"]))
    print(table)
    if not no_docs:
        _write_docs(document["results"], table, document["machine"], document["load"])
    return 0


def _whole_number_keys(mapping: dict[str, Any]) -> dict[Any, Any]:
    """JSON made the worker counts that key some results strings: back to ints."""
    return {int(k) if k.isdigit() else k: v for k, v in mapping.items()}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (~2 min)")
    parser.add_argument(
        "--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench-results" / "results.json"
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/ alone")
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: the table and docs again from a results file",
    )
    return parser.parse_args(argv)


def _write_json(
    path: Path,
    results: dict[str, Any],
    rows: list[Row],
    machine: dict[str, Any],
    load: dict[str, Any],
    config: dict[str, Any],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine,
        "load": load,
        "config": config,
        "rows": [row.as_dict() for row in rows],
        "results": results,
    }
    path.write_text(json.dumps(document, indent=1, default=_jsonable))
    print(f"[bench] wrote {path}", file=sys.stderr)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    return str(value)


def _write_docs(
    results: dict[str, Any], table: str, machine: dict[str, Any], load: dict[str, Any]
) -> None:
    if "efficiency" in results:
        report.plot_efficiency(results["efficiency"]["result"], PLOT)
        print(f"[bench] wrote {PLOT}", file=sys.stderr)
    generated = "\n\n".join(
        [
            "### Machine and load during this run\n\n"
            + report.machine_lines(machine, load),
            "### Results\n\n" + table,
        ]
    )
    DOC.write_text(
        report.replace_generated(DOC.read_text() if DOC.exists() else "", generated)
    )
    print(f"[bench] wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
