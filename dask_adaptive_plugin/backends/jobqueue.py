"""Backends for HPC job queues, built on dask-jobqueue's job classes.

One class, :class:`JobQueueBackend`, does the work; each system's subclass
names its dask-jobqueue job class and the command that lists its queue:

=========================  ==========================  ===========================
backend (entry point)      job class                   queue state from
=========================  ==========================  ===========================
``slurm``                  ``SLURMJob``                ``squeue``
``pbs``                    ``PBSJob``                  ``qstat``
``sge``                    ``SGEJob``                  ``qstat``
``lsf``                    ``LSFJob``                  ``bjobs``
``htcondor``               ``HTCondorJob``             ``condor_q``
``oar``                    ``OARJob``                  ``oarstat``
``moab``                   ``MoabJob``                 ``qstat``
=========================  ==========================  ===========================

dask-jobqueue writes the job script and submits it (``Job.start()``), each
system its own way, and knows the cancel command; the job classes here are
dask-jobqueue's with a timeout on its commands (:func:`bounded`). This module
adds what scaling needs: jobs named after their workers, so that a restarted
scheduler finds them; the queue's view of them; workers counted per job.
"""

from __future__ import annotations

import asyncio
import getpass
import inspect
import json
import logging
import math
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from time import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

import dask
from dask.utils import parse_bytes

from dask_adaptive_plugin.backend import PENDING, RUNNING, Backend
from dask_adaptive_plugin.backends.workers import (
    parse_cluster_name,
    refuse_replaced,
    worker_names,
)
from dask_adaptive_plugin.config import invalid
from dask_adaptive_plugin.pools import DEFAULT as DEFAULT_POOL
from dask_adaptive_plugin.shell import CommandError, run_command

if TYPE_CHECKING:
    from distributed import Scheduler

try:
    from dask_jobqueue.core import Job
    from dask_jobqueue.htcondor import HTCondorJob
    from dask_jobqueue.lsf import LSFJob
    from dask_jobqueue.moab import MoabJob
    from dask_jobqueue.oar import OARJob
    from dask_jobqueue.pbs import PBSJob
    from dask_jobqueue.sge import SGEJob
    from dask_jobqueue.slurm import SLURMJob
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the job-queue backends need dask-jobqueue: "
        "pip install 'dask-adaptive-plugin[jobqueue]'"
    ) from e

logger = logging.getLogger(__name__)

#: Seconds one submit, cancel or status command may run.
COMMAND_TIMEOUT = 30.0
#: Seconds a submitted job may be missing from the queue listing before it is
#: taken as gone (some systems list a new job only after a moment).
LISTING_GRACE = 10.0

#: Job-class arguments that are deprecated aliases of others, or that the
#: backend sets itself (the job name is the worker's name).
_NOT_OPTIONS = frozenset(
    {"self", "scheduler", "name", "job_name", "extra", "job_extra", "env_extra",
     "header_skip"}
)  # fmt: skip


class BoundedCommands:
    """Mixed into a dask-jobqueue job class: its commands run with a timeout.

    dask-jobqueue runs every command through ``Job._call``, which waits for
    ever (a hung ``sbatch`` would stall the backend); this one runs
    :func:`run_command`, whose ``CommandError`` is the ``RuntimeError``
    dask-jobqueue expects of a failed command.
    """

    @staticmethod
    async def _call(cmd: list[str], *, shell: bool = False) -> str:
        if shell:  # LSF's "bsub < script", the one command written for a shell
            cmd = ["/bin/sh", "-c", " ".join(cmd)]
        return await run_command(cmd, timeout=COMMAND_TIMEOUT)


def bounded(job_cls: type[Job]) -> type[Job]:
    """``job_cls`` with :class:`BoundedCommands` mixed in, under its own name."""
    return cast(
        "type[Job]",
        type(job_cls.__name__, (BoundedCommands, job_cls), {"__module__": __name__}),
    )


