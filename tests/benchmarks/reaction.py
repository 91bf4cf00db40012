"""Reaction: from ``client.submit`` to the backend's ``scale_up`` call.

Every repetition starts a fresh scheduler with no workers and no tasks, waits a
random delay (the same sequence of delays for both sides), then submits one
task and notes ``time.perf_counter()`` just before the submit and inside the
first ``scale_up`` call. Client, scheduler and adaptivity share one process
and one clock. Distributed's ``Adaptive`` runs with its defaults; its
``cluster.scale`` (what ``Adaptive.scale_up`` calls) is wrapped to note the time.
"""

from __future__ import annotations

import asyncio
import operator
import random
import time
from collections.abc import Callable
from typing import Any

from distributed import Client, LocalCluster, Scheduler

from benchmarks.common import RecordingBackend, Row, alternating, median, ratio, spread
from dask_adaptive_plugin import AdaptivePlugin

TARGET_SECONDS = 0.010
#: Give up on one repetition after this long (Adaptive needs up to ~1 s).
TIMEOUT = 10.0


async def bench_reaction(repeats: int = 10, seed: int = 0) -> dict[str, Any]:
    """Seconds from submit to ``scale_up``, ``repeats`` times per side, alternating.

    Returns
    -------
    dict
        ``{"plugin": [...], "adaptive": [...], "delays": [...]}`` in seconds.
    """
    delays = [random.Random(seed + i).uniform(0, 1) for i in range(repeats)]
    results: dict[str, Any] = {"plugin": [], "adaptive": [], "delays": delays}
    sides = {"plugin": plugin_reaction, "adaptive": adaptive_reaction}
    for delay, order in zip(delays, alternating(repeats)):
        for side in order:
            results[side].append(await sides[side](delay))
    return results


async def plugin_reaction(delay: float) -> float:
    """One repetition with the plugin: seconds from submit to ``scale_up``."""
    plugin = AdaptivePlugin(backend=RecordingBackend, minimum=0, maximum=1)
    async with (
        Scheduler(dashboard_address=":0", host="127.0.0.1", plugins=[plugin]) as s,
        Client(s.address, asynchronous=True) as client,
    ):
        await _until(lambda: plugin.controller is not None)
        await asyncio.sleep(delay)
        backend = plugin.backend
        return await _time_first_scale_up(client, lambda: backend.up_times)


async def adaptive_reaction(delay: float) -> float:
    """One repetition with ``LocalCluster(n_workers=0).adapt()`` and its defaults."""
    async with (
        LocalCluster(
            n_workers=0,
            processes=False,
            protocol="tcp",  # like the plugin's side; in-process comms would be unlike either
            asynchronous=True,
            dashboard_address=":0",
            host="127.0.0.1",
        ) as cluster
    ):
        times = _record_scale_calls(cluster)
        adaptive = cluster.adapt()
        async with Client(cluster, asynchronous=True) as client:
            await _until(lambda: adaptive.state == "running")
            await asyncio.sleep(delay)
            elapsed = await _time_first_scale_up(client, lambda: times)
        adaptive.stop(reason="benchmark done")
        return elapsed


def _record_scale_calls(cluster: LocalCluster) -> list[float]:
    """Wrap ``cluster.scale`` so that each call notes the time first."""
    times: list[float] = []
    scale = cluster.scale

    def timed_scale(*args: Any, **kwargs: Any) -> Any:
        times.append(time.perf_counter())
        return scale(*args, **kwargs)

    cluster.scale = timed_scale  # type: ignore[method-assign]
    return times


async def _time_first_scale_up(
    client: Client, times: Callable[[], list[float]]
) -> float:
    assert not times(), "scale_up was called before anything was submitted"
    start = time.perf_counter()
    future = client.submit(operator.add, 1, 1)
    await _until(lambda: bool(times()), timeout=TIMEOUT, interval=0.001)
    elapsed = times()[0] - start
    assert await future == 2
    return elapsed


async def _until(
    predicate: Callable[[], bool], timeout: float = 10, interval: float = 0.005
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached in time")
        await asyncio.sleep(interval)


def reaction_rows(results: dict[str, Any]) -> list[Row]:
    """Table rows: medians in milliseconds and the ratio."""
    plugin, adaptive = median(results["plugin"]), median(results["adaptive"])
    return [
        Row(
            benchmark="1 reaction",
            metric=f"submit → scale_up, median of {len(results['plugin'])}",
            unit="ms",
            plugin=plugin * 1e3,
            reference=adaptive * 1e3,
            reference_name="Adaptive (defaults)",
            target="plugin ≤ 10 ms",
            holds=plugin <= TARGET_SECONDS,
            note=f"{ratio(adaptive, plugin):.0f}× faster" if plugin else "",
        )
    ]


def reaction_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Spread of each side, for the JSON file."""
    return {side: spread(results[side]) for side in ("plugin", "adaptive")}
