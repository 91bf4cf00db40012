"""The simulator's scale figure, with where the time goes.

Usage::

    python tests/benchmarks/simulate/scale.py              # 100,000 workers, 10,000,000 tasks
    python tests/benchmarks/simulate/scale.py --scale 0.1  # a tenth of both
    python tests/benchmarks/simulate/scale.py --horizon 1800 --progress
    python tests/benchmarks/simulate/scale.py --policy-option stabilization=0

Runs ``scale-workload.yaml`` against ``scale-config.yaml`` (both beside this
file; ``--scale`` multiplies every pool's maximum and every phase's tasks and
rates) and prints, as JSON, the figures and how the wall time divides between
the planner's calls (``evaluate``: the policy, the ledger's supply, the
actions; the others: ``starting``, ``finished``, ``arrived``, ``left``,
``retiring``, ``retired``, ``new_work``), building the snapshots, and the
rest of the simulator (events, the simulated scheduler and backends).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from dask_adaptive_plugin import policy
from dask_adaptive_plugin.ledger import ON_THE_WAY
from dask_adaptive_plugin.simulate import load_settings, load_workload
from dask_adaptive_plugin.simulate.engine import Engine
from dask_adaptive_plugin.simulate.report import peak_memory

HERE = Path(__file__).resolve().parent
PLANNER_CALLS = (
    "evaluate",
    "starting",
    "finished",
    "arrived",
    "left",
    "retiring",
    "retired",
    "new_work",
)


def scaled(scale: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The workload and the config, with counts and rates times ``scale``."""
    workload = yaml.safe_load((HERE / "scale-workload.yaml").read_text())
    config = yaml.safe_load((HERE / "scale-config.yaml").read_text())
    if scale == 1:
        return workload, config
    workload, config = copy.deepcopy(workload), copy.deepcopy(config)
    plugin = config["adaptive-plugin"]
    plugin["maximum"] = round(plugin["maximum"] * scale)
    for pool in plugin["pools"].values():
        pool["maximum"] = max(1, round(pool["maximum"] * scale))
    for phase in workload["phases"]:
        if "tasks" in phase:
            phase["tasks"] = max(1, round(phase["tasks"] * scale))
        for field in ("rate", "peak"):
            if field in phase:
                amount, _, unit = str(phase[field]).partition("/")
                phase[field] = f"{float(amount) * scale}/{unit or 's'}"
    return workload, config