class Listed(NamedTuple):
    """A job as the queue lists it."""

    #: Waiting in the queue, not started.
    pending: bool
    #: Its name in the queue.
    name: str


@dataclass
class BatchJob:
    """One job of this backend: submitted, or adopted from an earlier run.

    ``workers`` are the names its workers will have: ``name`` for one
    process, else ``name-0``, ``name-1``... (``dask worker --nworkers``).
    ``pending`` is whether the queue last listed it as waiting.
    """

    job_id: str
    name: str
    workers: tuple[str, ...]
    submitted: float
    pending: bool = True


class JobQueueBackend(Backend):
    """Start workers as batch jobs through a dask-jobqueue job class.

    A job, named ``<cluster name>-<8 hex>-<n>``, runs ``processes`` workers,
    which are retired together (:meth:`stopped_together`); ``scale_up(n)``
    submits ``ceil(missing / processes)`` jobs whose workers get the
    pool's resources (``--resources``). Jobs waiting in the queue count as
    workers on their way (``report()`` says they are pending); they are
    cancelled when workers are retired, and by :meth:`cancel_pending` when
    they do not start within the pool's ``start_timeout``. Jobs of this
    cluster name that an earlier run left are adopted at the first look at
    the queue (event ``"recovered"``). :meth:`close` cancels every job of the
    cluster name.

    Parameters
    ----------
    scheduler
        The scheduler the workers connect to (``scheduler.address``).
    cluster_name
        The first part of every job and worker name, which tells this
        scheduler's jobs apart (default: derived from the scheduler's address,
        and the pool's name for a pool other than ``default``, so that a
        scheduler restarted there adopts each pool's earlier jobs into that
        pool). Two schedulers, or two pools, must not share one.
    **job_options
        Arguments of the dask-jobqueue job class: ``cores``, ``memory``,
        ``processes``, ``queue``, ``account``, ``walltime``,
        ``job_extra_directives``, ``python``, ``interface``,
        ``worker_extra_args``, ``log_directory``... Those not given come from
        dask-jobqueue's config ``jobqueue.<system>`` (``cores`` and ``memory``
        must be set in one or the other).
    """

    #: The dask-jobqueue job class, :func:`bounded`; set by each system's subclass.
    job_cls: ClassVar[type[Job]]
    #: Lists this user's jobs; ``{user}`` is replaced by the user name.
    status_command: ClassVar[tuple[str, ...]] = ()
    #: Columns (0-based, negative from the end) of the job state and name.
    state_column: ClassVar[int] = 1
    name_column: ClassVar[int] = 2
    #: States that mean "waiting in the queue, not started".
    pending_states: ClassVar[frozenset[str]] = frozenset()
    #: States of jobs that are ending or ended but still listed: taken as gone.
    finished_states: ClassVar[frozenset[str]] = frozenset()
    #: Exit codes of ``status_command`` that still mean "here is the list".
    status_exit_ok: ClassVar[frozenset[int]] = frozenset({0})

    def __init__(
        self, scheduler: Scheduler, cluster_name: Any = None, **job_options: Any
    ) -> None:
        self.scheduler = scheduler
        self.system = self.job_cls.config_name
        self._cluster_name = cluster_name
        parse_cluster_name(cluster_name, scheduler.address)  # checked now
        self.job_options = self._check_job_options(job_options)
        template = self._make_job(scheduler.address, "template", job_options)
        self.processes = _check_processes(template)
        self.threads_per_worker = template.worker_process_threads
        # HTCondor's job class builds its cancel command per instance
        self.cancel_command = shlex.split(template.cancel_command)
        self.jobs: dict[str, BatchJob] = {}
        self._job_of_worker: dict[str, BatchJob] = {}
        #: Cancelled jobs the queue may still list as alive: never adopted.
        self._cancelled: set[str] = set()
        self._lock = asyncio.Lock()

    @cached_property
    def cluster_name(self) -> str:
        """The first part of every job name; read once the pool is known."""
        name = parse_cluster_name(self._cluster_name, self.scheduler.address)
        if self._cluster_name is None and self.pool.name != DEFAULT_POOL:
            name = parse_cluster_name(f"{name}-{self.pool.name}", "")
        return name

    @cached_property
    def _names(self) -> Iterator[str]:
        return worker_names(self.cluster_name)

    @cached_property
    def _our_name(self) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(self.cluster_name)}-[0-9a-f]{{8}}-\d+")

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Check option names and values before the scheduler starts.

        The backend is made with a stand-in address; nothing is submitted.
        """
        options.pop("log_directory", None)  # the job class would create it
        stand_in = SimpleNamespace(address="tcp://scheduler:8786")
        cls(cast("Scheduler", stand_in), **options)

    # -- the plugin's calls ------------------------------------------------------------

    async def scale_up(self, n: int, **resources: Any) -> None:
        """Submit jobs until this backend's workers, connected or on their
        way, are ``n``; their workers get ``resources`` (``--resources``)."""
        async with self._lock:
            await self._refresh()
            missing = n - sum(len(job.workers) for job in self.jobs.values())
            for _ in range(math.ceil(missing / self.processes)):
                await self._submit(resources)

    async def scale_down(self, workers: list[str]) -> None:
        """Cancel the jobs of these workers, and every job still waiting."""
        async with self._lock:
            await self._refresh()
            waiting = [job for job in self.jobs.values() if job.pending]
            if waiting:
                self.log_event(
                    {
                        "status": "jobs-cancelled",
                        "backend": self.system,
                        "job_ids": [job.job_id for job in waiting],
                        "reason": "workers are being retired, so jobs still "
                        "waiting in the queue are not needed",
                    },
                )
            # waiting jobs first: cancelling running ones frees room they could take
            await self._cancel(waiting + self._jobs_of(workers))

    async def cancel_pending(self) -> None:
        """Cancel the jobs still waiting in the queue (their start is overdue)."""
        async with self._lock:
            await self._refresh()
            await self._cancel([job for job in self.jobs.values() if job.pending])

    def report(self) -> dict[str, str]:
        """The workers of our jobs: waiting in the queue, or started."""
        return {
            worker: PENDING if job.pending else RUNNING
            for job in self.jobs.values()
            for worker in job.workers
        }

    def stopped_together(self, address: str) -> list[str]:
        """The connected workers of this worker's job (itself included)."""
        names = self.names([address])
        job = self._job_of_worker.get(names[0]) if names else None
        if job is None:
            return [address]
        aliases = self.scheduler.aliases
        return [aliases[name] for name in job.workers if name in aliases]

    async def close(self) -> None:
        """Cancel every job of this cluster: submitted or adopted."""
        async with self._lock:
            try:
                await self._refresh()  # adopts what an earlier run left
            except CommandError as e:
                logger.warning(
                    "%s backend: could not list the queue: %s", self.system, e
                )
            try:
                await self._cancel(list(self.jobs.values()))
            except CommandError as e:
                # the scheduler is closing: say which jobs may be left behind
                logger.error(
                    "%s backend: could not cancel jobs %s; cancel them by hand: %s",
                    self.system, ", ".join(self.jobs), e,
                )  # fmt: skip

    # -- jobs ------------------------------------------------------------------------------

    @classmethod
    def _make_job(cls, address: str, name: str, options: dict[str, Any]) -> Job:
        """A dask-jobqueue job for one worker name (its script is not submitted)."""
        try:
            return cls.job_cls(scheduler=address, name=name, job_name=name, **options)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"invalid options for the {cls.job_cls.config_name} backend "
                f"({sorted(options)}): {e}"
            ) from e

    async def _submit(self, resources: dict[str, Any]) -> BatchJob:
        name = next(self._names)
        options = self.job_options
        if resources:
            extra = list(options.get("worker_extra_args") or ())
            spec = ",".join(f"{k}={v:g}" for k, v in resources.items())
            options = {**options, "worker_extra_args": [*extra, "--resources", spec]}
        job = self._make_job(self.scheduler.address, name, options)
        await job.start()  # writes the script, submits it, reads the job id
        record = BatchJob(job.job_id, name, _worker_names(name, self.processes), time())
        self._remember(record)
        logger.info("%s backend: submitted job %s (%s)", self.system, job.job_id, name)
        return record

    async def _cancel(self, jobs: list[BatchJob]) -> None:
        """Cancel these jobs with one command; a job that has already left the
        queue is no error, one still listed after a failure is."""
        if not jobs:
            return
        ids = list(dict.fromkeys(job.job_id for job in jobs))
        try:
            await self.job_cls._call(self.cancel_command + ids)
        except CommandError:
            listed = await self.queue_state()
            if any(job_id in listed for job_id in ids):
                raise
        for job in jobs:
            self._forget(job)
        self._cancelled.update(ids)
        logger.info("%s backend: cancelled jobs %s", self.system, ", ".join(ids))

    def _remember(self, job: BatchJob) -> None:
        self.jobs[job.job_id] = job
        for worker in job.workers:
            self._job_of_worker[worker] = job

    def _forget(self, job: BatchJob) -> None:
        self.jobs.pop(job.job_id, None)
        for worker in job.workers:
            self._job_of_worker.pop(worker, None)

    def _jobs_of(self, addresses: list[str]) -> list[BatchJob]:
        jobs = {}
        for name in self.names(addresses):
            job = self._job_of_worker.get(name)
            if job is None:
                logger.warning("%s backend: worker %s is not ours", self.system, name)
            else:
                jobs[job.job_id] = job
        return list(jobs.values())

    # -- the queue ----------------------------------------------------------------------

    async def queue_state(self) -> dict[str, Listed]:
        """This user's jobs in the queue that have not ended, by job id."""
        cmd = [part.format(user=getpass.getuser()) for part in self.status_command]
        try:
            out = await run_command(cmd, timeout=COMMAND_TIMEOUT)
        except CommandError as e:
            if e.returncode not in self.status_exit_ok:
                raise
            out = e.stdout
        return {
            job_id: Listed(status in self.pending_states, name)
            for job_id, status, name in self.queue_rows(out)
            if status not in self.finished_states
        }

    def queue_rows(self, out: str) -> Iterator[tuple[str, str, str]]:
        """``(job id, state, name)`` for each job the status command lists.

        The default reads columns: the job id first, then the state at
        :attr:`state_column` and the name at :attr:`name_column`.
        """
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 3 or not fields[0][:1].isdigit():
                continue  # a header, a separator, a message
            job_id = fields[0].split(".")[0]
            yield job_id, fields[self.state_column], fields[self.name_column]

    async def _refresh(self) -> None:
        """Update our jobs from the queue: forget those that left it, adopt
        those of this cluster that an earlier run left."""
        listed = await self.queue_state()
        now = time()
        for job in list(self.jobs.values()):
            if job.job_id in listed:
                job.pending = listed[job.job_id].pending
            elif now - job.submitted > LISTING_GRACE:
                logger.info("%s backend: job %s has ended", self.system, job.job_id)
                self._forget(job)
        self._cancelled.intersection_update(listed)
        self._adopt(
            BatchJob(job_id, entry.name, _worker_names(entry.name, self.processes),
                     submitted=now, pending=entry.pending)
            for job_id, entry in listed.items()
            if job_id not in self.jobs
            and job_id not in self._cancelled
            and self._our_name.fullmatch(entry.name)
        )  # fmt: skip

    def _adopt(self, jobs: Iterable[BatchJob]) -> None:
        """Manage these jobs of an earlier run as our own, and say so."""
        adopted = list(jobs)
        for job in adopted:
            self._remember(job)
        if adopted:
            self.log_event(
                {
                    "status": "recovered",
                    "backend": self.system,
                    "adopted": [job.job_id for job in adopted],
                    "names": [job.name for job in adopted],
                    "reason": f"jobs named {self.cluster_name}-... that this "
                    "backend did not submit (an earlier run at this address): "
                    "adopted, counted as workers on their way",
                },
            )

    # -- options ----------------------------------------------------------------------------

    @classmethod
    def job_option_names(cls) -> list[str]:
        """The job-class arguments this backend takes as options."""
        names: dict[str, None] = {}
        for klass in cls.job_cls.__mro__:
            if not (isinstance(klass, type) and issubclass(klass, Job)):
                continue
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    names.setdefault(p.name)
        return [name for name in names if name not in _NOT_OPTIONS]

    @classmethod
    def _check_job_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        system = cls.job_cls.config_name
        refuse_replaced(options)
        if "job_name" in options:
            raise invalid(
                "job_name",
                options["job_name"],
                "cluster_name instead (jobs are named after their workers, "
                "<cluster_name>-<id>, so that a restarted scheduler finds them)",
                backend_option=True,
            )
        unknown = sorted(set(options) - set(cls.job_option_names()))
        if unknown:
            raise ValueError(
                f"invalid backend_options for backend {cls.__name__}: unknown "
                f"option(s) {unknown} for the {system} backend; it takes "
                "cluster_name and the arguments "
                f"of dask-jobqueue's {cls.job_cls.__name__}: "
                f"{', '.join(cls.job_option_names())}"
            )
        _check_cores_and_memory(options)
        section = options.get("config_name") or system
        for name in ("cores", "memory"):
            configured = dask.config.get(f"jobqueue.{section}.{name}", default=None)
            if options.get(name) is None and configured is None:
                raise invalid(
                    name,
                    options.get(name),
                    f"the {name} of one job, e.g. --adaptive-option "
                    f"{name}={'4' if name == 'cores' else '16GB'} "
                    f"(or dask config jobqueue.{section}.{name})",
                    backend_option=True,
                )
        return options


