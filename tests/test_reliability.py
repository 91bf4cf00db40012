"""Faults neither lose data nor leave the cluster wrong: one test per guarantee
in docs/reliability.md."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from contextlib import asynccontextmanager

import dask
import pytest
from distributed import Client, Scheduler, Worker, secede, wait
from distributed.core import Status
from distributed.utils_test import BlockedGatherDep, gen_test, inc, slowinc
from helpers import adaptive_cluster, errors, statuses, until
from inprocess import InProcessBackend

from dask_adaptive_plugin import AdaptivePlugin, planner, retire

NO_THREAD_CHECK = {"threads": False}


@pytest.mark.parametrize("policy", ["adaptive", "fixed"])
@gen_test(timeout=120)
async def test_a_sigkilled_worker_is_replaced_and_the_work_finishes(policy):
    """Real worker processes without a nanny: SIGKILL really removes one."""
    plugin = AdaptivePlugin(
        backend="local",
        policy=policy,
        minimum=2 if policy == "fixed" else 0,
        maximum=2,
        backend_options={"worker_args": "--no-nanny"},
    )
    async with Scheduler(dashboard_address=":0", host="127.0.0.1", plugins=[plugin]) as s:
        async with Client(s.address, asynchronous=True) as c:
            futures = c.map(time.sleep, [0.3] * 30, pure=False)
            await until(lambda: len(s.workers) == 2, timeout=60)
            victim = next(iter(s.workers.values()))
            pid = (await c.run(os.getpid, workers=[victim.address]))[victim.address]
            os.kill(pid, signal.SIGKILL)
            await until(lambda: victim.address not in s.workers, timeout=30)
            await wait(futures)  # the computation finishes
            await until(lambda: len(s.workers) == 2, timeout=60)  # replaced
            ups = [e for _, e in plugin.log if e["status"] == "up"]
            assert len(ups) >= 2


#: Workers that do not watch their own memory, so that a test may pause one.
NO_MEMORY_MANAGEMENT = {
    f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause")
}


@asynccontextmanager
async def two_workers_with_data(b_class=Worker):
    """Workers a and b, a holding less data, so that a is the one to retire."""
    with dask.config.set(NO_MEMORY_MANAGEMENT):
        async with _two_workers_with_data(b_class) as cluster:
            yield cluster


@asynccontextmanager
async def _two_workers_with_data(b_class):
    async with Scheduler(dashboard_address=":0", host="127.0.0.1") as s:
        async with Worker(s.address, nthreads=1) as a, b_class(s.address, nthreads=1) as b:
            async with Client(s.address, asynchronous=True) as c:
                # placed, but free to be recomputed elsewhere if a dies
                x = c.submit(inc, 1, workers=[a.address], allow_other_workers=True, key="x")
                y = c.submit(
                    lambda: b"y" * 10_000, workers=[b.address], allow_other_workers=True
                )
                await wait([x, y])
                yield s, c, a, b, x, y


def keep_one_worker(s, **kwargs) -> AdaptivePlugin:
    """A plugin that wants one worker fewer, added to the running scheduler."""
    plugin = AdaptivePlugin(
        backend=InProcessBackend, policy="fixed", n=1, maximum=2, **kwargs
    )
    s.add_plugin(plugin)
    return plugin


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_retirement_with_nowhere_to_put_the_data_keeps_the_worker():
    async with two_workers_with_data() as (s, c, a, b, x, y):
        b.status = Status.paused  # b takes no data: a's has nowhere to go
        await until(lambda: s.workers[b.address].status == Status.paused)
        plugin = keep_one_worker(s)
        await until(lambda: "kept" in statuses(plugin))
        kept = [e for _, e in plugin.log if e["status"] == "kept"][0]
        assert kept["workers"] == [a.address]
        assert "could not be moved" in kept["reason"]
        assert a.address in s.workers
        # the scheduler restores the status after a round trip to the worker
        await until(lambda: s.workers[a.address].status == Status.running)
        assert await x == 2 and len(await y) == 10_000


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_hanging_retirement_is_bounded_and_undone():
    async with two_workers_with_data(BlockedGatherDep) as (s, c, a, b, x, y):
        plugin = keep_one_worker(s, retire_timeout="1s")
        await b.in_gather_dep.wait()  # a's data is stuck on its way to b
        await until(lambda: "kept" in statuses(plugin), timeout=20)
        kept = [e for _, e in plugin.log if e["status"] == "kept"][0]
        assert kept["workers"] == [a.address]
        assert "did not finish within 1s" in kept["reason"]
        assert s.workers[a.address].status == Status.running
        await until(lambda: a.status == Status.running)
        b.block_gather_dep.set()
        assert await x == 2  # nothing lost
        assert len(await y) == 10_000


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_worker_that_dies_during_its_retirement_loses_nothing():
    async with two_workers_with_data(BlockedGatherDep) as (s, c, a, b, x, y):
        plugin = keep_one_worker(s, retire_timeout="30s")
        await b.in_gather_dep.wait()  # a is being retired, its data in flight
        await a.close()  # and dies
        await until(lambda: a.address not in s.workers)
        b.block_gather_dep.set()
        assert await x == 2  # recomputed from its task: nothing is lost
        assert len(await y) == 10_000
        await until(lambda: not plugin.controller._actions)
        assert not [e for _, e in plugin.log if e["status"] == "error"]
        # no ghost: every worker the plugin chose is idle again, retired or gone
        assert set(plugin.stats.idle) <= set(s.workers)
        assert set(plugin.ledger.by_address) == set(s.workers)
        assert await c.submit(inc, 41) == 42  # and the scheduler carries on


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_hanging_scale_up_is_bounded_and_the_loop_stays_responsive():
    async with adaptive_cluster(
        maximum=2, start_timeout="1s", backend_options={"hang": 2}
    ) as (s, c, plugin, _):
        lags = []

        async def measure_lag():
            while True:
                start = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - start - 0.005)

        probe = asyncio.create_task(measure_lag())
        try:
            assert await c.submit(inc, 1) == 2
        finally:
            probe.cancel()
        failures = errors(plugin, "scale_up")
        assert [e["retry_in"] for e in failures] == [1.0, 2.0]
        assert "did not return within 1s" in failures[0]["error"]
        assert plugin.backend.most_in_flight == 1  # never two calls at once
        assert max(lags) < 0.1, max(lags)  # never blocked for long


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_requested_workers_that_never_arrive_are_cancelled_and_asked_again():
    async with adaptive_cluster(
        maximum=2, start_timeout="500ms", backend_options={"ghost": True}
    ) as (s, c, plugin, _):
        future = c.submit(inc, 1)
        await until(lambda: len(errors(plugin, "start")) >= 3, timeout=20)
        overdue = errors(plugin, "start")
        assert "did not connect within 0.5s" in overdue[0]["error"]
        assert [e["retry_in"] for e in overdue[:3]] == [1.0, 2.0, 4.0]
        kinds = [kind for kind, _, _ in plugin.backend.calls]
        assert kinds[:4] == ["up", "cancel", "up", "cancel"]
        del future


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_workers_that_die_right_after_starting_do_not_loop_forever(monkeypatch):
    monkeypatch.setattr(planner, "BACKOFF_START", 0.05)
    with dask.config.set({"distributed.scheduler.allowed-failures": 100}):
        async with adaptive_cluster(
            maximum=1, backend_options={"die_after": 0.05}
        ) as (s, c, plugin, _):
            future = c.submit(slowinc, 1, delay=0.5)
            await until(lambda: len(errors(plugin, "worker")) >= planner.CRASH_LIMIT)
            # had it not stopped, it would ask again after the last back-off:
            # wait twice that long
            await asyncio.sleep(2 * planner.backoff(planner.CRASH_LIMIT))
            calls = len(plugin.backend.ups())
            assert calls == planner.CRASH_LIMIT  # then it stops asking
            last = errors(plugin, "worker")[-1]
            assert "no more are asked for until new work" in last["reason"]
            assert [e["retry_in"] for e in errors(plugin, "worker")][:3] == [0.05, 0.1, 0.2]
            plugin.backend.die_after = None  # the problem is fixed ...
            assert await c.submit(inc, 10) == 11  # ... and new work asks again
            assert len(plugin.backend.ups()) > calls
            del future


SECEDED = threading.Event()


def long_running():
    secede()
    SECEDED.wait(30)
    return 1


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_seceded_long_running_workers_are_never_retired():
    """Two workers, one running a seceded task, and a policy that wants none:
    the idle one is retired, the long-running one stays until its task ends."""
    SECEDED.clear()
    async with adaptive_cluster(
        policy="fixed", n=2, maximum=2, idle_timeout="100ms"
    ) as (s, c, plugin, _):
        await until(lambda: len(s.workers) == 2)
        seceded = c.submit(long_running, key="seceded", pure=False)
        await until(lambda: any(ws.long_running for ws in s.workers.values()))
        [runner] = [ws.address for ws in s.workers.values() if ws.long_running]
        # it is never even a candidate: retire.retirable() leaves it out
        assert retire.retirable(s, list(s.workers)) == [
            a for a in s.workers if a != runner
        ]
        plugin.policy.n = 0  # the policy now wants no worker at all
        plugin.controller.poke()
        await until(lambda: list(s.workers) == [runner], what="the idle one retired")
        assert runner in s.workers
        SECEDED.set()
        assert await seceded == 1
        del seceded  # the last worker holding data stays while it is held
        await until(lambda: not s.workers, what="retired once its task ended")


@gen_test(timeout=120, clean_kwargs=NO_THREAD_CHECK)
async def test_fifty_cycles_lose_no_key_and_compute_nothing_twice():
    rng = random.Random(0)
    async with adaptive_cluster(maximum=3, idle_timeout="50ms") as (s, c, plugin, watcher):
        kept = []
        for cycle in range(50):
            batch = c.map(slowinc, range(12), delay=0.01, key=[f"c{cycle}-{i}" for i in range(12)])
            kept += batch[: rng.randint(1, 6)]  # persisted data
            if cycle % 2:
                await wait(batch)
                await until(lambda: len(s.workers) <= 1, timeout=10)  # scaled down
            del batch  # the rest is released, possibly while in flight
        assert statuses(plugin).count("down") >= 20
        values = await c.gather(kept)
        assert values == [int(f.key.split("-")[1]) + 1 for f in kept]
        assert set(watcher.computed.values()) == {1}  # nothing computed twice
