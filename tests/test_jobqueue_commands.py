"""The job-queue backends' commands, against stand-in executables.

LSF, HTCondor, OAR and Moab cannot run here, so a small stand-in queue is
written into a temporary directory put first on PATH, under the names of their
commands (``bsub``/``bjobs``/``bkill``, ``condor_submit``/``condor_q``/
``condor_rm``...). It records every call (arguments, standard input, the
submitted file) and answers in each system's format. The LSF stand-in really
runs the submitted script, so the LSF test has real workers connecting to a
real scheduler. Also here: :func:`run_command` and the ``command`` backend.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, Scheduler
from distributed.utils_test import gen_test, slowinc

dask_jobqueue_config = pytest.importorskip("dask_jobqueue.config")

from helpers import events, until  # noqa: E402

from dask_adaptive_plugin import AdaptivePlugin  # noqa: E402
from dask_adaptive_plugin.backends.command import CommandBackend  # noqa: E402
from dask_adaptive_plugin.backends.jobqueue import (  # noqa: E402
    HTCondorBackend,
    LSFBackend,
    MoabBackend,
    OARBackend,
    SLURMBackend,
)
from dask_adaptive_plugin.shell import CommandError, run_command  # noqa: E402

# -- the stand-in queue ---------------------------------------------------------------------

STAND_IN = r'''#!PYTHON
"""A stand-in batch queue; what it does depends on the name it is called by."""
import json, os, re, signal, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
STATE = os.path.join(HERE, "state.json")
tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]

def load():
    if os.path.exists(STATE):
        with open(STATE) as f:
            return json.load(f)
    return {"next": 101, "jobs": {}}

def save(state):
    with open(STATE + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(STATE + ".tmp", STATE)

def alive(job):
    if job.get("pid") is None:
        return True
    try:
        os.kill(job["pid"], 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{job['pid']}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"

state = load()
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
files = {a: open(a).read() for a in args if os.path.isfile(a)}
with open(os.path.join(HERE, "calls.jsonl"), "a") as f:
    f.write(json.dumps({"tool": tool, "args": args, "stdin": stdin, "files": files}) + "\n")
if os.environ.get("STAND_IN_FAIL") == tool:
    print(f"{tool}: the queue is down", file=sys.stderr)
    sys.exit(2)

SUBMIT = {"bsub": "Job <{id}> is submitted to default queue <normal>.",
          "condor_submit": "Submitting job(s).\n1 job(s) submitted to cluster {id}.",
          "oarsub": "[ADMISSION RULE] Set default walltime\nOAR_JOB_ID={id}",
          "msub": "\n{id}\n"}
CANCEL = {"bkill", "condor_rm", "oardel", "canceljob"}

def job_name():
    """The name the submission gives the job, as each system reads it."""
    found = re.search(r"(?:#BSUB -J|#PBS -N|batch_name =) *(\S+)",
                      stdin + "".join(files.values()))
    if found:
        return found.group(1)
    return args[args.index("-n") + 1] if "-n" in args else "unnamed"

if tool in SUBMIT:
    job_id = str(state["next"])
    state["next"] += 1
    job = {"state": "pending", "name": job_name()}
    if os.environ.get("STAND_IN_RUN") == "1":
        script = os.path.join(HERE, f"job-{job_id}.sh")
        with open(script, "w") as f:
            f.write(stdin or next(iter(files.values())))
        log = open(os.path.join(HERE, f"job-{job_id}.log"), "w")
        proc = subprocess.Popen(["bash", script], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
        job = {**job, "state": "running", "pid": proc.pid}
    state["jobs"][job_id] = job
    save(state)
    print(SUBMIT[tool].format(id=job_id))
elif tool in CANCEL:
    ids = [a.split(".")[0] for a in args if a[:1].isdigit()]
    unknown = [i for i in ids if i not in state["jobs"]]
    for i in ids:
        job = state["jobs"].pop(i, None)
        if job and job.get("pid"):
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    save(state)
    if unknown:
        print(f"{tool}: no such job {' '.join(unknown)}", file=sys.stderr)
        sys.exit(1)
else:  # status
    jobs = {i: j for i, j in state["jobs"].items() if alive(j)}
    if len(jobs) != len(state["jobs"]):
        state["jobs"] = jobs
        save(state)
    listed = [(i, j["state"] == "pending", j["name"]) for i, j in jobs.items()]
    if tool == "bjobs":
        for i, p, name in listed:
            print(i, "PEND" if p else "RUN", name)
        print("1 DONE dask-worker")  # finished jobs stay listed for a while
        if not listed:
            print("No unfinished job found", file=sys.stderr)
    elif tool == "condor_q":
        for i, p, name in listed:
            print(i, 0, 1 if p else 2, name)
        print(7, 0, 4, "dask-worker")
    elif tool == "oarstat":
        listing = {i: {"state": "Waiting" if p else "Running", "name": name}
                   for i, p, name in listed}
        listing["7"] = {"state": "Terminated", "name": "dask-worker"}
        print(json.dumps(listing))
    elif tool == "qstat":  # qstat -f
        for i, p, name in [*listed, ("7", None, "dask-worker")]:
            state = "C" if p is None else "Q" if p else "R"
            print(f"Job Id: {i}.moab\n    Job_Name = {name}\n    job_state = {state}\n")
'''

TOOLS = [
    "bsub", "bjobs", "bkill",
    "condor_submit", "condor_q", "condor_rm",
    "oarsub", "oarstat", "oardel",
    "msub", "canceljob", "qstat",
]  # fmt: skip


class StandIn:
    """The stand-in queue in ``directory``: its calls and its jobs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        script = directory / "stand_in.py"
        script.write_text(STAND_IN.replace("PYTHON", sys.executable, 1))
        script.chmod(0o755)
        for tool in TOOLS:
            (directory / tool).symlink_to(script)

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        path = self.directory / "calls.jsonl"
        if not path.exists():
            return []
        calls = [json.loads(line) for line in path.read_text().splitlines()]
        return [c for c in calls if tool is None or c["tool"] == tool]

    def jobs(self) -> dict[str, dict[str, Any]]:
        path = self.directory / "state.json"
        return json.loads(path.read_text())["jobs"] if path.exists() else {}

    def set_state(self, job_id: str, state: str) -> None:
        path = self.directory / "state.json"
        data = json.loads(path.read_text())
        data["jobs"][job_id]["state"] = state
        path.write_text(json.dumps(data))

    def kill_all(self) -> None:
        for job in self.jobs().values():
            if job.get("pid"):
                try:
                    os.killpg(job["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A stand-in queue first on PATH; its jobs are killed afterwards."""
    directory = tmp_path / "bin"
    directory.mkdir()
    queue = StandIn(directory)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    yield queue
    queue.kill_all()


def jobqueue_defaults() -> None:
    """Put back dask-jobqueue's config defaults (``jobqueue.<system>.*``).

    gen_test resets dask config to a copy taken when distributed.utils_test was
    imported, which may be before dask_jobqueue added them.
    """
    dask_jobqueue_config.reconfigure()


@asynccontextmanager
async def bare_scheduler():
    """A real scheduler, for backends driven directly (no workers will come)."""
    jobqueue_defaults()
    async with Scheduler(host="127.0.0.1", dashboard_address=":0") as s:
        yield s


# -- LSF: real workers through the stand-in --------------------------------------------------


@gen_test(timeout=60)
async def test_lsf_job_script_and_commands_with_real_workers(stand_in, monkeypatch):
    """bsub < script (with #BSUB lines) starts a job of two workers; both are
    retired as one unit and one bkill removes the job."""
    monkeypatch.setenv("STAND_IN_RUN", "1")
    jobqueue_defaults()
    plugin = AdaptivePlugin(
        backend="lsf",
        minimum=0,
        maximum=2,
        idle_timeout="1s",
        backend_options={
            "cores": 2, "memory": "2GB", "processes": 2, "queue": "normal",
            "walltime": "00:10", "lsf_units": "mb", "python": sys.executable,
            "interface": "lo", "death_timeout": 20,
        },
    )  # fmt: skip
    async with Scheduler(
        host="127.0.0.1", dashboard_address=":0", plugins=[plugin]
    ) as s:
        async with Client(s.address, asynchronous=True) as c:
            assert await c.gather(c.map(slowinc, range(8), delay=0.2)) == list(
                range(1, 9)
            )
            (submit,) = stand_in.calls("bsub")
            assert submit["args"] == []  # the script comes on standard input
            script = submit["stdin"]
            for line in ("#BSUB -q normal", "#BSUB -n 2", "#BSUB -M 2000",
                         "#BSUB -W 00:10", '#BSUB -R "span[hosts=1]"'):  # fmt: skip
                assert line in script.splitlines(), script
            (job,) = plugin.backend.jobs.values()
            command = shlex.split(script.strip().splitlines()[-1])
            assert command[:4] == [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                s.address,
            ]
            assert command[command.index("--name") + 1] == job.name
            assert command[command.index("--nworkers") + 1] == "2"
            await until(lambda: len(s.workers) == 2, 20, what="both workers of the job")
            names = sorted(str(ws.name) for ws in s.workers.values())
            assert names == [f"{job.name}-0", f"{job.name}-1"]
            for address in s.workers:
                assert sorted(plugin.backend.stopped_together(address)) == sorted(
                    s.workers
                )
            # The controller may never pick two workers idle a moment apart
            # together (see test_jobqueue_live); close() must cancel the job.
        await plugin.stop("test over")
        kills = stand_in.calls("bkill")
        assert [k["args"] for k in kills] == [[job.job_id]]
        assert stand_in.jobs() == {}
        assert not plugin.backend.jobs


# -- HTCondor: the submit description and the pending logic ---------------------------------


@gen_test(timeout=30)
async def test_htcondor_submit_description_and_pending_jobs(stand_in):
    async with bare_scheduler() as s:
        backend = HTCondorBackend(
            s, cores=2, memory="4GB", processes=1, disk="1GB", python=sys.executable,
            submit_command_extra=["-name", "sched1"],
            cancel_command_extra=["-name", "sched1"],
        )  # fmt: skip
        assert backend.processes == 1 and backend.threads_per_worker == 2
        await backend.scale_up(2)
        submits = stand_in.calls("condor_submit")
        assert [c["args"][:2] for c in submits] == [["-name", "sched1"]] * 2
        (description,) = submits[0]["files"].values()
        assert "MY.DaskWorkerCores = 2" in description
        assert "RequestCpus = MY.DaskWorkerCores" in description
        assert s.address in description and "Queue" in description
        assert sorted(backend.jobs) == ["101.0", "102.0"]

        # both idle in the queue: counted as workers on their way
        await backend.scale_up(2)
        assert len(stand_in.calls("condor_submit")) == 2
        await backend.scale_up(3)
        assert len(stand_in.calls("condor_submit")) == 3
        stand_in.set_state("101", "running")

        # overdue (the plugin's start_timeout): the waiting ones are cancelled
        await backend.cancel_pending()
        [removed] = [c["args"][2:] for c in stand_in.calls("condor_rm")]
        assert sorted(removed) == ["102.0", "103.0"]
        assert set(backend.jobs) == {"101.0"}
        ids = set(backend.jobs)

        await backend.close()
        last = stand_in.calls("condor_rm")[-1]["args"]
        assert last[:2] == ["-name", "sched1"] and set(last[2:]) <= ids | {"101.0"}
        assert "101.0" in last[2:]
        assert stand_in.jobs() == {} and backend.jobs == {}


@gen_test(timeout=30)
async def test_a_waiting_job_is_reported_pending_and_kept_until_cancelled(stand_in):
    async with bare_scheduler() as s:
        backend = LSFBackend(s, cores=1, memory="1GB", lsf_units="mb")
        await backend.scale_up(1)
        [name] = backend.report()
        assert backend.report() == {name: "pending"}
        await backend.scale_up(1)  # still pending: nothing new
        assert len(stand_in.calls("bsub")) == 1 and not stand_in.calls("bkill")
        stand_in.set_state("101", "running")
        await backend.scale_up(1)  # the queue says it runs now
        assert backend.report() == {name: "running"}
        await backend.cancel_pending()  # nothing waits: nothing cancelled
        assert not stand_in.calls("bkill")
        await backend.close()
        assert [c["args"] for c in stand_in.calls("bkill")] == [["101"]]


@gen_test(timeout=30)
async def test_job_that_left_the_queue_is_replaced_and_not_an_error(
    stand_in, monkeypatch
):
    monkeypatch.setattr("dask_adaptive_plugin.backends.jobqueue.LISTING_GRACE", 0.0)
    async with bare_scheduler() as s:
        backend = LSFBackend(s, cores=1, memory="1GB", lsf_units="mb")
        await backend.scale_up(1)
        assert list(backend.jobs) == ["101"]
        # the job ends outside our control (walltime, node failure...)
        (stand_in.directory / "state.json").write_text(
            json.dumps({"next": 102, "jobs": {}})
        )
        await backend.scale_up(1)
        assert list(backend.jobs) == ["102"]
        # the queue forgot 102 too: closing looks first and cancels nothing
        (stand_in.directory / "state.json").write_text(
            json.dumps({"next": 103, "jobs": {}})
        )
        await backend.close()
        assert not backend.jobs and not stand_in.calls("bkill")


@gen_test(timeout=30)
async def test_status_command_failure_raises_with_its_output(stand_in, monkeypatch):
    async with bare_scheduler() as s:
        backend = LSFBackend(s, cores=1, memory="1GB", lsf_units="mb")
        monkeypatch.setenv("STAND_IN_FAIL", "bjobs")
        with pytest.raises(
            CommandError, match=r"(?s)bjobs -noheader.*Exit code: 2.*queue is down"
        ):
            await backend.scale_up(1)
        assert not stand_in.calls("bsub")


# -- OAR and Moab -------------------------------------------------------------------------------


@gen_test(timeout=30)
async def test_oar_passes_directives_as_options_and_the_script_inline(stand_in):
    async with bare_scheduler() as s:
        backend = OARBackend(
            s, cores=2, memory="2GB", queue="default", walltime="00:20:00",
            memory_per_core_property_name="memcore", python=sys.executable,
        )  # fmt: skip
        await backend.scale_up(1)
        (call,) = stand_in.calls("oarsub")
        args = call["args"]
        (job,) = backend.jobs.values()
        assert args[:2] == ["-n", job.name] and ["-q", "default"] == args[2:4]
        assert "-l" in args and "/nodes=1/core=2,walltime=00:20:00" in args
        assert "memcore>=954" in args[args.index("-p") + 1]
        inline = args[-1]
        assert "distributed.cli.dask_worker" in inline and s.address in inline
        assert "#OAR" not in inline
        assert backend.jobs["101"].pending
        await backend.close()
        assert [c["args"] for c in stand_in.calls("oardel")] == [["101"]]


@gen_test(timeout=30)
async def test_moab_uses_msub_qstat_and_canceljob(stand_in):
    async with bare_scheduler() as s:
        backend = MoabBackend(s, cores=1, memory="1GB", python=sys.executable)
        await backend.scale_up(2)
        submits = stand_in.calls("msub")
        assert len(submits) == 2
        (script,) = submits[0]["files"].values()
        assert "#PBS -l select=1:ncpus=1:mem=954MB" in script.splitlines()
        assert sorted(backend.jobs) == ["101", "102"]
        stand_in.set_state("101", "running")
        await backend.scale_up(2)
        assert not backend.jobs["101"].pending and backend.jobs["102"].pending
        assert len(stand_in.calls("msub")) == 2
        await backend.scale_down([])  # retiring workers: waiting jobs go too
        assert stand_in.calls("canceljob")[0]["args"] == ["102"]
        await backend.close()
        assert stand_in.jobs() == {}


# -- after a restart -----------------------------------------------------------------------------

SYSTEM_OPTIONS = {
    LSFBackend: {"lsf_units": "mb"},
    HTCondorBackend: {"disk": "1GB"},
    OARBackend: {"memory_per_core_property_name": "not_applicable"},
    MoabBackend: {},
}


@pytest.mark.parametrize("backend_cls", list(SYSTEM_OPTIONS), ids=lambda c: c.__name__)
@gen_test(timeout=30)
async def test_waiting_jobs_of_an_earlier_run_are_adopted(stand_in, backend_cls):
    """Each system's listing gives the full job names: the restarted backend
    finds the job its earlier run left waiting, keeps its place in the queue
    (no second submission) and cancels it on close; another cluster's stays."""
    options = {"cores": 1, "memory": "1GB", "python": sys.executable,
               **SYSTEM_OPTIONS[backend_cls]}  # fmt: skip
    async with bare_scheduler() as s:
        earlier = backend_cls(s, cluster_name="earlier", **options)
        await earlier.scale_up(1)
        (job_id,) = earlier.jobs
        other = backend_cls(s, cluster_name="earlier-not", **options)
        await other.scale_up(1)
        (other_id,) = other.jobs
        submitted = len(stand_in.calls())

        restarted = backend_cls(s, cluster_name="earlier", **options)
        await restarted.scale_up(1)
        assert list(restarted.jobs) == [job_id] and restarted.jobs[job_id].pending
        assert len(stand_in.calls()) == submitted + 1, "one listing, no submission"
        (recovered,) = events(s, "recovered")
        assert recovered["adopted"] == [job_id]
        assert recovered["names"] == [earlier.jobs[job_id].name]
        await restarted.close()
        assert list(stand_in.jobs()) == [other_id.split(".")[0]]  # HTCondor: 102.0


# -- options ------------------------------------------------------------------------------------


def test_unknown_and_missing_options_are_clear_errors():
    jobqueue_defaults()
    # the plugin checks names and values when it is created
    with pytest.raises(
        ValueError, match=r"backend SLURMBackend.*'gpus'.*cores, memory"
    ):
        AdaptivePlugin(backend="slurm", backend_options={"cores": 1, "gpus": 1})
    with pytest.raises(ValueError, match=r"backend option memory .*--adaptive-option"):
        AdaptivePlugin(backend="sge", backend_options={"cores": 1})
    with pytest.raises(
        ValueError, match=r"backend option resubmit_pending .*replaced by the pool's start_timeout"
    ):
        AdaptivePlugin(backend="pbs", backend_options={"cores": 1, "memory": "1GB",
                                                       "resubmit_pending": True})  # fmt: skip
    with pytest.raises(
        ValueError, match=r"backend option job_name .*expected cluster_name instead"
    ):
        AdaptivePlugin(backend="slurm", backend_options={"job_name": "mine"})
    with pytest.raises(
        ValueError, match=r"backend option cluster_name .*: '--'; expected a non-empty"
    ):
        AdaptivePlugin(backend="slurm", backend_options={"cluster_name": "--"})

    class Fake:
        address = "tcp://127.0.0.1:8786"

    jobqueue_defaults()
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) \['gpus'\] for the slurm"
    ):
        SLURMBackend(Fake(), cores=1, memory="1GB", gpus=1)
    with pytest.raises(
        ValueError, match=r"backend option memory .*jobqueue.slurm.memory"
    ):
        SLURMBackend(Fake(), cores=1)
    with pytest.raises(ValueError, match=r"backend option processes .*at most cores"):
        SLURMBackend(Fake(), cores=2, memory="1GB", processes=3)
    with pytest.raises(ValueError, match=r"backend option pending_timeout .*start_timeout"):
        SLURMBackend(Fake(), cores=1, memory="1GB", pending_timeout="10m")
    with pytest.raises(ValueError, match=r"backend option cores .*whole number"):
        SLURMBackend(Fake(), cores="many", memory="1GB")


