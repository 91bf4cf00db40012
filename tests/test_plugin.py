"""The scenarios of distributed's own Adaptive tests, rewritten for the plugin.

Each test runs a real scheduler, real workers (in the scheduler's process, see
``inprocess.py``) and a real client.
"""

from __future__ import annotations

import asyncio
import threading
import time

import dask
import dask.array as da
import pytest
from distributed import Client, Scheduler, Worker, get_worker, wait
from distributed.utils_test import gen_test, inc, slowinc
from helpers import adaptive_cluster, statuses, until
from inprocess import InProcessBackend

from dask_adaptive_plugin import AdaptivePlugin


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_scale_from_zero_and_back_to_zero():
    async with adaptive_cluster(maximum=4, idle_timeout="200ms") as (s, c, plugin, _):
        assert not s.workers
        futures = c.map(slowinc, range(20), delay=0.05)
        assert await c.gather(futures) == list(range(1, 21))
        assert s.workers
        del futures
        await until(lambda: not s.workers)
        assert statuses(plugin)[0] == "up"
        assert "down" in statuses(plugin)
        assert all(entry["reason"] for _, entry in plugin.log)
        events = [msg for _, msg in await c.get_events("adaptive")]
        assert [e["status"] for e in events] == statuses(plugin)


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_first_event_is_evaluated_at_once():
    async with adaptive_cluster(maximum=2) as (s, c, plugin, _):
        backend = plugin.backend
        start = time.perf_counter()
        future = c.submit(inc, 1)
        await until(lambda: backend.calls, interval=0.001)
        assert time.perf_counter() - start < 1.0  # generous; the benchmark measures it
        assert await future == 2


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_minimum_and_maximum_held_at_all_times():
    async with adaptive_cluster(minimum=1, maximum=3, idle_timeout="100ms") as (
        s, c, plugin, watcher,
    ):  # fmt: skip
        await until(lambda: len(s.workers) == 1)
        first = len(watcher.sizes)
        futures = c.map(slowinc, range(60), delay=0.05)
        await wait(futures)
        assert max(watcher.sizes) == 3
        del futures
        await until(lambda: len(s.workers) == 1)
        # were the minimum not kept, the last worker would go after one idle
        # timeout (100 ms): wait five
        await asyncio.sleep(5 * 0.1)
        assert len(s.workers) == 1
        assert min(watcher.sizes[first:]) >= 1
        assert max(watcher.sizes) <= 3


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_no_churn_across_short_pauses():
    async with adaptive_cluster(maximum=4, idle_timeout="2s") as (s, c, plugin, _):
        for i in range(10):
            await c.submit(slowinc, i, delay=0.04)
            await asyncio.sleep(0.04)
        assert statuses(plugin) == ["up"]
        assert plugin.backend.ups() == [1]


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_no_more_workers_than_tasks():
    async with adaptive_cluster(maximum=10) as (s, c, plugin, watcher):
        futures = c.map(slowinc, range(3), delay=0.5)
        await wait(futures)
        assert max(watcher.sizes) <= 3
        assert max(plugin.backend.ups()) <= 3


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_long_sequential_chain_does_not_scale_out():
    async with adaptive_cluster(maximum=8) as (s, c, plugin, watcher):
        x = c.submit(slowinc, 0, delay=0.02)
        for _ in range(40):
            x = c.submit(slowinc, x, delay=0.02)
        assert await x == 41
        assert max(watcher.sizes) == 1


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_wide_work_reaches_the_maximum_within_seconds():
    async with adaptive_cluster(maximum=6) as (s, c, plugin, _):
        start = time.monotonic()
        futures = c.map(slowinc, range(1000), delay=0.1)
        await until(lambda: len(s.workers) == 6, timeout=5)
        reached = time.monotonic() - start
        assert reached < 5
        await c.cancel(futures)


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_target_duration_sizes_the_cluster():
    config = {"distributed.scheduler.default-task-durations": {"slowinc": 1}}
    with dask.config.set(config):
        async with adaptive_cluster(minimum=2, maximum=100, target_duration="5s") as (
            s, c, plugin, _,
        ):  # fmt: skip
            await until(lambda: len(s.workers) == 2)
            futures = c.map(slowinc, range(100), delay=0.3)
            await until(lambda: len(plugin.log) >= 2)
            assert plugin.log[0][1]["n"] == 2
            assert plugin.log[1][1]["status"] == "up"
            assert plugin.log[1][1]["n"] == 20
            await c.cancel(futures)


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_memory_pressure_scales_up():
    config = {
        f"distributed.worker.memory.{k}": False
        for k in ("target", "spill", "pause", "terminate")
    }
    with dask.config.set(config):
        async with adaptive_cluster(
            minimum=1, maximum=4, backend_options={"memory_limit": 1_000_000}
        ) as (s, c, plugin, _):
            await until(lambda: len(s.workers) == 1)
            data = c.map(lambda i: b"x" * 350_000, range(2), pure=False)
            await wait(data)
            await until(lambda: len(s.workers) > 1)
            up = [e for _, e in plugin.log if e["status"] == "up"][-1]
            assert "memory" in up["reason"]


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_persisted_data_survives_scale_down_and_nothing_is_computed_twice():
    async with adaptive_cluster(maximum=4, idle_timeout="200ms") as (s, c, plugin, watcher):
        futures = c.map(slowinc, range(100), delay=0.02)
        await wait(futures)
        assert len(s.workers) > 1
        await until(lambda: len(s.workers) == 1, timeout=10)
        assert "down" in statuses(plugin)
        assert await c.gather(futures) == list(range(1, 101))
        assert set(watcher.computed.values()) == {1}
        assert len(watcher.computed) == 100


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_resource_needs_reach_scale_up_kwargs():
    async with adaptive_cluster(maximum=2) as (s, c, plugin, _):
        future = c.submit(inc, 1, resources={"GPU": 2})
        assert await future == 2
        kind, n, kwargs = plugin.backend.calls[0]
        assert (kind, kwargs) == ("up", {"GPU": 2})
        assert plugin.log[0][1]["kwargs"] == {"GPU": 2}


