"""The ``local`` backend's two ways to start a worker, with real processes.

Without ``worker_args`` each worker's nanny runs in the scheduler's process
(as ``LocalCluster``'s in the client's), so the worker process is its child:
one interpreter start. With them, each worker is a ``dask worker`` process
with its own nanny.
"""

from __future__ import annotations

import os

from distributed import Client, Scheduler
from distributed.utils_test import gen_test
from helpers import alive, until

from dask_adaptive_plugin import AdaptivePlugin


def scheduler(**kwargs) -> Scheduler:
    return Scheduler(dashboard_address=":0", host="127.0.0.1", **kwargs)


@gen_test(timeout=120)
async def test_a_workers_nanny_runs_in_the_schedulers_process():
    plugin = AdaptivePlugin(backend="local", minimum=2, maximum=2)
    async with (
        scheduler(plugins=[plugin]) as s,
        Client(s.address, asynchronous=True) as c,
    ):
        await until(lambda: len(s.workers) == 2, timeout=60, what="two workers")
        parents = set((await c.run(os.getppid)).values())
        assert parents == {os.getpid()}  # the worker processes are ours
        nannies = plugin.backend.nannies
        assert {str(ws.name) for ws in s.workers.values()} == set(nannies)
        assert {ws.nanny for ws in s.workers.values()} == {
            n.address for n in nannies.values()
        }
        pids = set((await c.run(os.getpid)).values())
    # the scheduler closed: each nanny closed, and its worker process ended
    assert all(n.status.name == "closed" for n in nannies.values())
    await until(lambda: not any(alive(p) for p in pids), timeout=30, what="exit")


@gen_test(timeout=120)
async def test_with_worker_args_each_worker_is_a_dask_worker_process():
    plugin = AdaptivePlugin(
        backend="local",
        minimum=1,
        maximum=1,
        backend_options={"worker_args": "--no-dashboard"},
    )
    async with (
        scheduler(plugins=[plugin]) as s,
        Client(s.address, asynchronous=True) as c,
    ):
        await until(lambda: len(s.workers) == 1, timeout=60, what="a worker")
        [parent] = (await c.run(os.getppid)).values()
        assert parent != os.getpid()  # its nanny is a process of its own
        assert not plugin.backend.nannies and len(plugin.backend.processes) == 1


@gen_test(timeout=120)
async def test_a_retired_workers_nanny_is_replaced_and_waited_for_on_close():
    """A nanny ending (its worker retired) is not reported as a worker, and is
    still closed with the others: gen_test fails on a nanny left running."""
    plugin = AdaptivePlugin(backend="local", policy="fixed", n=1, maximum=1)
    async with (
        scheduler(plugins=[plugin]) as s,
        Client(s.address, asynchronous=True) as c,
    ):
        await until(lambda: len(s.workers) == 1, timeout=60, what="a worker")
        [first] = plugin.backend.report()
        await c.retire_workers(list(s.workers))
        # replaced by a new worker; the old nanny is not counted as one
        await until(
            lambda: (
                len(s.workers) == 1
                and first not in {str(ws.name) for ws in s.workers.values()}
            ),
            timeout=60,
            what="the replacement",
        )
        assert first not in plugin.backend.report()
        assert len(plugin.backend.report()) == 1