def test_jobqueue_config_is_honoured():
    import dask

    class Fake:
        address = "tcp://127.0.0.1:8786"

    jobqueue_defaults()
    with dask.config.set({"jobqueue.slurm.cores": 4, "jobqueue.slurm.memory": "8GB",
                          "jobqueue.slurm.processes": 2, "jobqueue.slurm.queue": "big"}):  # fmt: skip
        backend = SLURMBackend(Fake())
        script = backend._make_job(Fake.address, "w", backend.job_options).job_script()
    assert backend.processes == 2 and backend.threads_per_worker == 2
    assert "#SBATCH -p big" in script and "#SBATCH --cpus-per-task=4" in script
    assert "tcp://127.0.0.1:8786" in script and "--nworkers 2" in script


# -- run_command ---------------------------------------------------------------------------------


@gen_test(timeout=30)
async def test_run_command_error_shows_command_code_and_output():
    with pytest.raises(CommandError) as info:
        await run_command(["sh", "-c", "echo to-out; echo to-err >&2; exit 3", "x y"])
    e = info.value
    assert isinstance(e, RuntimeError) and e.returncode == 3
    assert e.stdout == "to-out\n" and e.stderr == "to-err\n"
    message = str(e)
    assert "Command: sh -c 'echo to-out; echo to-err >&2; exit 3' 'x y'" in message
    assert "Exit code: 3" in message
    assert "stdout:\nto-out" in message and "stderr:\nto-err" in message