def _worker_names(name: str, processes: int) -> tuple[str, ...]:
    # dask worker --name NAME --nworkers N names them NAME-0 ... NAME-(N-1)
    if processes == 1:
        return (name,)
    return tuple(f"{name}-{i}" for i in range(processes))


def _check_cores_and_memory(options: dict[str, Any]) -> None:
    cores, memory = options.get("cores"), options.get("memory")
    if cores is not None and (
        not isinstance(cores, int) or isinstance(cores, bool) or cores < 1
    ):
        raise invalid("cores", cores, "a whole number >= 1", backend_option=True)
    if memory is not None:
        try:
            parse_bytes(memory)
        except (TypeError, ValueError):
            raise invalid(
                "memory", memory, "a size such as '16GB'", backend_option=True
            ) from None


def _check_processes(job: Job) -> int:
    processes, cores = job.worker_processes, job.worker_cores
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise invalid(
            "processes", processes, "a whole number >= 1", backend_option=True
        )
    if processes > cores:
        raise invalid(
            "processes",
            processes,
            f"at most cores ({cores}): each worker process needs a thread",
            backend_option=True,
        )
    return processes


# -- the systems ---------------------------------------------------------------------------


class SLURMBackend(JobQueueBackend):
    """Workers as SLURM jobs (``sbatch``, ``squeue``, ``scancel``)."""

    job_cls = bounded(SLURMJob)
    status_command = ("squeue", "--noheader", "--user={user}", "--format=%i %t %j")
    pending_states = frozenset({"PD"})
    # completing, completed, cancelled, failed, timeout... (squeue lists some)
    finished_states = frozenset(
        {"CG", "CD", "CA", "F", "TO", "NF", "PR", "OOM", "BF", "DL"}
    )


