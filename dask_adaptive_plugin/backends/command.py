"""The ``command`` backend: any resource manager, through two commands of yours."""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from time import time
from typing import TYPE_CHECKING, Any

from dask_adaptive_plugin.backend import RUNNING, Backend
from dask_adaptive_plugin.backends.workers import (
    all_or_first_error,
    parse_text,
    parse_whole,
    worker_names,
)
from dask_adaptive_plugin.config import invalid, parse_duration
from dask_adaptive_plugin.shell import run_command

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger(__name__)

#: The placeholders filled in each argument; nothing else in an argument is
#: interpreted (other braces stay as they are).
PLACEHOLDER = re.compile(r"\{(scheduler|name|job_id|resources)\}")


@dataclass
class Launched:
    """A worker the start command launched."""

    name: str
    job_id: str
    started: float
    #: What it must provide, as ``dask worker --resources`` takes it: ``GPU=1,MEM=8e9``.
    resources: str = ""
    #: Whether it has been seen connected to the scheduler.
    seen: bool = False


class CommandBackend(Backend):
    """Start and stop each worker with a command of your resource manager.

    For systems without a backend of their own. ``start`` launches one worker
    and returns (it submits a job, starts a container...); ``stop`` stops one.
    Both are argument lists run without a shell, so a worker name or address
    is always one argument and never interpreted; each argument may contain
    the placeholders ``{scheduler}`` (the scheduler's address), ``{name}``
    (a unique worker name, which the worker must use: ``dask worker --name
    {name}``), ``{resources}`` (what the worker must provide, ``GPU=1,MEM=8e9``
    or empty: ``dask worker --resources {resources}``) and, in ``stop``,
    ``{job_id}`` (read from the start command's standard output).

    Parameters
    ----------
    scheduler
        The scheduler the workers connect to.
    start
        The command that launches one worker: a list of arguments, or one
        string split like a shell would (``shlex.split``) but never run by one.
        It must not wait for the worker: a command that starts a process in
        the background must redirect that process's output away from its own.
    stop
        The command that stops one worker.
    job_id_pattern
        A regular expression finding the job id in the start command's output:
        its group ``job_id`` if it has one, else its first group, else the
        whole match (default ``r"(\\d+)"``). Needed only if ``stop`` uses
        ``{job_id}``.
    name_prefix
        Worker names are ``<name_prefix>-<random>-<n>`` (default ``"command"``).
    threads_per_worker
        Threads each worker will have, to size the cluster before any worker
        has connected (default 1).
    start_timeout
        A launched worker not connected after this long is taken as failed:
        it is stopped and no longer counted (default ``"120s"``).
    command_timeout
        How long one start or stop command may run (default ``"30s"``).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        start: Any,
        stop: Any,
        job_id_pattern: Any = r"(\d+)",
        name_prefix: Any = "command",
        threads_per_worker: Any = 1,
        start_timeout: Any = "120s",
        command_timeout: Any = "30s",
    ) -> None:
        self.scheduler = scheduler
        self.start = _parse_command("start", start)
        self.stop = _parse_command("stop", stop)
        if _uses(self.start, "job_id"):
            raise invalid(
                "start", start, "a command without {job_id} (it is read from "
                "the start command's output)", backend_option=True,
            )  # fmt: skip
        self.job_id_pattern = _parse_pattern(job_id_pattern)
        self.needs_job_id = _uses(self.stop, "job_id")
        self.passes_resources = _uses(self.start, "resources")
        self._warned_resources = False
        self.threads_per_worker = parse_whole("threads_per_worker", threads_per_worker)
        self.start_timeout, self.command_timeout = (
            parse_duration(name, value, backend_option=True)
            for name, value in [
                ("start_timeout", start_timeout),
                ("command_timeout", command_timeout),
            ]
        )
        prefix = parse_text("name_prefix", name_prefix, optional=False)
        self._names = worker_names(prefix)  # type: ignore[arg-type]
        self.workers: dict[str, Launched] = {}

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Check option names and values before the scheduler starts."""
        super().check_options(**options)
        cls(None, **options)  # type: ignore[arg-type]

    async def scale_up(self, n: int, **resources: Any) -> None:
        """Launch workers until this backend has ``n``, connected or on their way."""
        await self._stop_lost_workers()
        missing = n - len(self.workers)
        if missing > 0 and resources:
            self._warn_if_resources_dropped(resources)
        for _ in range(missing):
            await self._launch(_resources_argument(resources))

    async def scale_down(self, workers: list[str]) -> None:
        """Run the stop command for each of these workers."""
        names = self.names(workers)
        await self._stop_all([self.workers[n] for n in names if n in self.workers])

    def report(self) -> dict[str, str]:
        """The workers launched and not stopped (this backend cannot tell more)."""
        return dict.fromkeys(self.workers, RUNNING)

    async def close(self) -> None:
        """Stop every worker this backend launched."""
        try:
            await self._stop_all(list(self.workers.values()))
        except Exception as e:
            logger.warning("command backend: stopping workers on close failed: %s", e)

    def command(self, template: list[str], worker: Launched) -> list[str]:
        """``template`` with the placeholders filled in for ``worker``."""
        values = {
            "scheduler": self.scheduler.address,
            "name": worker.name,
            "job_id": worker.job_id,
            "resources": worker.resources,
        }
        # one pass: a value that contains "{name}" is not filled in again
        return [PLACEHOLDER.sub(lambda m: values[m[1]], arg) for arg in template]

    def job_id_from(self, out: str) -> str:
        """The job id in the start command's output, or ``""`` if none is needed."""
        match = self.job_id_pattern.search(out)
        if match is None:
            if self.needs_job_id:
                raise RuntimeError(
                    f"the start command printed no job id matching job_id_pattern "
                    f"{self.job_id_pattern.pattern!r}; its output was:\n{out}"
                )
            return ""
        if "job_id" in self.job_id_pattern.groupindex:
            return match["job_id"]
        return match[1] if self.job_id_pattern.groups else match[0]

    def _warn_if_resources_dropped(self, resources: dict[str, Any]) -> None:
        """Say once that workers start without the resources asked for."""
        if self.passes_resources or self._warned_resources:
            return
        self._warned_resources = True
        logger.warning(
            "command backend: workers are asked to provide %s, but the start "
            "command has no {resources} placeholder (dask worker --resources "
            "{resources}); they start without them",
            _resources_argument(resources),
        )

    async def _launch(self, resources: str = "") -> Launched:
        worker = Launched(
            name=next(self._names), job_id="", started=time(), resources=resources
        )
        out = await run_command(
            self.command(self.start, worker), timeout=self.command_timeout
        )
        worker.job_id = self.job_id_from(out)
        self.workers[worker.name] = worker
        logger.info("command backend: launched %s (job %s)", worker.name, worker.job_id)
        return worker

    async def _stop_all(self, workers: list[Launched]) -> None:
        """Stop these workers at once; raise the first failure after trying all."""
        await all_or_first_error(self._stop(w) for w in workers)

    async def _stop(self, worker: Launched) -> None:
        await run_command(self.command(self.stop, worker), timeout=self.command_timeout)
        self.workers.pop(worker.name, None)

    async def _stop_lost_workers(self) -> None:
        """Stop workers that left, or never came within ``start_timeout``."""
        aliases, now = self.scheduler.aliases, time()
        lost = []
        for worker in self.workers.values():
            if worker.name in aliases:
                worker.seen = True
            elif worker.seen or now - worker.started > self.start_timeout:
                lost.append(worker)
        for worker in lost:
            logger.warning(
                "command backend: %s is gone or never came; stopping it", worker.name
            )
            self.workers.pop(worker.name, None)
        try:
            await self._stop_all(lost)
        except Exception as e:
            logger.warning("command backend: stopping lost workers failed: %s", e)


def _resources_argument(resources: dict[str, Any]) -> str:
    """``{"GPU": 1.0, "MEM": 8e9}`` as ``dask worker --resources`` takes it."""
    return ",".join(
        f"{key}={value:g}" if isinstance(value, (int, float)) else f"{key}={value}"
        for key, value in resources.items()
    )


def _uses(command: list[str], placeholder: str) -> bool:
    return any(
        m[1] == placeholder for arg in command for m in PLACEHOLDER.finditer(arg)
    )


def _parse_command(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError:
            raise invalid(name, value, "a command line with balanced quotes",
                          backend_option=True) from None  # fmt: skip
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(arg, str) for arg in value)
    ):
        return list(value)
    raise invalid(
        name, value, "a non-empty list of strings or one string", backend_option=True
    )


def _parse_pattern(value: Any) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except (TypeError, re.error) as e:
        raise invalid(
            "job_id_pattern", value, f"a regular expression ({e})", backend_option=True
        ) from None
