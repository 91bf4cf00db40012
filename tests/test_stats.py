"""The incremental statistics equal a full recomputation after random workloads."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict

import pytest
from distributed import wait
from distributed.utils_test import captured_logger, gen_cluster, inc, slowinc
from helpers import until
from inprocess import InProcessBackend

from dask_adaptive_plugin import AdaptivePlugin
from dask_adaptive_plugin.stats import COUNTED, UNASSIGNED, _pinned


def recount(scheduler) -> dict:
    """The statistics, computed from scratch from the scheduler's own state."""
    counts = dict.fromkeys(COUNTED, 0)
    work: defaultdict = defaultdict(Counter)
    waiting: Counter = Counter()
    pinned = stored = 0
    for ts in scheduler.tasks.values():
        if ts.run_spec is None:
            continue
        if ts.state in counts:
            counts[ts.state] += 1
        if ts.state == "no-worker" and _pinned(ts):
            pinned += 1
        elif ts.state in (*UNASSIGNED, "processing"):
            key = tuple(sorted((ts.resource_restrictions or {}).items()))
            work[key][ts.prefix.name] += 1
            if ts.state != "processing":
                waiting[key] += 1
        if ts.state == "memory":
            stored += max(ts.nbytes, 0)
    return {
        "counts": counts,
        "work": {k: dict(v) for k, v in work.items()},
        "waiting": dict(waiting),
        "pinned": pinned,
        "stored_bytes": stored,
        "memory_limit": sum(ws.memory_limit for ws in scheduler.workers.values()),
    }


def fail(x):
    raise ValueError(x)


async def random_step(rng: random.Random, c, futures: list) -> None:
    op = rng.choice(
        ["map", "chain", "gpu", "pinned", "fail", "release", "wait", "cancel", "big"]
    )
    n = rng.randint(1, 30)
    if op == "map":
        futures += c.map(slowinc, range(n), delay=rng.choice([0, 0.01]), key=[f"m-{rng.random()}-{i}" for i in range(n)])
    elif op == "chain":
        x = c.submit(inc, rng.random())
        for _ in range(n):
            x = c.submit(inc, x)
        futures.append(x)
    elif op == "gpu":  # no worker has a GPU: these stay without a worker
        futures += c.map(inc, range(n), resources={"GPU": rng.choice([1, 2])}, key=[f"g-{rng.random()}-{i}" for i in range(n)])
    elif op == "pinned":  # restricted to a worker that is not there
        futures += c.map(inc, range(n), workers=["tcp://127.0.0.1:9"], key=[f"g-p-{rng.random()}-{i}" for i in range(n)])
    elif op == "fail":
        futures.append(c.submit(fail, rng.random()))
    elif op == "big":
        futures.append(c.submit(lambda k: b"x" * k, rng.randint(1, 100_000), pure=False))
    elif op == "release" and futures:
        for _ in range(min(n, len(futures))):
            futures.pop(rng.randrange(len(futures)))
    elif op == "wait" and futures:
        done = [f for f in futures[-n:] if not f.key.startswith("g-")]
        await wait(done, timeout=10)
    elif op == "cancel" and futures:
        await c.cancel(futures[-n:])
        del futures[-n:]


@pytest.mark.parametrize("seed", range(4))
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3, timeout=60)
async def test_stats_equal_recomputation_after_random_workloads(c, s, *workers, seed):
    plugin = AdaptivePlugin(backend=InProcessBackend, policy="fixed", n=3, maximum=3)
    s.add_plugin(plugin)
    await plugin.start(s)
    rng = random.Random(seed)
    futures: list = []
    for _ in range(40):
        await random_step(rng, c, futures)
        await asyncio.sleep(rng.choice([0, 0, 0.005, 0.02]))
        assert plugin.stats.as_dict() == recount(s)
    futures.clear()
    await until(lambda: not s.tasks, what="every task released")
    assert plugin.stats.as_dict() == recount(s)
    assert set(plugin.stats.idle) == set(s.workers)
    assert not plugin.stats.busy


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_stats_seeded_from_a_scheduler_that_already_has_work(c, s, a, b):
    held = c.map(inc, range(10))
    waiting = c.map(inc, range(100, 105), resources={"GPU": 1})
    await wait(held)
    plugin = AdaptivePlugin(backend=InProcessBackend, policy="fixed", n=2, maximum=2)
    s.add_plugin(plugin)
    await plugin.start(s)
    stats = plugin.stats.as_dict()
    assert stats == recount(s)
    assert stats["counts"]["memory"] == 10
    assert stats["counts"]["no-worker"] == 5, [ts.state for ts in s.tasks.values()]
    assert stats["waiting"] == {(("GPU", 1),): 5}
    del waiting


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_scattered_data_is_left_out_consistently(c, s, a, b):
    plugin = AdaptivePlugin(backend=InProcessBackend, policy="fixed", n=2, maximum=2)
    s.add_plugin(plugin)
    await plugin.start(s)
    data = await c.scatter(list(range(10)))
    total = c.submit(sum, data)
    await total
    assert plugin.stats.as_dict() == recount(s)
    assert plugin.stats.counts["memory"] == 1
    del data, total
    await until(lambda: not s.tasks, what="every task released")
    assert plugin.stats.as_dict() == recount(s)
    assert plugin.stats.counts["memory"] == 0


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_a_failing_hook_never_reaches_the_scheduler_and_stats_heal(c, s, a, b):
    plugin = AdaptivePlugin(backend=InProcessBackend, policy="fixed", n=2, maximum=2)
    s.add_plugin(plugin)
    await plugin.start(s)
    broken = plugin.stats.transition

    def explode(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    plugin.stats.transition = explode
    with captured_logger("dask_adaptive_plugin.plugin") as log:
        assert await c.submit(inc, 1) == 2  # the scheduler keeps working
    # logged once (an evaluation may already have recounted the statistics)
    assert log.getvalue().count("the transition hook failed") == 1
    plugin.stats.transition = broken
    assert await c.submit(inc, 2) == 3
    plugin.stats.reseed_if_due()
    await until(lambda: not plugin.stats.needs_reseed, what="the recount")
    assert plugin.stats.as_dict() == recount(s)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_classes_beyond_the_bound_are_counted_together_and_drain(c, s, a):
    from dask_adaptive_plugin.stats import MAX_CLASSES, OVERFLOW

    plugin = AdaptivePlugin(backend=InProcessBackend, policy="fixed", n=1, maximum=1)
    s.add_plugin(plugin)
    await plugin.start(s)
    amounts = range(1, MAX_CLASSES + 11)  # 10 more distinct needs than tracked
    futures = [c.submit(inc, i, resources={"GPU": i}, key=f"g-{i}") for i in amounts]
    count = len(futures)
    await until(lambda: plugin.stats.counts["no-worker"] == count)
    stats = plugin.stats
    assert len(stats.work) == MAX_CLASSES + 1  # the bound, and the overflow
    assert sum(stats.waiting.values()) == count
    [overflow] = [n for n in stats.needs() if n.resources == stats.overflow_needs]
    assert overflow.tasks == 10
    assert stats.overflow_needs == {"GPU": max(amounts)}
    assert OVERFLOW in stats.work
    del futures
    await until(lambda: not s.tasks)
    assert stats.work == {} and stats.waiting == {} and not stats.overflowed