class PBSBackend(JobQueueBackend):
    """Workers as PBS / Torque jobs (``qsub``, ``qstat``, ``qdel``)."""

    job_cls = bounded(PBSJob)
    # the full format: the default one cuts names at 16 characters
    status_command = ("qstat", "-f")
    pending_states = frozenset({"Q", "H", "W", "T"})
    # exiting, completed (kept listed for a while), finished
    finished_states = frozenset({"E", "C", "F"})
    # Torque's qstat (and Slurm's qstat wrapper) exit 153 when no job is listed
    status_exit_ok = frozenset({0, 153})

    def queue_rows(self, out: str) -> Iterator[tuple[str, str, str]]:
        # "Job Id: 12.server", then indented "Job_Name = x", "job_state = R"
        job: dict[str, str] = {}
        for line in [*out.splitlines(), "Job Id: end"]:
            key, sep, value = line.strip().partition(" = ")
            if line.startswith("Job Id:"):
                if {"id", "job_state", "Job_Name"} <= job.keys():
                    yield job["id"], job["job_state"], job["Job_Name"]
                job = {"id": line.split(":", 1)[1].strip().split(".")[0]}
            elif sep:
                job[key] = value.strip()


class MoabBackend(PBSBackend):
    """Workers as Moab jobs (``msub``, ``canceljob``; queue state from ``qstat``)."""

    job_cls = bounded(MoabJob)