def timed(counters: dict[str, float], name: str, method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            counters[name] += time.perf_counter() - started

    return wrapper


def reporting(engine: Engine, snapshot: Any) -> Any:
    """Say on stderr, every 10,000 evaluations, how far the simulation is."""
    started = time.perf_counter()

    def wrapper() -> Any:
        if engine.evaluations % 10_000 == 0:
            print(
                f"{time.perf_counter() - started:7.0f}s wall: virtual {engine.now:7.0f}s, "
                f"{engine.evaluations:,} evaluations, {len(engine.workers):,} workers "
                f"({len(engine.idle):,} idle), {engine.queued + engine.processing:,} "
                f"runnable tasks, {engine.finished:,} finished",
                file=sys.stderr,
                flush=True,
            )
        return snapshot()

    return wrapper


def overdue_in_deadline_order(ledger: Any, pool: str, now: float) -> list[Any]:
    """A proposed ``Ledger.overdue``: the entries on their way are kept in
    request order, and every deadline is the request (or restart) time plus
    the pool's one ``start_timeout``, so deadlines are in order: stop at the
    first one not due, instead of reading every entry behind a waiting one."""
    due = []
    for entry in ledger._prune(pool):
        if entry.deadline > now:
            break
        if entry.state in ON_THE_WAY:
            due.append(entry)
    return due


class IdleByPool(dict):  # type: ignore[type-arg]
    """The idle map (address -> since, oldest first), also kept per pool:
    what a proposed ``ClusterStats`` would offer the policy."""

    def __init__(self) -> None:
        super().__init__()
        self.by_pool: dict[str, dict[str, float]] = {}

    @staticmethod
    def pool_of(address: str) -> str:
        return address.removeprefix("sim://").rpartition("-")[0]  # "<pool>-<n>"

    def __setitem__(self, address: str, since: float) -> None:
        super().__setitem__(address, since)
        self.by_pool.setdefault(self.pool_of(address), {})[address] = since

    def pop(self, address: str, default: Any = None) -> Any:
        self.by_pool.get(self.pool_of(address), {}).pop(address, None)
        return super().pop(address, default)


def expired_per_pool(
    snapshot: Any, supply: Any, surplus: Any, timeouts: Any, now: float
) -> tuple[dict[Any, list[str]], float | None]:
    """A proposed ``policy._expired``: read only the pools that have a
    surplus, each oldest first, stopping at its first worker not idle long
    enough (nor within ``policy.TOGETHER`` of it), instead of every idle
    worker past the shortest timeout's early part."""
    held, states = supply.held.get, snapshot.worker_states
    expired: dict[Any, list[str]] = {}
    deadline = None
    for pool in surplus:
        timeout = timeouts[pool]
        nearly = []
        for address, since in snapshot.idle.by_pool.get(pool, {}).items():
            ready = since + timeout
            if ready > now:
                deadline = ready if deadline is None else min(deadline, ready)
            if ready > now + policy.TOGETHER * timeout:
                break
            hold = held(address)
            if hold is not None and hold > max(ready, now):
                deadline = min(deadline, hold) if deadline is not None else hold
                continue
            if address not in states:
                continue
            if ready <= now:
                expired.setdefault(pool, []).append(address)
            else:
                nearly.append(address)
        if pool in expired:
            expired[pool] += nearly
    return expired, deadline


def run(
    scale: float,
    seed: int,
    horizon: float | None,
    policy_options: dict[str, Any] | None = None,
    progress: bool = False,
    proposed: bool = False,
) -> dict[str, Any]:
    workload, config = scaled(scale)
    config["adaptive-plugin"].setdefault("policy-options", {}).update(policy_options or {})
    engine = Engine(load_settings(config), load_workload(workload), seed, horizon)
    if proposed:
        ledger = engine.planner.ledger
        ledger.overdue = functools.partial(overdue_in_deadline_order, ledger)
        engine.idle = IdleByPool()
    counters = dict.fromkeys((*PLANNER_CALLS, "snapshot"), 0.0)
    if progress:
        engine.snapshot = reporting(engine, engine.snapshot)  # type: ignore[method-assign]
    for name in PLANNER_CALLS:
        setattr(engine.planner, name, timed(counters, name, getattr(engine.planner, name)))
    engine.snapshot = timed(counters, "snapshot", engine.snapshot)  # type: ignore[method-assign]
    original = policy._expired
    if proposed:
        policy._expired = expired_per_pool
    started, cpu = time.perf_counter(), time.process_time()
    try:
        result = engine.run()
    finally:
        policy._expired = original
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    inside = sum(counters.values())
    return {
        "scale": scale,
        "workers_peak": sum(p.peak_workers for p in result.pools.values()),
        "figures": result.figures(),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "decisions_per_second": result.evaluations / wall,
        "peak_memory_bytes": peak_memory(),
        "seconds": {
            **{k: round(v, 2) for k, v in counters.items()},
            "rest of the simulator": round(wall - inside, 2),
        },
        "per_evaluation_ms": 1e3 * counters["evaluate"] / max(result.evaluations, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizon", type=float, default=None)
    parser.add_argument(
        "--policy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a policy option, e.g. stabilization=0",
    )
    parser.add_argument("--progress", action="store_true", help="report on stderr")
    parser.add_argument(
        "--proposed",
        action="store_true",
        help="with the proposed Ledger.overdue (read in deadline order) and "
        "policy._expired (read per pool, only pools with a surplus)",
    )
    args = parser.parse_args()
    options = dict(o.split("=", 1) for o in args.policy_option)
    result = run(args.scale, args.seed, args.horizon, options, args.progress, args.proposed)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
