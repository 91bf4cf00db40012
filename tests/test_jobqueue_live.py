"""The job-queue backends against real Slurm, Grid Engine and PBS commands.

``.ci/live/start-slurm.sh`` (4 fake nodes), ``start-sge.sh`` and
``start-pbs-wrappers.sh`` bring the systems up; ``.ci/live/env.sh`` holds the
variables their clients need (the fixtures fall back to the scripts' paths).
Each test runs a real scheduler with the plugin in this process; the workers
are real ``dask worker`` processes started by the queue. What the queue holds
is read with the system's own commands (``squeue``, ``qstat``), by a cluster
name unique to the test (the first part of every job name), so that a leaked
job cannot go unnoticed.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from distributed import Client, Scheduler
from distributed.utils_test import gen_test, slowinc

dask_jobqueue_config = pytest.importorskip("dask_jobqueue.config")

from conftest import require_live  # noqa: E402
from helpers import errors, events, free_port, until  # noqa: E402
from test_cli import scheduler_process, wait_for  # noqa: E402

from dask_adaptive_plugin import AdaptivePlugin  # noqa: E402
from dask_adaptive_plugin.backends.jobqueue import (  # noqa: E402
    OARBackend,
    PBSBackend,
    SGEBackend,
    SLURMBackend,
)
from dask_adaptive_plugin.backends.workers import default_cluster_name  # noqa: E402
from dask_adaptive_plugin.shell import CommandError, run_command  # noqa: E402

#: Seconds between looks at the queue while waiting (each look runs a command).
POLL = 0.2

LIVE_DIR = os.environ.get("DASK_ADAPTIVE_LIVE_DIR") or os.path.join(
    os.environ.get("TMPDIR") or "/tmp", "dask-adaptive-live"
)


BACKENDS = {
    "slurm": SLURMBackend,
    "sge": SGEBackend,
    "pbs": PBSBackend,
    "oar": OARBackend,
}

# -- the live systems ------------------------------------------------------------------


@dataclass(frozen=True)
class LiveQueue:
    """A running queue: its backend name and how to list jobs by name."""

    backend: str
    env: dict[str, str]
    #: cluster name -> the ids and states of the jobs named ``<cluster name>-...``
    jobs_named: Callable[[str], Awaitable[dict[str, str]]]
    nodes: int = 1
    cpus_per_node: int = 1
    #: Backend options this system needs beyond worker_options().
    options: dict[str, Any] = field(default_factory=dict)


def check(cmd: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> str:
    """Why ``cmd`` does not work here, or ``""``."""
    if shutil.which(cmd[0], path=env.get("PATH", os.environ["PATH"])) is None:
        return f"{cmd[0]} is not installed"
    try:
        proc = subprocess.run(
            cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return f"{' '.join(cmd)} timed out"
    if proc.returncode not in ok:
        return f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}"
    return ""


def use_env(env: dict[str, str]):
    """Set ``env`` in os.environ for the session; the commands the plugin runs read it."""
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    return patch


async def squeue_named(cluster: str) -> dict[str, str]:
    out = await run_command(["squeue", "--noheader", "--format=%i %t %j"])
    rows = [line.split() for line in out.splitlines()]
    return {row[0]: row[1] for row in rows if row[2].startswith(f"{cluster}-")}


def slurm_nodes(env: dict[str, str]) -> tuple[int, int]:
    out = subprocess.run(
        ["sinfo", "--noheader", "--format=%D %c"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=20,
    ).stdout.split()  # fmt: skip
    return int(out[0]), int(out[1].rstrip("+"))


@pytest.fixture(scope="session")
def slurm():
    """The Slurm of start-slurm.sh, with its nodes idle."""
    env = {"SLURM_CONF": os.environ.get("SLURM_CONF") or f"{LIVE_DIR}/slurm/slurm.conf"}
    why = ""
    if not os.path.exists(env["SLURM_CONF"]):
        why = f"{env['SLURM_CONF']} does not exist; run .ci/live/start-slurm.sh"
    why = why or check(["sinfo", "--noheader"], env)
    require_live("slurm", not why, why)
    nodes, cpus = slurm_nodes(env)
    patch = use_env(env)
    yield LiveQueue("slurm", env, squeue_named, nodes, cpus)
    patch.undo()


async def sge_qstat_named(cluster: str) -> dict[str, str]:
    # job-ID prior name user state ...; qstat cuts names at 10 characters
    out = await run_command(["qstat", "-u", "*"])
    rows = [line.split() for line in out.splitlines()[2:]]
    shown = f"{cluster}-"[:10]
    return {row[0]: row[4] for row in rows if len(row) > 4 and row[2].startswith(shown)}


@pytest.fixture(scope="session")
def sge():
    """The Grid Engine of start-sge.sh, with its execd up."""
    env = {
        "SGE_ROOT": os.environ.get("SGE_ROOT", "/var/lib/gridengine"),
        "SGE_CELL": os.environ.get("SGE_CELL", "default"),
    }
    why = check(["qconf", "-sq", "all.q"], env)
    if not why:
        out = subprocess.run(
            ["qstat", "-f", "-q", "all.q"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=20,
        ).stdout  # fmt: skip
        hosts = [line for line in out.splitlines() if line.startswith("all.q@")]
        if not hosts or all("-NA-" in line for line in hosts):
            why = "no execution host reports to the qmaster"
    require_live("sge", not why, why)
    patch = use_env(env)
    yield LiveQueue("sge", env, sge_qstat_named)
    patch.undo()


async def pbs_qstat_named(cluster: str) -> dict[str, str]:
    # Job id, Name, User, Time Use, S, Queue; exit 153: no jobs; C: completed
    # jobs stay listed for a while
    try:
        out = await run_command(["qstat"])
    except CommandError as e:
        if e.returncode != 153:
            raise
        out = e.stdout
    # qstat cuts names at 16 characters
    rows = [line.split() for line in out.splitlines()[2:]]
    shown = f"{cluster}-"[:16]
    return {
        row[0]: row[-2]
        for row in rows
        if len(row) > 4 and row[1].startswith(shown) and row[-2] != "C"
    }


@pytest.fixture(scope="session")
def pbs(slurm):
    """Slurm's Torque-style qsub/qstat/qdel from start-pbs-wrappers.sh."""
    bin_dir = os.environ.get("DASK_ADAPTIVE_PBS_BIN") or f"{LIVE_DIR}/pbs-wrappers/bin"
    env = {**slurm.env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    why = ""
    if not os.path.exists(os.path.join(bin_dir, "qsub")):
        why = f"{bin_dir}/qsub does not exist; run .ci/live/start-pbs-wrappers.sh"
    why = why or check(["qstat"], env, ok=(0, 153))
    require_live("pbs", not why, why)
    return LiveQueue("pbs", env, pbs_qstat_named)


async def oarstat_named(cluster: str) -> dict[str, str]:
    # JSON by job id; an empty output when there is no job
    out = await run_command(["oarstat", "-u", getpass.getuser(), "-J"])
    jobs = json.loads(out or "{}")
    return {
        job_id: job["state"]
        for job_id, job in jobs.items()
        if str(job.get("name") or "").startswith(f"{cluster}-")
    }


@pytest.fixture(scope="session")
def oar():
    """The OAR of start-oar.sh: its server, its node and its database."""
    why = check(["oarstat", "-J"], {})
    require_live("oar", not why, why)
    # start-oar.sh gives each core the property memcore (MiB), which OAR
    # reserves memory by (dask-jobqueue warns without it)
    return LiveQueue(
        "oar", {}, oarstat_named, options={"memory_per_core_property_name": "memcore"}
    )


# -- helpers --------------------------------------------------------------------------------


def worker_options(cluster_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "cores": 1,
        "memory": "1GB",
        "python": sys.executable,
        "interface": "lo",
        "death_timeout": 30,
        "cluster_name": cluster_name,
        **extra,
    }


@asynccontextmanager
async def adaptive_scheduler(
    backend: str, maximum: int, options: dict[str, Any], **kw: Any
):
    # gen_test resets dask config to a copy taken before dask_jobqueue added its
    # defaults (jobqueue.<system>.*), which the job classes read
    dask_jobqueue_config.reconfigure()
    plugin = AdaptivePlugin(
        backend=backend,
        minimum=0,
        maximum=maximum,
        idle_timeout="2s",
        backend_options=options,
        **kw,
    )
    async with Scheduler(
        host="127.0.0.1", dashboard_address=":0", plugins=[plugin]
    ) as s:
        async with Client(s.address, asynchronous=True) as c:
            yield s, c, plugin


async def scale_up_and_down(live: LiveQueue, maximum: int = 2) -> None:
    """Tasks bring jobs and workers; idle workers' jobs leave the queue."""
    name = "t" + uuid.uuid4().hex[:8]
    options = worker_options(name, **live.options)
    async with adaptive_scheduler(live.backend, maximum, options) as (
        s, c, plugin,
    ):  # fmt: skip
        futures = c.map(slowinc, range(20), delay=0.4)
        await until(lambda: live.jobs_named(name), 20, POLL, what="jobs in the queue")
        assert set(await live.jobs_named(name)) <= set(plugin.backend.jobs)
        assert await c.gather(futures) == list(range(1, 21))
        del futures
        names = {str(ws.name) for ws in s.workers.values()}
        assert names and all(n.startswith(f"{name}-") for n in names)
        assert 1 <= len(plugin.backend.jobs) <= maximum
        await until(lambda: not s.workers, 30, POLL, what="idle workers retired")
        await until(
            lambda: _none(live.jobs_named(name)), 30, POLL, what="cancelled jobs gone"
        )
        assert not plugin.backend.jobs
        downs = [e for _, e in plugin.log if e["status"] == "down"]
        assert downs and not [e for _, e in plugin.log if e["status"] == "error"]
    assert not await live.jobs_named(name), "a job outlived the scheduler"


async def _none(jobs: Awaitable[dict[str, str]]) -> bool:
    return not await jobs


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.slurm
@gen_test(timeout=90)
async def test_slurm_scales_up_and_down(slurm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # slurm-<id>.out files land here
    await scale_up_and_down(slurm)


@pytest.mark.sge
@gen_test(timeout=90)
async def test_sge_scales_up_and_down(sge, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the job script says -cwd
    await scale_up_and_down(sge)


@pytest.mark.pbs
@gen_test(timeout=90)
async def test_pbs_scales_up_and_down(pbs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", pbs.env["PATH"])
    await scale_up_and_down(pbs, maximum=1)


@pytest.mark.slurm
@gen_test(timeout=180)
async def test_slurm_pending_job_counts_but_is_not_a_worker(
    slurm, tmp_path, monkeypatch
):
    """With every node full, the extra job waits: it is counted as on its way,
    never doubled, cancelled when overdue (start_timeout) and asked for again,
    and cancelled when the work is done."""
    assert slurm.nodes >= 2, "start-slurm.sh should fake 4 nodes (NODES=4)"
    monkeypatch.chdir(tmp_path)
    name = "p" + uuid.uuid4().hex[:8]
    options = worker_options(name, job_cpu=slurm.cpus_per_node)  # a job fills a node
    full = slurm.nodes
    # long enough for a started job's worker to connect on a busy machine
    async with adaptive_scheduler("slurm", full + 1, options, start_timeout="12s") as (
        s,
        c,
        plugin,
    ):
        # work for 45 s on four workers: past the waiting job's deadline (12 s)
        # and the pool's cool-down after it (12 s), when it is asked for again
        futures = c.map(slowinc, range(600), delay=0.3)
        await until(
            lambda: len(s.workers) == full, 45, POLL, what="a worker on every node"
        )
        listing: dict[str, str] = {}

        async def agrees_with_backend() -> bool:
            # the waiting job may be cancelled and asked again (start_timeout)
            # between reading the queue and reading the backend
            listing.clear()
            listing.update(await slurm.jobs_named(name))
            return set(listing) <= set(plugin.backend.jobs)

        await until(agrees_with_backend, 15, POLL, what="queue and backend agree")
        assert sorted(listing.values()) == ["PD"] + ["R"] * full, listing
        (waiting,) = [i for i, state in listing.items() if state == "PD"]
        # the waiting job is counted as a worker on its way, not as a worker
        job = plugin.backend.jobs[waiting]
        assert job.pending and plugin.ledger.entry(job.name).state == "launching"
        assert plugin.ledger.count("default", "launching") == 1
        assert job.name not in {str(ws.name) for ws in s.workers.values()}
        seen_waiting: set[int] = set()

        async def replaced() -> bool:
            jobs = await slurm.jobs_named(name)
            seen_waiting.add(list(jobs.values()).count("PD"))
            return waiting not in jobs and list(jobs.values()).count("PD") == 1

        # overdue: cancelled, and after the cool-down asked for again
        await until(replaced, 60, POLL, what="the overdue job cancelled and replaced")
        assert "did not connect within 12s" in errors(plugin, "start")[0]["error"]
        assert seen_waiting <= {0, 1}, "never two jobs waiting for one worker"
        assert len(s.workers) == full
        await c.gather(futures)
        del futures
        await until(lambda: not s.workers, 30, POLL, what="idle workers retired")
        # the job waiting then (if any: it may have timed out again) goes too
        await until(
            lambda: _none(slurm.jobs_named(name)), 30, POLL, what="every job gone"
        )
    assert not await slurm.jobs_named(name)


@pytest.mark.slurm
@gen_test(timeout=90)
async def test_slurm_job_of_two_workers_is_one_unit(slurm, tmp_path, monkeypatch):
    """processes=2: one job, two workers, retired together, one scancel."""
    monkeypatch.chdir(tmp_path)
    name = "u" + uuid.uuid4().hex[:8]
    options = worker_options(name, cores=2, memory="2GB", processes=2)
    async with adaptive_scheduler("slurm", 2, options) as (s, c, plugin):
        futures = c.map(slowinc, range(12), delay=0.4)
        await until(lambda: len(s.workers) == 2, 45, POLL, what="two workers")
        assert len(await slurm.jobs_named(name)) == 1
        (job,) = plugin.backend.jobs.values()
        names = sorted(str(ws.name) for ws in s.workers.values())
        assert names == [f"{job.name}-0", f"{job.name}-1"]
        for address in s.workers:
            assert sorted(plugin.backend.stopped_together(address)) == sorted(s.workers)
        await c.gather(futures)
        del futures
        # never half a job: both workers go in one decision
        await until(lambda: not s.workers, 30, POLL, what="both workers retired")
        downs = [e for _, e in plugin.log if e["status"] == "down"]
        assert len(downs) == 1
        assert len(downs[0]["workers"]) == 2, downs
        await until(
            lambda: _none(slurm.jobs_named(name)), 30, POLL, what="the job cancelled"
        )
    await until(
        lambda: _none(slurm.jobs_named(name)),
        30,
        POLL,
        what="the job cancelled on close",
    )


@pytest.mark.oar
@gen_test(timeout=90)
async def test_oar_scales_up_and_down(oar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # OAR.<name>.<id>.stdout files land here
    await scale_up_and_down(oar)


@pytest.mark.parametrize(
    "system",
    [pytest.param(name, marks=getattr(pytest.mark, name)) for name in BACKENDS],
)
@gen_test(timeout=90)
async def test_jobs_of_an_earlier_run_are_adopted_not_doubled(
    system, request, tmp_path, monkeypatch
):
    """A scheduler restarted at the same address (the same cluster name) takes
    over the jobs its earlier run left: counted, mapped to their workers,
    cancelled with them. Another cluster's jobs are left alone."""
    live: LiveQueue = request.getfixturevalue(system)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", live.env.get("PATH", os.environ["PATH"]))
    dask_jobqueue_config.reconfigure()
    name, other_name = "r" + uuid.uuid4().hex[:8], "o" + uuid.uuid4().hex[:8]
    backend_cls = BACKENDS[system]
    async with Scheduler(host="127.0.0.1", dashboard_address=":0") as s:
        # the earlier run submits a job and ends without cleaning up (SIGKILL)
        earlier = backend_cls(s, **worker_options(name, **live.options))
        await earlier.scale_up(1)
        (job_id,) = earlier.jobs

        restarted = backend_cls(s, **worker_options(name, **live.options))
        await restarted.scale_up(1)  # before the earlier worker has connected
        assert list(restarted.jobs) == [job_id], "adopted, not submitted again"
        assert list(await live.jobs_named(name)) == [job_id]
        (recovered,) = events(s, "recovered")
        assert recovered["adopted"] == [job_id]

        # another cluster's backend on this scheduler counts only its own jobs
        other = backend_cls(s, **worker_options(other_name, **live.options))
        await other.scale_up(1)
        await until(lambda: len(s.workers) == 2, 45, POLL, what="both workers")
        (address,) = [a for a, ws in s.workers.items() if ws.name.startswith(name)]
        assert restarted.stopped_together(address) == [address]
        await restarted.scale_down([address])
        await until(
            lambda: _none(live.jobs_named(name)), 30, POLL, what="the adopted job"
        )
        assert len(await live.jobs_named(other_name)) == 1, "another cluster's job"
        await restarted.close()
        assert len(await live.jobs_named(other_name)) == 1
        await other.close()
        await until(
            lambda: _none(live.jobs_named(other_name)), 30, POLL, what="the other job"
        )


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_a_restarted_dask_scheduler_adopts_its_waiting_job(
    slurm, tmp_path, monkeypatch
):
    """``dask scheduler`` killed with SIGKILL leaves a job waiting in the queue;
    restarted at the same address it takes that job over instead of submitting
    another, and on SIGTERM cancels it."""
    monkeypatch.chdir(tmp_path)
    port = free_port()
    cluster = default_cluster_name(f"tcp://127.0.0.1:{port}")
    args = [
        "--adaptive-backend", "slurm", "--adaptive-maximum", "1",
        "--adaptive-option", "cores=1", "--adaptive-option", "memory=1GB",
        "--adaptive-option", f"python={sys.executable}",
        # held: the job waits in the queue for ever
        "--adaptive-option", "job_extra_directives=['--hold']",
    ]  # fmt: skip
    env = {**os.environ, **slurm.env}

    def jobs() -> dict[str, str]:
        return asyncio.run(slurm.jobs_named(cluster))

    def run(name: str):
        """The scheduler process of one run, on the same port each time."""
        (tmp_path / name).mkdir()
        return scheduler_process(tmp_path / name, *args, port=port, env=env)

    with run("first") as (proc, address), Client(address, timeout=30) as client:
        waiting = client.submit(pow, 2, 2)
        wait_for(jobs, 30, "a job in the queue")
        (job_id,) = jobs()
        proc.kill()  # no clean-up
        proc.wait(30)
        del waiting
    assert jobs() == {job_id: "PD"}, "the earlier run's job is still waiting"

    with run("second") as (proc, address):
        with Client(address, timeout=30) as client:
            waiting = client.submit(pow, 2, 3)

            def recovered() -> list[dict[str, Any]]:
                return [e for _, e in client.get_events("adaptive")
                        if e["status"] == "recovered"]  # fmt: skip

            wait_for(recovered, 30, "the earlier job adopted")
            assert list(recovered()[0]["adopted"]) == [job_id]
            assert jobs() == {job_id: "PD"}, "adopted, not submitted again"
            del waiting
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    wait_for(lambda: not jobs(), 30, "the adopted job cancelled on SIGTERM")