class SGEBackend(JobQueueBackend):
    """Workers as (Son of) Grid Engine jobs (``qsub``, ``qstat``, ``qdel``)."""

    job_cls = bounded(SGEJob)
    # job-ID, prior, name, user, state, ...; then "Full jobname: x" (the name
    # column is cut at 10 characters)
    status_command = ("qstat", "-u", "{user}", "-r")
    state_column = 4
    pending_states = frozenset({"qw", "hqw", "hRwq", "Eqw"})
    finished_states = frozenset({"dr", "dt", "dRr", "dqw", "dhqw", "dEqw"})

    def queue_rows(self, out: str) -> Iterator[tuple[str, str, str]]:
        job_id = state = ""
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > self.state_column and fields[0].isdigit():
                job_id, state = fields[0], fields[self.state_column]
            elif job_id and line.strip().startswith("Full jobname:"):
                yield job_id, state, line.split(":", 1)[1].strip()
                job_id = ""


class LSFBackend(JobQueueBackend):
    """Workers as LSF jobs (``bsub``, ``bjobs``, ``bkill``)."""

    job_cls = bounded(LSFJob)
    status_command = ("bjobs", "-noheader", "-o", "jobid stat job_name")
    pending_states = frozenset({"PEND", "PSUSP"})
    finished_states = frozenset({"DONE", "EXIT"})


