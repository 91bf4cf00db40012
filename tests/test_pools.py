"""Several pools: each need goes to the pools that can serve it, cheapest
first; what no pool provides grows nothing; a pool that does not deliver falls
back to the next. Real schedulers, real ``dask worker`` processes."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest
from distributed import Client, Scheduler, get_worker, wait
from distributed.utils_test import gen_test, inc, slowinc

from dask_adaptive_plugin import AdaptivePlugin
from dask_adaptive_plugin.ledger import LAUNCHING, REQUESTED, RUNNING
from helpers import events, until
from inprocess import InProcessBackend
from test_jobqueue_live import slurm, worker_options  # noqa: F401 (a fixture)

LOCAL = {"backend": "local", "backend_options": {"nthreads": 1, "memory_limit": "1GiB"}}
CPU_AND_GPU = {
    "cpu": {**LOCAL, "maximum": 2},
    "gpu": {**LOCAL, "maximum": 1, "resources": {"GPU": 1}, "cost": 5},
}


def scheduler(plugin: AdaptivePlugin) -> Scheduler:
    return Scheduler(dashboard_address=":0", host="127.0.0.1", plugins=[plugin])


def ups(plugin: AdaptivePlugin) -> list[tuple[str, int]]:
    return [(e["pool"], e["n"]) for _, e in plugin.log if e["status"] == "up"]


def pools_of_workers(plugin: AdaptivePlugin, s: Scheduler) -> dict[str, str | None]:
    return {str(ws.name): plugin.ledger.pool_of(a) for a, ws in s.workers.items()}


@gen_test(timeout=180)
async def test_plain_work_stays_in_the_cpu_pool_and_gpu_work_goes_to_the_gpu_pool():
    plugin = AdaptivePlugin(pools=CPU_AND_GPU, idle_timeout="1s", target_duration="1s")
    async with scheduler(plugin) as s, Client(s.address, asynchronous=True) as c:
        plain = c.map(slowinc, range(8), delay=0.5, pure=False)
        await wait(plain)
        assert {pool for pool, _ in ups(plugin)} == {"cpu"}
        assert set(pools_of_workers(plugin, s).values()) == {"cpu"}
        del plain
        await until(lambda: not s.workers, timeout=60, what="cpu workers retired")

        gpu = c.map(inc, range(4), resources={"GPU": 1}, pure=False)
        # a lambda travels by value: the worker processes cannot import this module
        ran = await c.gather(
            c.map(lambda x: get_worker().name, gpu, resources={"GPU": 1})
        )
        assert ups(plugin)[-1] == ("gpu", 1)  # exactly one, in the gpu pool
        [worker] = set(ran)
        assert plugin.ledger.entry(worker).pool == "gpu"
        assert s.workers[s.aliases[worker]].resources == {"GPU": 1}
        del gpu
        await until(lambda: not s.workers, timeout=60, what="both pools back to zero")
        assert [pool for pool, _ in ups(plugin)].count("gpu") == 1


@gen_test(timeout=120)
async def test_a_need_no_pool_provides_starts_nothing_and_is_reported_once():
    plugin = AdaptivePlugin(pools=CPU_AND_GPU, idle_timeout="1s")
    async with scheduler(plugin) as s, Client(s.address, asynchronous=True) as c:
        fpga = c.map(inc, range(3), resources={"FPGA": 1}, pure=False)
        await until(lambda: events(s, "unsatisfiable"), what="the event")
        more = c.map(inc, range(10, 13), resources={"FPGA": 1}, pure=False)
        seen = plugin.controller.evaluations
        await until(lambda: plugin.controller.evaluations > seen)
        [event] = events(s, "unsatisfiable")  # one per need, not per evaluation
        assert event["needs"] == {"FPGA": 1}
        assert event["pools"] == {"cpu": {}, "gpu": {"GPU": 1}}
        assert ups(plugin) == [] and not s.workers
        del fpga, more


@gen_test(timeout=180)
async def test_a_pool_that_never_delivers_falls_back_to_the_next():
    plugin = AdaptivePlugin(
        pools={
            # accepts every request, delivers nothing: a full partition
            "spot": {
                "backend": InProcessBackend,
                "backend_options": {"ghost": True},
                "start_timeout": "2s",
            },
            "on-demand": {**LOCAL, "maximum": 1, "cost": 3},
        },
        idle_timeout="1s",
    )
    async with scheduler(plugin) as s, Client(s.address, asynchronous=True) as c:
        futures = c.map(slowinc, range(4), delay=0.2, pure=False)
        assert await c.gather(futures) == [1, 2, 3, 4]
        assert set(pools_of_workers(plugin, s).values()) == {"on-demand"}
        story = [(e["status"], e.get("pool")) for _, e in plugin.log]
        assert story[:4] == [
            ("up", "spot"),
            ("error", "spot"),
            ("fallback", "spot"),
            ("up", "on-demand"),
        ]
        [fallback] = events(s, "fallback")
        assert (fallback["pool"], fallback["to"]) == ("spot", "on-demand")
        assert plugin.backends["spot"].calls[:2] == [("up", 1, {}), ("cancel", None, {})]
        del futures
        await until(lambda: not s.workers, timeout=60)


@gen_test(timeout=60)
async def test_pools_from_dask_config():
    import dask

    with dask.config.set({"adaptive-plugin.pools": CPU_AND_GPU}):
        plugin = AdaptivePlugin()
    assert [p.name for p in plugin.pools] == ["cpu", "gpu"]
    assert plugin.pools[1].resources == {"GPU": 1} and plugin.pools[1].cost == 5


@pytest.mark.parametrize(
    "pools, message",
    [
        ({"cpu": {"maximum": 2}}, r"pools.cpu.backend .*None"),
        ({"cpu": {**LOCAL, "cost": -1}}, r"pools.cpu.cost .*-1.*a number > 0"),
        ({"cpu": {**LOCAL, "colour": "red"}}, r"unknown field.*\['colour'\].*pool 'cpu'"),
        ({"cpu": {**LOCAL, "resources": {"GPU": "many"}}}, r"pools.cpu.resources"),
        ({"a b": LOCAL}, r"invalid pool name 'a b'"),
        ({"cpu": {**LOCAL, "minimum": 3, "maximum": 2}}, r"pools.cpu.minimum .*3"),
        ({"cpu": {"backend": "nosuch"}}, r"unknown backend 'nosuch'"),
        ({"cpu": {**LOCAL, "backend_options": {"colour": 1}}}, r"\['colour'\].*pool cpu"),
    ],
)
def test_bad_pool_declarations_name_the_pool_and_field(pools, message):
    with pytest.raises(ValueError, match=message):
        AdaptivePlugin(pools=pools)


def test_pools_and_a_backend_together_are_refused():
    with pytest.raises(ValueError, match="both pools and backend"):
        AdaptivePlugin(backend="local", pools=CPU_AND_GPU)


# -- the ledger against reality ---------------------------------------------------------


def ledger_matches_reality(plugin: AdaptivePlugin, s: Scheduler) -> bool:
    """Once quiet: the ledger's running workers are the scheduler's, and what
    it counts as running or on its way is what the backend says it runs."""
    ledger, backend = plugin.ledger, plugin.backend
    running = {e.address for e in ledger.entries() if e.state == RUNNING}
    live = {e.name for e in ledger.entries() if e.state in (RUNNING, LAUNCHING, REQUESTED)}
    return running == set(s.workers) and live == set(backend.report())


@gen_test(timeout=300)
async def test_the_ledger_equals_the_scheduler_and_the_backend_after_random_events():
    """Requests, arrivals, crashes (SIGKILL), cancellations and retirements
    against real ``dask worker`` processes, in a random order."""
    rng = random.Random(11)
    plugin = AdaptivePlugin(
        backend="local",
        maximum=3,
        idle_timeout="500ms",
        target_duration="200ms",
        backend_options={"worker_args": "--no-nanny"},
    )
    async with scheduler(plugin) as s, Client(s.address, asynchronous=True) as c:
        held = []
        for step in range(12):
            op = rng.choice(["burst", "burst", "kill", "release", "idle"])
            if op == "burst":
                held += c.map(slowinc, range(rng.randint(1, 6)), delay=0.3, pure=False)
                await asyncio.sleep(rng.choice([0.05, 0.5, 1.5]))
            elif op == "kill" and s.workers:
                victim = rng.choice(list(s.workers))
                pids = await c.run(os.getpid, workers=[victim])
                os.kill(pids[victim], signal.SIGKILL)
                await until(lambda: victim not in s.workers, timeout=30)
            elif op == "release":
                held.clear()
            await until(
                lambda: not plugin.controller._actions
                and ledger_matches_reality(plugin, s),
                timeout=60,
                what=f"the ledger to agree after step {step} ({op})",
            )
        held.clear()
        await until(lambda: not s.workers, timeout=60)
        await until(lambda: ledger_matches_reality(plugin, s), timeout=30)


# -- two SLURM partitions as two pools (live) -----------------------------------------------


@pytest.mark.slurm
@gen_test(timeout=300)
async def test_two_slurm_partitions_as_pools_send_each_task_where_it_fits(
    slurm, tmp_path, monkeypatch
):
    """Pools ``cpu`` and ``gpu`` on the partitions of the same names
    (``.ci/live/start-slurm.sh``): GPU tasks run only in jobs of the gpu
    partition, plain ones only in cpu, as ``squeue`` shows."""
    import dask_jobqueue.config

    from dask_adaptive_plugin.shell import run_command

    # gen_test resets dask config to before dask_jobqueue added its defaults
    dask_jobqueue.config.reconfigure()
    monkeypatch.chdir(tmp_path)  # the jobs' output files
    cluster = f"p{os.getpid()}"
    pools = {
        name: {
            "backend": "slurm",
            "backend_options": worker_options(f"{cluster}-{name}", queue=name),
            "maximum": 2,
            **extra,
        }
        for name, extra in {"cpu": {}, "gpu": {"resources": {"GPU": 1}, "cost": 5}}.items()
    }
    plugin = AdaptivePlugin(pools=pools, idle_timeout="2s", target_duration="1s")
    partitions: dict[str, str] = {}

    async def partition_of_jobs() -> dict[str, str]:
        out = await run_command(["squeue", "--noheader", "--format=%j %P"])
        rows = (line.split() for line in out.splitlines())
        partitions.update({job: part for job, part in rows if job.startswith(cluster)})
        return partitions

    async with scheduler(plugin) as s, Client(s.address, asynchronous=True) as c:
        gpu = c.map(slowinc, range(3), delay=0.5, resources={"GPU": 1}, pure=False)
        plain = c.map(slowinc, range(10, 16), delay=0.5, pure=False)
        ran_gpu = c.map(lambda x: get_worker().name, gpu, resources={"GPU": 1})
        ran_plain = c.map(lambda x: get_worker().name, plain)
        while not all(f.done() for f in ran_gpu + ran_plain):
            await partition_of_jobs()
            await asyncio.sleep(0.2)
        gpu_workers, plain_workers = set(await c.gather(ran_gpu)), set(await c.gather(ran_plain))
        await partition_of_jobs()
        assert {partitions[w] for w in gpu_workers} == {"gpu"}
        assert all(plugin.ledger.entry(w).pool == "gpu" for w in gpu_workers)
        cpu_jobs = {w for w in plain_workers if plugin.ledger.entry(w).pool == "cpu"}
        assert cpu_jobs and {partitions[w] for w in cpu_jobs} == {"cpu"}
        assert all(partitions[w] == "cpu" for w in partitions if w.startswith(f"{cluster}-cpu"))
        del gpu, plain, ran_gpu, ran_plain
        await until(lambda: not s.workers, timeout=60, what="every job retired")

    async def no_jobs_left() -> bool:
        out = await run_command(["squeue", "--noheader", "--format=%j"])
        return not [job for job in out.split() if job.startswith(cluster)]

    # a job whose worker just retired is listed until slurmd reaps it
    await until(no_jobs_left, timeout=60, interval=0.5, what="every job gone from squeue")
