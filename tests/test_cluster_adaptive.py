"""``cluster.adapt(Adaptive=ClusterAdaptive)``: the plugin driving a real cluster object.

``LocalCluster(processes=True)`` runs real worker processes under nannies;
the live tests drive a real ``dask_jobqueue.SLURMCluster`` against the Slurm
of ``.ci/live/start-slurm.sh`` and read the queue with ``squeue``. Every wait
for something to happen is on a condition (``helpers.until``); only checks
that something does *not* happen let time pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import uuid
from pathlib import Path
from typing import Any

import dask
import pytest
from conftest import require_live
from distributed import Client, LocalCluster, Scheduler, Worker, wait
from distributed.core import rpc
from distributed.deploy.cluster import Cluster
from distributed.deploy.spec import ProcessInterface, SpecCluster
from distributed.utils_test import gen_test, inc, slowinc
from helpers import Watcher, errors, events, statuses, until

from dask_adaptive_plugin import AdaptivePlugin, ClusterAdaptive
from dask_adaptive_plugin.cluster_adaptive import ClusterBackend

try:  # the session fixture of the live Slurm (it needs dask-jobqueue)
    from test_jobqueue_live import slurm
except pytest.skip.Exception:

    @pytest.fixture
    def slurm():
        require_live("slurm", False, "dask-jobqueue is not installed")


#: Seconds between looks at the Slurm queue while waiting.
POLL = 0.2


def local_cluster(**kwargs: Any) -> LocalCluster:
    """Worker processes under nannies, one thread each, none at first."""
    return LocalCluster(
        n_workers=0,
        processes=True,
        threads_per_worker=1,
        asynchronous=True,
        dashboard_address=":0",
        host="127.0.0.1",
        **kwargs,
    )


def adaptive(cluster: Any) -> ClusterAdaptive:
    return cluster._adaptive


def plugins_on(cluster: Any) -> list[AdaptivePlugin]:
    return [
        p for p in cluster.scheduler.plugins.values() if isinstance(p, AdaptivePlugin)
    ]


# -- LocalCluster: the scenarios the suite runs for the plugin ---------------------------


@gen_test(timeout=90)
async def test_scale_from_zero_and_back_to_zero_twice():
    """Tasks bring worker processes, idle ones go; the second round's workers
    get names of their own (LocalCluster would give back the first round's)."""
    async with local_cluster() as cluster, Client(cluster, asynchronous=True) as c:
        result = await cluster.adapt(
            Adaptive=ClusterAdaptive, minimum=0, maximum=2, idle_timeout="500ms"
        )
        assert result is adaptive(cluster) and result.state == "running"
        assert "Scaling mode: Adaptive" in cluster._scaling_status()
        names: list[set[str]] = []
        for _ in range(2):
            futures = c.map(slowinc, range(20), delay=0.1)
            assert await c.gather(futures) == list(range(1, 21))
            names.append({str(ws.name) for ws in cluster.scheduler.workers.values()})
            del futures
            await until(lambda: not cluster.scheduler.workers, 30, what="retired")
            await until(lambda: not cluster.worker_spec, what="the plan emptied")
        assert names[0] and names[1] and names[0].isdisjoint(names[1])
        log = statuses(result.plugin)
        assert log.count("up") >= 2 and "down" in log and "error" not in log
        assert all(e["pool"] == "default" for _, e in result.log if "pool" in e)
        # every decision is also an event on the cluster's scheduler
        assert [e["status"] for e in events(cluster.scheduler)] == log


@gen_test(timeout=90)
async def test_no_churn_across_short_pauses():
    async with local_cluster() as cluster, Client(cluster, asynchronous=True) as c:
        watcher = Watcher()
        cluster.scheduler.add_plugin(watcher)
        await cluster.adapt(Adaptive=ClusterAdaptive, maximum=2, idle_timeout="2s")
        for i in range(10):
            await c.submit(slowinc, i, delay=0.04)
            await asyncio.sleep(0.04)
        assert statuses(adaptive(cluster).plugin) == ["up"]
        assert watcher.added == 1 and len(cluster.worker_spec) == 1


@gen_test(timeout=90)
async def test_persisted_data_survives_scale_down_and_nothing_is_computed_twice():
    async with local_cluster() as cluster, Client(cluster, asynchronous=True) as c:
        watcher = Watcher()
        cluster.scheduler.add_plugin(watcher)
        await cluster.adapt(Adaptive=ClusterAdaptive, maximum=3, idle_timeout="300ms")
        futures = c.map(slowinc, range(60), delay=0.05)
        await wait(futures)
        assert len(cluster.scheduler.workers) > 1
        # the last worker holds data: it stays
        await until(lambda: len(cluster.scheduler.workers) == 1, 30, what="one left")
        assert len(cluster.worker_spec) == 1
        assert "down" in statuses(adaptive(cluster).plugin)
        assert await c.gather(futures) == list(range(1, 61))
        assert set(watcher.computed.values()) == {1} and len(watcher.computed) == 60


@gen_test(timeout=60)
async def test_the_backend_reports_the_plan_and_maps_names_to_entries():
    async with local_cluster() as cluster:
        backend = ClusterBackend(cluster.scheduler, cluster)
        await backend.scale_up(2)
        assert backend.report() == {"0": "running", "1": "running"}
        assert backend.entries_of(["1"]) == [1]
        address = cluster.scheduler.aliases[1]
        assert backend.stopped_together(address) == [address]
        await backend.scale_up(1)  # asked for less: nobody stops
        assert len(cluster.worker_spec) == 2
        await backend.scale_down([address])
        assert list(cluster.worker_spec) == [0]
        await until(lambda: len(cluster.scheduler.workers) == 1)


# -- entries that wait: what a batch job in a queue looks like ----------------------------


class NeverConnects(ProcessInterface):
    """A plan entry that starts and whose worker never connects: a queued job."""

    def __init__(self, scheduler: str | None = None, name: Any = None) -> None:
        super().__init__(scheduler, name)


def waiting_cluster(**workers: Any) -> SpecCluster:
    """A SpecCluster whose new entries wait forever; ``workers``: real ones."""
    return SpecCluster(
        workers={name: {"cls": Worker, "options": {"nthreads": 1}} for name in workers},
        worker={"cls": NeverConnects, "options": {}},
        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        asynchronous=True,
    )


#: The policy believes each task takes 10 s, so it wants every worker it may have.
LONG_TASKS = {"distributed.scheduler.default-task-durations": {"slowinc": 10}}


@gen_test(timeout=60)
async def test_waiting_entries_count_are_not_doubled_and_are_cancelled_when_overdue():
    with dask.config.set(LONG_TASKS):
        async with (
            waiting_cluster() as cluster,
            Client(cluster, asynchronous=True) as c,
        ):
            result = await cluster.adapt(
                Adaptive=ClusterAdaptive, maximum=2, start_timeout="1s"
            )
            futures = c.map(slowinc, range(4), delay=0.1)
            await until(lambda: len(cluster.workers) == 2, what="two entries started")
            assert set(result.backend.report().values()) == {"running"}
            await until(lambda: errors(result.plugin, "start"), what="overdue")
            assert "did not deliver" in errors(result.plugin, "start")[0]["reason"]
            assert len(cluster.worker_spec) <= 2  # counted while waiting: never doubled
            await until(lambda: not cluster.worker_spec, what="the entries cancelled")
            await c.cancel(futures)


@gen_test(timeout=60)
async def test_retiring_workers_also_cancels_entries_still_waiting():
    with dask.config.set(LONG_TASKS):
        async with (
            waiting_cluster(real=True) as cluster,
            Client(cluster, asynchronous=True) as c,
        ):
            result = await cluster.adapt(
                Adaptive=ClusterAdaptive, maximum=3, idle_timeout="300ms"
            )
            futures = c.map(slowinc, range(4), delay=0.1)
            await until(lambda: len(cluster.worker_spec) == 3, what="two waiting")
            assert await c.gather(futures) == [1, 2, 3, 4]
            del futures
            await until(lambda: not cluster.worker_spec, what="all retired")
            (cancelled,) = [e for _, e in result.log if e["status"] == "cancelled"]
            assert len(cancelled["entries"]) == 2 and "real" not in cancelled["entries"]
            assert "down" in statuses(result.plugin)


# -- settings, manual scaling, stopping -----------------------------------------------------


@gen_test(timeout=60)
async def test_adapt_called_again_replaces_the_settings_with_one_plugin():
    async with local_cluster() as cluster:
        first = await cluster.adapt(
            Adaptive=ClusterAdaptive, maximum=1, idle_timeout="7s"
        )
        second = await cluster.adapt(Adaptive=ClusterAdaptive, minimum=1, maximum=3)
        assert first.state == "stopped" and first.plugin.controller is None
        assert plugins_on(cluster) == [second.plugin]
        assert (second.minimum, second.maximum) == (1, 3)
        # distributed keeps the earlier keywords: idle_timeout carries over
        assert second.plugin.options.idle_timeout == 7.0
        await until(lambda: len(cluster.scheduler.workers) == 1, what="the minimum")
        stopped = [e for _, e in first.log if e["status"] == "stopped"]
        assert stopped and "ClusterAdaptive.stop()" in stopped[0]["reason"]


@gen_test(timeout=60)
async def test_scaling_by_hand_turns_adaptivity_off_and_the_workers_stay():
    async with local_cluster() as cluster:
        result = await cluster.adapt(
            Adaptive=ClusterAdaptive, maximum=4, idle_timeout="200ms"
        )
        cluster.scale(2)
        await until(lambda: result.state == "stopped", what="adaptivity off")
        await until(lambda: len(cluster.scheduler.workers) == 2, what="two workers")
        assert not plugins_on(cluster) and result.periodic_callback is None
        assert "Scaling mode: Manual" in cluster._scaling_status()
        (stopped,) = [e for _, e in result.log if e["status"] == "stopped"]
        assert "by hand" in stopped["reason"] and "from 0 to 2" in stopped["reason"]
        # idle far longer than idle_timeout, and nobody retires them
        await asyncio.sleep(5 * 0.2)
        assert len(cluster.scheduler.workers) == 2
        assert statuses(result.plugin) == ["stopped"]


@gen_test(timeout=60)
async def test_scaling_down_by_hand_is_noticed_before_the_next_scale_up():
    async with local_cluster() as cluster, Client(cluster, asynchronous=True) as c:
        result = await cluster.adapt(
            Adaptive=ClusterAdaptive, minimum=2, maximum=2, idle_timeout="200ms"
        )
        await until(lambda: len(cluster.scheduler.workers) == 2, what="the minimum")
        cluster.scale(1)
        await until(lambda: result.state == "stopped", what="adaptivity off")
        await until(lambda: len(cluster.scheduler.workers) == 1, what="one worker")
        assert await c.submit(inc, 1) == 2
        assert len(cluster.worker_spec) == 1  # the minimum of 2 no longer applies
        assert [e["status"] for _, e in result.log].count("up") == 1


@gen_test(timeout=60)
async def test_stop_turns_it_off_and_leaves_the_workers():
    async with local_cluster() as cluster:
        result = await cluster.adapt(Adaptive=ClusterAdaptive, minimum=1, maximum=1)
        await until(lambda: len(cluster.scheduler.workers) == 1)
        result.stop(reason="widget")  # what the widget's Scale button does
        await until(lambda: not plugins_on(cluster), what="the plugin removed")
        assert result.state == "stopped" and len(cluster.worker_spec) == 1


def test_a_synchronous_cluster_attaches_at_once_and_stops_from_another_thread():
    with LocalCluster(
        n_workers=0, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as cluster, Client(cluster) as c:  # fmt: skip
        # only keywords distributed's Adaptive takes too: it gets them next
        result = cluster.adapt(Adaptive=ClusterAdaptive, maximum=2)
        assert result.state == "running" and plugins_on(cluster) == [result.plugin]
        assert c.gather(c.map(slowinc, range(6), delay=0.1)) == list(range(1, 7))
        cluster.adapt(maximum=1)  # distributed's own Adaptive takes over
        assert result.state == "stopped" and not plugins_on(cluster)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"worker_key": len}, r"worker_key=.*pass worker_key=None"),
        ({"backend": "local"}, r"backend=\.\.\.\): the cluster is the one pool"),
        ({"pools": {}}, r"pools=\.\.\.\).*--preload"),
        ({"maximum": -1}, r"ClusterAdaptive.*invalid maximum.*-1"),
        ({"no_such_option": 1}, r"ClusterAdaptive.*no_such_option"),
    ],
)
@gen_test(timeout=30)
async def test_bad_options_are_refused_naming_them(options, message):
    async with LocalCluster(
        n_workers=0, processes=False, asynchronous=True, dashboard_address=":0"
    ) as cluster:
        with pytest.raises(ValueError, match=message):
            cluster.adapt(Adaptive=ClusterAdaptive, **options)
        assert not plugins_on(cluster)


