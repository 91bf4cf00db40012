"""Every built-in backend, and both example packages, pass the conformance kit.

The kit's test class (:class:`dask_adaptive_plugin.testing.BackendConformance`)
runs once per backend below, each where this project can run its system:

=============  ==========================================================
live           ``slurm``, ``sge``, ``pbs`` (Slurm's Torque wrappers),
               ``oar``, ``ssh`` (the systems ``.ci/run`` starts)
stand-in       ``lsf``, ``htcondor``, ``moab`` (the stand-in queue of
               ``test_jobqueue_commands.py``, which runs the job scripts),
               ``kubernetes`` (kmock and ``kubelet.py``), ``marathon``
               (``marathon_standin.py``), ``command`` (a launcher script)
this machine   ``local``; ``inprocess`` (workers in this process)
=============  ==========================================================

Every case runs real ``dask worker`` processes (``inprocess``: real
``Worker`` objects) against a real scheduler. A live system that is missing
skips its case here and fails it in CI (``DASK_ADAPTIVE_LIVE=1``). The
kit's checks of optional parts that a backend does not have (``cancel_pending``,
``report``, surviving a restart outside :data:`RESTART`) are left out of the
run at collection, not skipped (:func:`without_its_optional_part`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from conftest import require_live
from helpers import alive

from dask_adaptive_plugin import registry
from dask_adaptive_plugin.testing import BackendConformance, BackendUnderTest
from dask_adaptive_plugin.testing.harness import implements
from dask_adaptive_plugin.testing.spec import Environment

# The live systems' session fixtures, for request.getfixturevalue; without
# asyncssh or dask-jobqueue their modules skip, and so do those cases.
with contextlib.suppress(pytest.skip.Exception):
    from test_jobqueue_live import oar, pbs, sge, slurm  # noqa: F401
with contextlib.suppress(pytest.skip.Exception):
    from test_ssh_live import sshd  # noqa: F401

# the lifecycle of a live backend runs in the first test's set-up
pytestmark = pytest.mark.timeout(300)

#: How long the workers of each kind of system may take to connect.
LOCAL_START = 30.0
LIVE_START = 60.0
#: The backends checked for surviving a restart (--adaptive-restart): one
#: live queue and one stand-in queue for the code the queue backends share
#: (their adoption is also tested per system in test_jobqueue_live.py and
#: test_jobqueue_commands.py), Kubernetes and Marathon, which each have their own.
RESTART = {"slurm", "lsf", "kubernetes", "marathon"}


@dataclass(frozen=True)
class Case:
    """One backend: how to make its :class:`BackendUnderTest`, and its live marker."""

    name: str
    make: Callable[[pytest.FixtureRequest, Path], BackendUnderTest]
    marks: tuple[Any, ...] = ()


@pytest.fixture(scope="class")
def adaptive_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> BackendUnderTest:
    case: Case = request.param
    return case.make(request, tmp_path_factory.mktemp(case.name))


@contextlib.contextmanager
def scoped_env(**changes: str) -> Iterator[None]:
    """Environment variables set for one scenario (the backends' commands read them)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in changes.items():
            patch.setenv(key, value)
        yield


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Job output files (slurm-<id>.out, OAR.<name>.stdout) land in ``path``."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def installed(name: str, package: str) -> None:
    """Skip (fail in CI) unless the example package registering ``name`` is installed."""
    found = any(ep.name == name for ep in entry_points(group=registry.BACKENDS))
    require_live(f"{package} package", found, f"pip install -e docs/examples/{package}")


# -- this machine ---------------------------------------------------------------------------


def inprocess(request: pytest.FixtureRequest, tmp: Path) -> BackendUnderTest:
    installed("inprocess", "dask-adaptive-inprocess")
    return BackendUnderTest("inprocess", {"nthreads": 1}, start_timeout=LOCAL_START)


def local(request: pytest.FixtureRequest, tmp: Path) -> BackendUnderTest:
    options = {"nthreads": 1, "memory_limit": "1GiB", "death_timeout": "20s"}
    return BackendUnderTest("local", options, start_timeout=LOCAL_START)


def command(request: pytest.FixtureRequest, tmp: Path) -> BackendUnderTest:
    """A launcher script as the resource manager: it starts ``dask worker`` in
    the background and prints its PID as the job id; ``kill`` stops it."""
    from test_jobqueue_commands import LAUNCHER

    launcher = tmp / "launch"
    launcher.write_text(LAUNCHER.format(record=tmp))
    launcher.chmod(0o755)
    start = [
        str(launcher), sys.executable, "-m", "distributed.cli.dask_worker",
        "{scheduler}", "--name", "{name}", "--nthreads", "1",
        "--death-timeout", "20", "--host", "127.0.0.1",
        "--resources", "{resources}",
    ]  # fmt: skip
    options = {
        "start": start,
        "stop": "kill {job_id}",
        "job_id_pattern": r"Submitted job (?P<job_id>\d+)",
    }
    return BackendUnderTest("command", options, start_timeout=LOCAL_START)


# -- live systems ---------------------------------------------------------------------------


def ssh(request: pytest.FixtureRequest, tmp: Path) -> BackendUnderTest:
    pytest.importorskip("asyncssh")
    live = request.getfixturevalue("sshd")
    options = live.options(workers_per_host=2, memory_limit="1GiB")
    return BackendUnderTest("ssh", options, start_timeout=LIVE_START)


def job_queue(system: str) -> Callable[[pytest.FixtureRequest, Path], BackendUnderTest]:
    """A live queue from ``test_jobqueue_live.py``'s fixtures; each scenario
    gets a cluster name of its own, which its jobs are listed by."""

    def make(request: pytest.FixtureRequest, tmp: Path) -> BackendUnderTest:
        pytest.importorskip("dask_jobqueue")
        from test_jobqueue_live import dask_jobqueue_config, worker_options

        live = request.getfixturevalue(system)

        @contextlib.asynccontextmanager
        async def environment() -> AsyncIterator[Environment]:
            dask_jobqueue_config.reconfigure()
            cluster = "k" + uuid.uuid4().hex[:8]
            path = live.env.get("PATH", os.environ["PATH"])
            with scoped_env(PATH=path), working_directory(tmp):

                async def leftovers() -> list[str]:
                    jobs = await live.jobs_named(cluster)
                    return [f"job {job_id} ({state})" for job_id, state in jobs.items()]

                yield Environment(
                    worker_options(cluster, **live.options), leftovers=leftovers
                )

        return BackendUnderTest(
            system,
            start_timeout=LIVE_START,
            environment=environment,
            restart=system in RESTART,
        )

    return make


# -- stand-ins -----------------------------------------------------------------------------

#: condor_submit in front of the stand-in queue: the stand-in runs a submitted
#: file with bash, so the submit description (Executable, Arguments) becomes a
#: shell script first; ``batch_name`` stays in it, in a comment, for the
#: stand-in to read the job's name from.
CONDOR_SUBMIT = r"""#!PYTHON
import os, re, shlex, sys
description = open(sys.argv[-1]).read()
values = dict(re.findall(r"^(\w+) = (.*)$", description, re.MULTILINE))
arguments = values["Arguments"].strip()[1:-1]  # "..." around the new syntax
script = sys.argv[-1] + ".sh"
with open(script, "w") as f:
    f.write(f"# batch_name = {values['batch_name']}\n")
    f.write(f"exec {values['Executable']} {arguments}\n")
stand_in = os.path.join(os.environ["KIT_STAND_IN"], "condor_submit")
os.execv(stand_in, [stand_in, *sys.argv[1:-1], script])
"""

#: Options each stand-in system needs beyond the common ones. LSF's jobs run
#: two workers each, retired as one unit: stopped_together is checked with
#: units larger than one worker.
STAND_IN_OPTIONS = {
    "lsf": {"lsf_units": "mb", "cores": 2, "memory": "2GB", "processes": 2},
    "htcondor": {"disk": "1GB"},
    "moab": {},
}
#: Workers the kit asks for, per stand-in system: two jobs of two for LSF.
STAND_IN_WORKERS = {"lsf": 4}


def stand_in_queue(
    system: str,
) -> Callable[[pytest.FixtureRequest, Path], BackendUnderTest]:
    """The stand-in queue of ``test_jobqueue_commands.py``, running its jobs'
    scripts, so that real workers connect; a fresh queue per scenario."""

    def make(request: pytest.FixtureRequest, tmp: Path) -> BackendUnderTest:
        from test_jobqueue_commands import StandIn, jobqueue_defaults

        @contextlib.asynccontextmanager
        async def environment() -> AsyncIterator[Environment]:
            jobqueue_defaults()
            directory = tmp / uuid.uuid4().hex[:8]
            (directory / "bin").mkdir(parents=True)
            queue = StandIn(directory / "bin")
            path = (
                f"{_condor_front(directory)}:{directory / 'bin'}:{os.environ['PATH']}"
            )
            options = {
                "cores": 1, "memory": "1GB", "python": sys.executable,
                "interface": "lo", "death_timeout": 20,
                "cluster_name": "k" + uuid.uuid4().hex[:8],
                **STAND_IN_OPTIONS[system],
            }  # fmt: skip
            env = {
                "PATH": path,
                "STAND_IN_RUN": "1",
                "KIT_STAND_IN": str(directory / "bin"),
            }
            with scoped_env(**env), working_directory(directory):
                try:
                    yield Environment(options, leftovers=lambda: _jobs(queue))
                finally:
                    queue.kill_all()

        return BackendUnderTest(
            system,
            workers=STAND_IN_WORKERS.get(system, 2),
            start_timeout=LOCAL_START,
            environment=environment,
            restart=system in RESTART,
        )

    return make


def _condor_front(directory: Path) -> Path:
    front = directory / "front"
    front.mkdir()
    script = front / "condor_submit"
    script.write_text(CONDOR_SUBMIT.replace("PYTHON", sys.executable, 1))
    script.chmod(0o755)
    return front


def _jobs(queue: Any) -> list[str]:
    """The stand-in's jobs whose process still runs (it forgets the others)."""
    state = queue.directory / "state.json"
    jobs = json.loads(state.read_text())["jobs"] if state.exists() else {}
    return [f"job {job_id} ({job['name']})" for job_id, job in jobs.items()
            if job.get("pid") is None or alive(job["pid"])]  # fmt: skip


def kubernetes(request: pytest.FixtureRequest, tmp: Path) -> BackendUnderTest:
    """kmock's API emulator and the stand-in kubelet, fresh for each scenario."""
    import test_kubernetes as k8s
    from kubelet import Kubelet

    @contextlib.asynccontextmanager
    async def environment() -> AsyncIterator[Environment]:
        async with k8s.kubernetes_api() as (emulator, url), Kubelet(url):
            directory = tmp / uuid.uuid4().hex[:8]
            directory.mkdir()
            options = {"kubeconfig": k8s.write_kubeconfig(directory, url)}
            yield Environment(
                options,
                leftovers=lambda: [f"Pod {name}" for name in k8s.alive_pods(emulator)],
            )

    return BackendUnderTest(
        "kubernetes",
        start_timeout=LOCAL_START,
        environment=environment,
        restart="kubernetes" in RESTART,
    )


def marathon(request: pytest.FixtureRequest, tmp: Path) -> BackendUnderTest:
    """The stand-in Marathon, fresh for each scenario."""
    installed("marathon", "dask-adaptive-marathon")
    from marathon_standin import MarathonStandIn
    from test_marathon import TOKEN, backend_options

    @contextlib.asynccontextmanager
    async def environment() -> AsyncIterator[Environment]:
        async with MarathonStandIn(token=TOKEN) as standin:
            # an app's instances are alike: they provide what the kit asks for
            options = backend_options(standin.url, resources={"kit": 1})
            yield Environment(
                options,
                leftovers=lambda: [f"task {t}" for t in standin.running_tasks()],
            )

    return BackendUnderTest(
        "marathon",
        start_timeout=LOCAL_START,
        environment=environment,
        restart="marathon" in RESTART,
    )


CASES = [
    Case("inprocess", inprocess),
    Case("local", local),
    Case("command", command),
    Case("ssh", ssh, (pytest.mark.ssh,)),
    Case("slurm", job_queue("slurm"), (pytest.mark.slurm,)),
    Case("sge", job_queue("sge"), (pytest.mark.sge,)),
    Case("pbs", job_queue("pbs"), (pytest.mark.pbs,)),
    Case("oar", job_queue("oar"), (pytest.mark.oar,)),
    Case("lsf", stand_in_queue("lsf")),
    Case("htcondor", stand_in_queue("htcondor")),
    Case("moab", stand_in_queue("moab")),
    Case("kubernetes", kubernetes, (pytest.mark.kubernetes,)),
    Case("marathon", marathon, (pytest.mark.marathon,)),
]


#: The kit's checks of optional parts, and whether a case's backend has the
#: part: the kit skips the check where it does not.
OPTIONAL: dict[str, Callable[[Case, type], bool]] = {
    "test_cancel_pending_stops_what_has_not_connected": (
        lambda case, cls: implements(cls, "cancel_pending")
    ),
    "test_report_matches_what_the_scheduler_sees": (
        lambda case, cls: implements(cls, "report")
    ),
    "test_a_backend_made_again_adopts_or_removes_what_was_left": (
        lambda case, cls: case.name in RESTART
    ),
}


def without_its_optional_part(item: pytest.Item) -> bool:
    """Whether ``item`` checks an optional part its backend does not have
    (called from ``conftest.py`` at collection). Such checks are left out of
    the run rather than skipped, so that a skip here always means a missing
    system, which CI turns into a failure. Which parts each backend has is
    read from its class, as the kit itself reads it."""
    has_part = OPTIONAL.get(getattr(item, "originalname", ""))
    callspec = getattr(item, "callspec", None)
    if has_part is None or callspec is None:
        return False
    case: Case = callspec.params["adaptive_backend"]
    try:
        cls = registry.load(registry.BACKENDS, case.name)
    except Exception:  # not installed: the case itself fails or skips, saying why
        return False
    return not has_part(case, cls)


@pytest.mark.parametrize(
    "adaptive_backend",
    [pytest.param(case, id=case.name, marks=case.marks) for case in CASES],
    indirect=True,
    scope="class",
)
class TestBackendConformance(BackendConformance):
    """The kit, against each backend of :data:`CASES`."""


def test_every_built_in_backend_is_checked() -> None:
    """A backend added to setup.cfg must be added to CASES too."""
    built_in = {
        ep.name
        for ep in entry_points(group=registry.BACKENDS)
        if ep.value.startswith("dask_adaptive_plugin.")
    }
    assert built_in <= {case.name for case in CASES}, built_in - {c.name for c in CASES}


def test_the_condor_front_turns_a_submit_description_into_a_script(
    tmp_path: Path,
) -> None:
    """What the htcondor case relies on: Executable and Arguments become the
    command a shell runs, and the stand-in still finds the job's name."""
    from dask_jobqueue.htcondor import HTCondorJob

    job = HTCondorJob(
        scheduler="tcp://127.0.0.1:8786", name="w-1", job_name="w-1", cores=1,
        memory="1GB", disk="1GB", python=sys.executable,
    )  # fmt: skip
    values = dict(re.findall(r"^(\w+) = (.*)$", job.job_script(), re.MULTILINE))
    command = shlex.split(f"{values['Executable']} {values['Arguments'].strip()[1:-1]}")
    assert command[:2] == ["/bin/sh", "-c"]
    assert shlex.split(command[2])[:3] == [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
    ]
    assert values["batch_name"] == "w-1"