class HTCondorBackend(JobQueueBackend):
    """Workers as HTCondor jobs (``condor_submit``, ``condor_q``, ``condor_rm``)."""

    job_cls = bounded(HTCondorJob)
    # dask-jobqueue gives the worker's name as the batch name
    status_command = (
        "condor_q", "-af", "ClusterId", "ProcId", "JobStatus", "JobBatchName"
    )  # fmt: skip
    # JobStatus 1: idle, 5: held; 3: removed, 4: completed
    pending_states = frozenset({"1", "5"})
    finished_states = frozenset({"3", "4"})

    def queue_rows(self, out: str) -> Iterator[tuple[str, str, str]]:
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 4 and fields[0].isdigit():
                yield f"{fields[0]}.{fields[1]}", fields[2], fields[3]


class OARBackend(JobQueueBackend):
    """Workers as OAR jobs (``oarsub``, ``oarstat``, ``oardel``)."""

    job_cls = bounded(OARJob)
    status_command = ("oarstat", "-u", "{user}", "-J")
    pending_states = frozenset({"Waiting", "Hold", "toLaunch", "toAckReservation"})
    finished_states = frozenset({"Finishing", "Terminated", "Error"})

    def queue_rows(self, out: str) -> Iterator[tuple[str, str, str]]:
        for job_id, info in json.loads(out or "{}").items():
            yield str(job_id), str(info.get("state")), str(info.get("name"))
