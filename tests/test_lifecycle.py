"""Every way of attaching, replacing, removing and restarting behaves.

One test per defect of the lifecycle issue, each through the public API, with
a real scheduler and real workers.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from types import ModuleType

import pytest
from distributed import Client, Scheduler
from distributed.utils_test import captured_logger, gen_test, inc, slowinc
from helpers import adaptive_cluster, errors, events, statuses, until
from inprocess import InProcessBackend

from dask_adaptive_plugin import AdaptivePlugin

NO_THREAD_CHECK = {"threads": False}


def scheduler(**kwargs) -> Scheduler:
    return Scheduler(dashboard_address=":0", host="127.0.0.1", **kwargs)


# -- 1. unregistering ----------------------------------------------------------------


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_unregistering_the_plugin_stops_it_and_closes_its_backend():
    async with scheduler() as s, Client(s.address, asynchronous=True) as c:
        await c.register_plugin(
            AdaptivePlugin(backend=InProcessBackend, minimum=1, maximum=2)
        )
        await until(lambda: len(s.workers) == 1, what="the minimum")
        plugin = s.plugins["adaptive"]
        backend = plugin.backend
        await c.unregister_scheduler_plugin("adaptive")
        await until(lambda: backend.closed, timeout=10, what="the backend closed")
        await until(lambda: not s.workers, timeout=10, what="its workers stopped")
        assert statuses(plugin)[-1] == "stopped"
        assert "unregistered" in plugin.log[-1][1]["reason"]


# -- 2. start failures are seen ------------------------------------------------------


def failing_plugin() -> AdaptivePlugin:
    return AdaptivePlugin(backend=InProcessBackend, backend_options={"fail_init": True})


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_start_failure_is_raised_to_a_client_that_registers_the_plugin():
    async with scheduler() as s, Client(s.address, asynchronous=True) as c:
        with pytest.raises(RuntimeError, match="could not start, on purpose"):
            await c.register_plugin(failing_plugin())
        assert "adaptive" not in s.plugins


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_start_failure_is_raised_to_register_scheduler_plugin():
    async with scheduler() as s:
        with pytest.raises(RuntimeError, match="could not start, on purpose"):
            await s.register_scheduler_plugin(failing_plugin(), idempotent=False)
        assert "adaptive" not in s.plugins


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_start_failure_stops_a_scheduler_that_starts_with_the_plugin():
    with pytest.raises(RuntimeError, match="Scheduler failed to start") as info:
        async with scheduler(plugins=[failing_plugin()]):
            pass
    assert "could not start, on purpose" in str(info.value.__cause__)


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_start_failure_after_add_plugin_is_an_error_log_and_event():
    async with scheduler() as s:
        with captured_logger("dask_adaptive_plugin", level=logging.ERROR) as log:
            s.add_plugin(failing_plugin())
            await until(lambda: events(s, "error"), what="an error event")
        [event] = events(s, "error")
        assert event["action"] == "start"
        assert "could not start, on purpose" in event["error"]
        assert "could not start, on purpose" in log.getvalue()
        assert "adaptive" not in s.plugins  # not left registered, doing nothing


# -- 3. a backend's own maximum bounds the first decision ---------------------------


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_maximum_the_backend_learns_in_init_bounds_every_decision(policy):
    options = {"n": 3} if policy == "fixed" else {"target_duration": "100ms"}
    async with adaptive_cluster(
        policy=policy, maximum=5, backend_options={"maximum": 1}, **options
    ) as (s, c, plugin, watcher):
        futures = c.map(slowinc, range(20), delay=0.05)
        await until(lambda: s.workers, what="a worker")
        await c.gather(futures)
        assert max(watcher.sizes) == 1
        assert set(plugin.backend.ups()) == {1}


# -- 4. restarts and retirements are not crashes ------------------------------------


@gen_test(timeout=180)
async def test_restarts_and_retirements_are_not_crashes():
    """Real ``dask worker`` processes with nannies, which restart them."""
    plugin = AdaptivePlugin(backend="local", policy="fixed", n=2, maximum=2)
    async with (
        scheduler(plugins=[plugin]) as s,
        Client(s.address, asynchronous=True) as c,
    ):
        await until(lambda: len(s.workers) == 2, timeout=60, what="two workers")
        await c.restart()
        await until(lambda: len(s.workers) == 2, timeout=60, what="restarted")
        await c.restart_workers(list(s.workers))
        await until(lambda: len(s.workers) == 2, timeout=60, what="restarted again")
        retired = next(iter(s.workers))
        await c.retire_workers([retired])
        await until(
            lambda: len(s.workers) == 2 and retired not in s.workers,
            timeout=60,
            what="the retired worker replaced",
        )
        assert [e for _, e in plugin.log if e["status"] == "error"] == []
        assert [e["n"] for _, e in plugin.log if e["status"] == "up"][0] == 2


# -- 5. a crash frees its slot at once ------------------------------------------------


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_crashed_worker_is_replaced_after_the_back_off_not_the_start_timeout():
    async with adaptive_cluster(
        policy="fixed",
        n=1,
        maximum=1,
        start_timeout="60s",
        # the backend still counts a dead worker, as ssh does until its channel closes
        backend_options={"die_after": 0.3, "keep_dead": True},
    ) as (s, c, plugin, watcher):
        await until(lambda: errors(plugin, "worker"), what="a crash")
        # the back-off after one crash is 1 s; the start timeout is 60 s
        await until(lambda: watcher.added >= 2, timeout=15, what="a replacement")
        assert len(plugin.backend.ups()) >= 2


# -- 6. requests: cancelled ones are not counted; each has its own deadline ----------


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_waiting_requests_that_scale_down_cancels_are_not_counted():
    async with adaptive_cluster(
        maximum=2,
        idle_timeout="200ms",
        start_timeout="60s",
        target_duration="100ms",
        backend_options={"hold": 1},
    ) as (s, c, plugin, watcher):
        first = c.map(slowinc, range(4), delay=0.2)
        await until(lambda: plugin.backend.held == 1, what="a request held")
        await c.gather(first)
        del first
        await until(lambda: "down" in statuses(plugin), what="a scale-down")
        assert plugin.backend.held == 0  # scale_down cancelled the waiting one
        await until(lambda: not s.workers)
        # one task needs one worker: asked for at once, not after start_timeout
        assert await asyncio.wait_for(c.submit(inc, 1), 15) == 2


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_request_times_out_even_when_more_workers_are_asked_for():
    async with adaptive_cluster(
        maximum=10_000,
        start_timeout="1s",
        target_duration="100ms",
        backend_options={"ghost": True},
    ) as (s, c, plugin, _):
        futures, started = [], time.monotonic()
        while not errors(plugin, "start"):  # more work, so more workers, each round
            assert time.monotonic() - started < 15, "no request timed out"
            futures += c.map(slowinc, range(3), delay=1, pure=False)
            await asyncio.sleep(0.1)
        assert "did not connect within 1s" in errors(plugin, "start")[0]["error"]
        assert time.monotonic() - started < 5


# -- 7. no growth for work that new workers cannot run ------------------------------


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_work_that_new_workers_cannot_run_stops_growth_with_one_event():
    async with adaptive_cluster(
        maximum=16, idle_timeout="200ms", backend_options={"ignore_resources": True}
    ) as (s, c, plugin, _):
        futures = c.map(inc, range(5), resources={"GPU": 1})
        await until(lambda: events(s, "unsatisfiable"), what="an unsatisfiable event")
        # the worker that arrived without a GPU is idle: it goes, none comes back
        await until(
            lambda: "down" in statuses(plugin), what="the useless worker retired"
        )
        await until(lambda: not s.workers)
        [event] = events(s, "unsatisfiable")
        assert event["needs"] == {"GPU": 1}
        assert event["tasks"] == 5
        assert plugin.backend.ups() == [1]
        del futures


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_task_pinned_to_a_worker_that_is_gone_starts_no_worker():
    async with adaptive_cluster(maximum=8, idle_timeout="200ms") as (s, c, plugin, _):
        pinned = c.submit(inc, 1, workers=["tcp://127.0.0.1:9"], key="pinned")
        await until(
            lambda: "pinned" in s.tasks and s.tasks["pinned"].state == "no-worker"
        )
        seen = plugin.controller.evaluations
        # a new graph is evaluated at once: the policy looks again at the
        # pinned tasks, and still asks for nothing
        more = c.submit(inc, 2, workers=["tcp://127.0.0.1:9"], key="pinned-2")
        await until(lambda: plugin.controller.evaluations > seen)
        assert plugin.backend.ups() == []
        del pinned, more


# -- 8. a failing hook does not stall the scheduler ---------------------------------


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_hook_that_keeps_failing_recounts_at_most_once_per_interval(
    monkeypatch,
):
    from dask_adaptive_plugin.stats import RESEED_INTERVAL

    async with adaptive_cluster(maximum=2) as (s, c, plugin, _):
        stats = plugin.stats
        recounts = []
        recount = stats.reseed
        monkeypatch.setattr(stats, "reseed", lambda: (recounts.append(1), recount()))

        def broken(*args, **kwargs):
            raise RuntimeError("broken on purpose")

        monkeypatch.setattr(stats, "transition", broken)
        started = time.monotonic()
        for i in range(30):
            assert await c.submit(inc, i) == i + 1
        elapsed = time.monotonic() - started
        assert 1 <= len(recounts) <= elapsed / RESEED_INTERVAL + 1


# -- 9. retirement never loses track of a worker ------------------------------------


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_retirement_that_raises_leaves_the_workers_to_be_retired_later(
    monkeypatch,
):
    async with adaptive_cluster(maximum=2, idle_timeout="200ms") as (s, c, plugin, _):
        await c.gather(c.map(slowinc, range(8), delay=0.05))
        retire = s.retire_workers
        failures = []

        async def fails_once(*args, **kwargs):  # a fault, injected once
            if not failures:
                failures.append(kwargs)
                raise OSError("retirement broke, on purpose")
            return await retire(*args, **kwargs)

        monkeypatch.setattr(s, "retire_workers", fails_once)
        await until(lambda: failures, what="the failed retirement")
        await until(lambda: not s.workers, what="retired after all")
        assert "retirement broke" in errors(plugin, "retire")[0]["error"]


# -- 10. deadlines follow the monotonic clock ---------------------------------------


def our_modules() -> list[ModuleType]:
    import sys

    return [
        m for n, m in list(sys.modules.items()) if n.startswith("dask_adaptive_plugin")
    ]


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_wall_clock_step_does_not_delay_a_retirement(monkeypatch):
    async with adaptive_cluster(maximum=1, idle_timeout="300ms") as (s, c, plugin, _):
        assert await c.submit(inc, 1) == 2
        # NTP steps the wall clock back an hour, as the package sees it
        stepped = lambda: time.time() - 3600  # noqa: E731
        for module in our_modules():
            if getattr(module, "time", None) is time.time:
                monkeypatch.setattr(module, "time", stepped)
        await until(lambda: not s.workers, timeout=10, what="the idle worker retired")


# -- 12. nothing unsafe in a forked child ---------------------------------------------


@gen_test(timeout=120)
async def test_a_local_worker_starts_without_loading_a_library_in_the_child(
    monkeypatch,
):
    def no_library(*args, **kwargs):
        raise OSError("a library was loaded after fork")

    # worker_args: a ``dask worker`` process, forked with PR_SET_PDEATHSIG
    plugin = AdaptivePlugin(
        backend="local",
        minimum=1,
        maximum=1,
        backend_options={"worker_args": "--no-dashboard"},
    )
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    async with scheduler(plugins=[plugin]) as s:
        await until(lambda: s.workers, timeout=60, what="a worker")
    assert not errors(plugin, "scale_up")


# -- 13. every wait is bounded ----------------------------------------------------------


@gen_test(timeout=60, clean_kwargs=NO_THREAD_CHECK)
async def test_a_backend_that_hangs_in_close_does_not_hold_the_scheduler():
    plugin = AdaptivePlugin(
        backend=InProcessBackend,
        minimum=1,
        maximum=1,
        start_timeout="1s",
        backend_options={"hang_close": True},
    )
    s = await scheduler(plugins=[plugin])
    await until(lambda: s.workers, what="a worker")
    backend = plugin.backend
    with captured_logger("dask_adaptive_plugin", level=logging.ERROR) as log:
        await asyncio.wait_for(s.close(), 20)
    assert "close" in log.getvalue()
    await asyncio.gather(*(w.close() for w in backend.workers.values()))


def test_the_package_keeps_no_module_level_state_of_schedulers():
    """One plugin per scheduler is found in ``scheduler.plugins``, not a map of ours."""
    for module in our_modules():
        for name, value in vars(module).items():
            assert "WeakKeyDictionary" not in type(value).__name__, (module, name)