@gen_test(timeout=30)
async def test_run_command_timeout_while_a_child_of_another_session_holds_the_pipes():
    """The command is killed, but a daemon it left keeps stdout open: still a
    CommandError within bounded time (Python 3.10's asyncio.TimeoutError is not
    the builtin TimeoutError)."""
    started = time.monotonic()
    with pytest.raises(CommandError, match="timed out after 0.5s"):
        await run_command(["sh", "-c", "setsid sleep 8 & echo before; sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 10


@gen_test(timeout=30)
async def test_run_command_timeout_missing_program_stdin_and_no_shell(tmp_path):
    started = time.monotonic()
    with pytest.raises(
        CommandError, match=r"(?s)timed out after 0.5s.*stdout:\nbefore"
    ):
        await run_command(["sh", "-c", "echo before; sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(CommandError, match="could not be started"):
        await run_command(["no-such-program-here"])
    assert await run_command(["cat"], stdin="in\n") == "in\n"
    marker = tmp_path / "pwned"
    hostile = f"; touch {marker}; $(touch {marker})"
    assert await run_command(["echo", hostile]) == hostile + "\n"
    assert not marker.exists()
    assert (
        await run_command(["sh", "-c", 'echo "$X"'], env={"X": "from env"})
        == "from env\n"
    )


@gen_test()
async def test_run_command_passes_the_working_directory_as_pwd(tmp_path, monkeypatch):
    """oarsub runs its job in ``$PWD``: after an ``os.chdir`` it must be the
    new directory, not the one the process started in."""
    monkeypatch.chdir(tmp_path)
    assert await run_command(["printenv", "PWD"]) == f"{tmp_path}\n"


# -- the command backend -----------------------------------------------------------------------

LAUNCHER = """#!/bin/sh
# stand-in resource manager: record the arguments, start the worker in the
# background (its output away from ours), print a job id
printf '%s\\n' "$@" > "{record}/start-$$.args"
"$@" </dev/null >"{record}/worker-$$.log" 2>&1 &
echo "Submitted job $!"
"""


@pytest.fixture
def launcher(tmp_path):
    script = tmp_path / "launch"
    script.write_text(LAUNCHER.format(record=tmp_path))
    script.chmod(0o755)
    return script


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][0] != "Z"


@gen_test(timeout=60)
async def test_command_backend_starts_and_stops_real_workers(launcher, tmp_path):
    """Real ``dask worker`` processes, launched and stopped by commands; a
    hostile name reaches them as one argument and no shell ever reads it."""
    marker = tmp_path / "pwned"
    prefix = f"w; touch {marker} $(touch {marker})"
    async with Scheduler(host="127.0.0.1", dashboard_address=":0") as s:
        backend = CommandBackend(
            s,
            start=[str(launcher), sys.executable, "-m", "distributed.cli.dask_worker",
                   "{scheduler}", "--name", "{name}", "--nthreads", "1",
                   "--death-timeout", "20", "--host", "127.0.0.1"],
            stop="kill {job_id}",
            job_id_pattern=r"Submitted job (?P<job_id>\d+)",
            name_prefix=prefix,
        )  # fmt: skip
        await backend.scale_up(2)
        await backend.scale_up(2)  # two on their way: nothing more
        assert len(list(tmp_path.glob("start-*.args"))) == 2
        await until(lambda: len(s.workers) == 2, 40, what="two workers")
        async with Client(s.address, asynchronous=True) as c:
            assert await c.submit(slowinc, 1, delay=0.1) == 2
        names = sorted(str(ws.name) for ws in s.workers.values())
        assert names == sorted(backend.workers)
        assert all(n.startswith(prefix + "-") for n in names)
        recorded = [p.read_text().splitlines() for p in tmp_path.glob("start-*.args")]
        assert sorted(r[r.index("--name") + 1] for r in recorded) == names
        assert all(r[3] == s.address for r in recorded)
        pids = {name: int(w.job_id) for name, w in backend.workers.items()}
        assert all(pid_alive(p) for p in pids.values())

        first = s.aliases[names[0]]
        await backend.scale_down([first])
        await until(lambda: not pid_alive(pids[names[0]]), 20, what="the first stopped")
        await until(lambda: first not in s.workers, 20, what="the first gone")
        assert list(backend.workers) == [names[1]] and pid_alive(pids[names[1]])
        await backend.close()
        await until(
            lambda: not pid_alive(pids[names[1]]), 20, what="the second stopped"
        )
        assert backend.workers == {}
    assert not marker.exists(), "a worker name was run by a shell"


def test_command_backend_options_and_placeholders():
    class Fake:
        address = "tcp://10.0.0.1:8786"

    b = CommandBackend(
        Fake(),
        start="submit --name={name} '{scheduler}' {other}",
        stop=["cancel", "{job_id}", "{name}"],
        job_id_pattern=r"id=(\w+)",
    )
    from dask_adaptive_plugin.backends.command import Launched

    w = Launched(name="n-{job_id}", job_id="42", started=0)
    assert b.command(b.start, w) == [
        "submit", "--name=n-{job_id}", "tcp://10.0.0.1:8786", "{other}",
    ]  # fmt: skip
    assert b.command(b.stop, w) == ["cancel", "42", "n-{job_id}"]
    assert b.job_id_from("ok id=ab12 queued") == "ab12"
    with pytest.raises(RuntimeError, match="no job id matching"):
        b.job_id_from("nothing here")
    with pytest.raises(ValueError, match=r"backend option start .*without \{job_id\}"):
        CommandBackend(Fake(), start="run {job_id}", stop="stop")
    with pytest.raises(ValueError, match=r"backend option stop .*non-empty list"):
        CommandBackend(Fake(), start="run", stop=[])
    with pytest.raises(ValueError, match=r"backend option job_id_pattern"):
        CommandBackend(Fake(), start="run", stop="stop {job_id}", job_id_pattern="(")
    with pytest.raises(ValueError, match=r"backend_options for backend CommandBackend"):
        AdaptivePlugin(
            backend="command", backend_options={"start": "x", "stop": "y", "z": 1}
        )
    with pytest.raises(ValueError, match=r"backend option start .*without \{job_id\}"):
        AdaptivePlugin(
            backend="command", backend_options={"start": "x {job_id}", "stop": "y"}
        )