GATE = threading.Event()
HELD_ON: list[str] = []


def wait_at_the_gate_for_chunk_0(block, block_info=None):
    """Hold one output chunk of the shuffle until the test opens the gate."""
    if block_info[None]["chunk-location"] == (0, 0):
        HELD_ON.append(get_worker().address)
        GATE.wait(30)
    return block


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_an_idle_worker_in_a_running_p2p_shuffle_is_not_retired():
    """distributed's own P2P shuffle vetoes retiring its workers: an idle
    participant stays while the shuffle runs, and goes when it is done."""
    GATE.clear()
    HELD_ON.clear()
    async with adaptive_cluster(policy="fixed", n=1, idle_timeout="2s") as (
        s, c, plugin, _,
    ):  # fmt: skip
        await until(lambda: len(s.workers) == 1)
        async with Worker(s.address, nthreads=1):  # one more than fixed n=1
            x = da.ones((4000, 4000), chunks=(4000, 250))
            with dask.config.set({"array.rechunk.method": "p2p"}):
                y = x.rechunk((250, 4000)).map_blocks(
                    wait_at_the_gate_for_chunk_0, dtype=float
                )
            total = c.compute(y.sum())
            shuffles = s.plugins["shuffle"].active_shuffles

            def idle_participants():
                running = [sh.participating_workers for sh in shuffles.values()]
                return [a for a, ws in s.workers.items()
                        if not ws.processing and any(a in p for p in running)]  # fmt: skip

            await until(lambda: HELD_ON, what="the gated chunk running")
            (idle,) = set(s.workers) - set(HELD_ON)
            await until(
                lambda: idle_participants() == [idle], what="idle in the shuffle"
            )
            # the fixed policy wants one fewer: without the veto the idle
            # participant would go after one idle timeout; wait two
            await asyncio.sleep(2 * 2.0)
            assert idle in s.workers and idle_participants() == [idle]
            assert "down" not in statuses(plugin)
            GATE.set()
            assert await total == 4000 * 4000
            del total
            await until(lambda: len(s.workers) == 1, what="retired after the shuffle")
            assert "down" in statuses(plugin)
            assert plugin.controller.evaluations < 50  # the veto made it not spin


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_workers_running_tasks_are_not_retired():
    async with adaptive_cluster(
        maximum=2, idle_timeout="100ms", target_duration="100ms"
    ) as (s, c, plugin, _):
        long = c.submit(slowinc, 1, delay=3, key="long")
        await until(lambda: "long" in s.tasks and s.tasks["long"].state == "processing")
        runner = s.tasks["long"].processing_on.address
        short = c.map(slowinc, range(4), delay=0.1)
        await until(lambda: len(s.workers) == 2)
        await until(lambda: len(s.workers) == 1)  # the idle one goes
        assert set(s.workers) == {runner}
        assert s.tasks["long"].state == "processing"
        assert await long == 2
        assert len(await c.gather(short)) == 4


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_second_plugin_replaces_the_first():
    async with adaptive_cluster(maximum=2, idle_timeout="100ms") as (s, c, first, _):
        await c.gather(c.map(inc, range(5)))
        calls = len(first.backend.calls)
        second = AdaptivePlugin(backend=InProcessBackend, maximum=3)
        first_backend = first.backend
        with pytest.warns(UserWarning, match="plugin with name adaptive; overwriting"):
            s.add_plugin(second)
        await until(lambda: second.controller is not None)
        # add_plugin tells the first nothing: it notices within a second
        await until(lambda: first_backend.closed, timeout=5)
        assert first.controller is None
        assert statuses(first)[-1] == "stopped"
        assert s.plugins["adaptive"] is second
        assert await c.gather(c.map(inc, range(10, 20))) == list(range(11, 21))
        assert len(first_backend.calls) == calls
        assert second.backend.calls


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_added_to_a_running_scheduler_honours_minimum_at_once():
    async with Scheduler(dashboard_address=":0", host="127.0.0.1") as s:
        plugin = AdaptivePlugin(backend=InProcessBackend, minimum=2, maximum=4)
        s.add_plugin(plugin)
        await until(lambda: len(s.workers) == 2, timeout=10)
        assert plugin.log[0][1]["status"] == "up"
        assert "minimum" in plugin.log[0][1]["reason"]


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_registered_from_a_client():
    async with Scheduler(dashboard_address=":0", host="127.0.0.1") as s:
        async with Client(s.address, asynchronous=True) as c:
            await c.register_plugin(
                AdaptivePlugin(backend=InProcessBackend, minimum=1, maximum=2)
            )
            await until(lambda: len(s.workers) == 1, timeout=10)
            assert isinstance(s.plugins["adaptive"], AdaptivePlugin)
            assert await c.submit(inc, 1) == 2


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_failing_backend_becomes_events_and_back_off():
    async with adaptive_cluster(maximum=2, backend_options={"fail": 2}) as (
        s, c, plugin, _,
    ):  # fmt: skip
        start = time.monotonic()
        assert await c.submit(inc, 1) == 2
        waited = time.monotonic() - start
        errors = [e for _, e in plugin.log if e["status"] == "error"]
        assert [e["retry_in"] for e in errors] == [1.0, 2.0]
        assert "failed on purpose" in errors[0]["error"]
        assert waited >= 3.0  # 1 s then 2 s of back-off
        ups = plugin.backend.ups()
        assert len(ups) == 3


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_scheduler_close_stops_the_plugin_and_closes_the_backend():
    async with adaptive_cluster(minimum=1, maximum=2) as (s, c, plugin, _):
        await until(lambda: len(s.workers) == 1)
        backend = plugin.backend
    assert backend.closed
    assert plugin.controller is None
    assert statuses(plugin)[-1] == "stopped"