@gen_test(timeout=30)
async def test_distributed_keywords_are_accepted_and_noted(caplog):
    async with LocalCluster(
        n_workers=0, processes=False, asynchronous=True, dashboard_address=":0"
    ) as cluster:
        with caplog.at_level(logging.INFO, "dask_adaptive_plugin.cluster_adaptive"):
            result = await cluster.adapt(
                Adaptive=ClusterAdaptive,
                interval="500ms",
                wait_count=3,
                target_duration="2s",
            )
        assert "ignores interval='500ms', wait_count=3" in caplog.text
        assert result.plugin.policy.target_duration == 2.0
        assert result.maximum == math.inf  # SpecCluster.adapt's default


# -- a scheduler in another process -----------------------------------------------------------


class SubprocessScheduler(ProcessInterface):
    """A ``dask scheduler`` process, as SSHCluster's or a cloud VM's scheduler."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.file = Path(directory) / f"scheduler-{uuid.uuid4().hex[:6]}.json"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "distributed.cli.dask_scheduler",
            "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--scheduler-file", str(self.file),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await until(lambda: self.file.exists() and self.file.stat().st_size, 60)
        self.address = json.loads(self.file.read_text())["address"]
        await super().start()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        await super().close()


class GatewayLikeCluster(Cluster):
    """A cluster object with only a connection to its scheduler (dask-gateway's shape)."""

    def __init__(self, address: str) -> None:
        super().__init__(asynchronous=True)
        self.scheduler_comm = rpc(address)


@gen_test(timeout=60)
async def test_a_scheduler_in_another_process_is_refused_with_the_preload_way(
    tmp_path,
):
    spec = {"cls": SubprocessScheduler, "options": {"directory": str(tmp_path)}}
    async with SpecCluster(scheduler=spec, asynchronous=True) as cluster:
        gateway = GatewayLikeCluster(cluster.scheduler_address)
        for each in (cluster, gateway):
            with pytest.raises(ValueError) as info:
                each.adapt(Adaptive=ClusterAdaptive, maximum=4)
            text = str(info.value)
            assert type(each).__name__ in text and cluster.scheduler_address in text
            assert "dask scheduler --preload dask_adaptive_plugin" in text
            assert each._adaptive is None
        await gateway.close()


class LocalSchedulerCluster(Cluster):
    """A cluster object with a scheduler in this process but no plan to read."""

    def __init__(self, scheduler: Any) -> None:
        super().__init__(asynchronous=True)
        self.scheduler = scheduler


@gen_test(timeout=30)
async def test_a_cluster_that_is_not_a_spec_cluster_is_refused():
    async with LocalCluster(
        n_workers=0, processes=False, asynchronous=True, dashboard_address=":0"
    ) as local:
        cluster = LocalSchedulerCluster(local.scheduler)
        with pytest.raises(TypeError, match="needs a SpecCluster.*writing-a-backend"):
            cluster.adapt(Adaptive=ClusterAdaptive)
        await cluster.close()


# -- live: dask_jobqueue.SLURMCluster ---------------------------------------------------------


def slurm_cluster(name: str, **extra: Any) -> Any:
    """A SLURMCluster whose jobs are all named ``name`` (and workers ``name-<i>``)."""
    from dask_jobqueue import SLURMCluster

    options = {
        "cores": 1,
        "memory": "1GB",
        "processes": 1,
        "python": sys.executable,
        "interface": "lo",
        "death_timeout": 30,
        "job_name": name,
        "name": name,
        "asynchronous": True,
        "scheduler_options": {"dashboard_address": ":0"},
        **extra,
    }
    return SLURMCluster(**options)


async def jobs_named(name: str) -> dict[str, str]:
    """Job id -> state of the Slurm jobs named ``name``."""
    proc = await asyncio.create_subprocess_exec(
        "squeue", "--noheader", "--format=%i %t %j", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    rows = [line.split() for line in out.decode().splitlines()]
    return {row[0]: row[1] for row in rows if len(row) == 3 and row[2] == name}


async def no_jobs(name: str) -> bool:
    return not await jobs_named(name)


@pytest.fixture
def live_slurm(slurm, tmp_path, monkeypatch):
    """The live Slurm, with job output files in a temporary directory."""
    pytest.importorskip("dask_jobqueue")
    monkeypatch.chdir(tmp_path)
    return slurm


def reconfigure_jobqueue() -> None:
    # gen_test resets dask config to a copy taken before dask_jobqueue added
    # its defaults (jobqueue.<system>.*), which SLURMCluster reads
    import dask_jobqueue.config

    dask_jobqueue.config.reconfigure()


@pytest.mark.slurm
@gen_test(timeout=120)
async def test_slurm_cluster_adapt_scales_jobs_up_and_down(live_slurm):
    reconfigure_jobqueue()
    name = "ca" + uuid.uuid4().hex[:8]
    async with slurm_cluster(name) as cluster, Client(cluster, asynchronous=True) as c:
        result = await cluster.adapt(
            Adaptive=ClusterAdaptive, minimum=0, maximum=2, idle_timeout="2s"
        )
        futures = c.map(slowinc, range(20), delay=0.4)
        await until(lambda: jobs_named(name), 30, POLL, what="jobs in the queue")
        assert await c.gather(futures) == list(range(1, 21))
        del futures
        assert 1 <= len(cluster.worker_spec) <= 2
        workers = {str(ws.name) for ws in cluster.scheduler.workers.values()}
        assert workers and all(w.startswith(f"{name}-") for w in workers)
        await until(lambda: not cluster.scheduler.workers, 30, POLL, what="retired")
        await until(lambda: no_jobs(name), 30, POLL, what="the jobs cancelled")
        assert not cluster.worker_spec
        log = statuses(result.plugin)
        assert "up" in log and "down" in log and "error" not in log, result.log
    assert await no_jobs(name), "a job outlived the cluster"


@pytest.mark.slurm
@gen_test(timeout=120)
async def test_slurm_job_of_two_workers_is_retired_whole(live_slurm):
    reconfigure_jobqueue()
    name = "cu" + uuid.uuid4().hex[:8]
    async with (
        slurm_cluster(name, cores=2, memory="2GB", processes=2) as cluster,
        Client(cluster, asynchronous=True) as c,
    ):
        result = await cluster.adapt(Adaptive=ClusterAdaptive, maximum=2)
        futures = c.map(slowinc, range(12), delay=0.4)
        s = cluster.scheduler
        await until(lambda: len(s.workers) == 2, 45, POLL, what="two workers")
        assert len(await jobs_named(name)) == 1
        (job,) = cluster.worker_spec
        assert sorted(str(ws.name) for ws in s.workers.values()) == [
            f"{job}-0",
            f"{job}-1",
        ]
        for address in s.workers:
            assert sorted(result.backend.stopped_together(address)) == sorted(s.workers)
        await c.gather(futures)
        del futures
        await until(lambda: not s.workers, 30, POLL, what="both workers retired")
        (down,) = [e for _, e in result.log if e["status"] == "down"]
        assert len(down["workers"]) == 2
        await until(lambda: no_jobs(name), 30, POLL, what="the job cancelled")


@pytest.mark.slurm
@gen_test(timeout=120)
async def test_slurm_cluster_close_leaves_no_job(live_slurm):
    """Closing the cluster with a job running and one waiting to be asked for:
    adaptivity stops first, then the cluster cancels every job."""
    reconfigure_jobqueue()
    name = "cc" + uuid.uuid4().hex[:8]
    async with slurm_cluster(name) as cluster:
        result = await cluster.adapt(Adaptive=ClusterAdaptive, minimum=2, maximum=2)
        await until(lambda: len(cluster.scheduler.workers) == 2, 45, POLL)
        assert len(await jobs_named(name)) == 2
    assert result.state == "stopped"
    await until(lambda: no_jobs(name), 30, POLL, what="every job cancelled")
