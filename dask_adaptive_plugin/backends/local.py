"""The ``local`` backend: real worker processes on this machine.

Each worker's nanny runs in the scheduler's process, as ``LocalCluster``'s run
in the client's: the nanny spawns the worker process, one interpreter start
(about half a second) where a ``dask worker`` process with its own nanny
takes two. With ``worker_args`` (further ``dask worker`` arguments), each
worker is a ``dask worker`` process instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed import Nanny
from distributed.core import Status

from dask_adaptive_plugin.backend import RUNNING, Backend
from dask_adaptive_plugin.backends.workers import (
    WorkerOptions,
    python_worker,
    worker_names,
)
from dask_adaptive_plugin.background import BackgroundTasks

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger(__name__)

#: Seconds a worker process gets to exit after SIGTERM before SIGKILL.
STOP_GRACE = 10.0
#: A nanny in these states has ended, and is forgotten.
ENDED = (Status.closed, Status.failed)
#: A nanny in these states is ending (its worker retired, say): its worker is
#: no longer reported, and :meth:`LocalBackend.close` still waits for it.
ENDING = (Status.closing, Status.closing_gracefully)


def _die_with_parent_function() -> Callable[[], None] | None:
    """A function for the forked child: ask Linux to SIGTERM it when the
    scheduler process dies.

    ``prctl`` is looked up here, in the parent, once: between ``fork`` and
    ``exec`` the child of a multi-threaded process may only do what is safe
    after ``fork``, and loading a library is not (it takes locks another
    thread may have held at the fork).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - an unusual libc
        return None
    PR_SET_PDEATHSIG = 1

    def die_with_parent() -> None:  # pragma: no cover - runs in the child
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return die_with_parent


_DIE_WITH_PARENT = _die_with_parent_function()


class LocalBackend(Backend):
    """Start and stop worker processes on the scheduler's machine.

    Parameters
    ----------
    scheduler
        The scheduler the workers connect to.
    nthreads
        Threads per worker (default 1).
    memory_limit
        Memory limit per worker: bytes, a string like ``"2GiB"``, or ``"auto"``
        (the machine's memory shared by the CPU count).
    worker_args
        Further ``dask worker`` arguments, as a list or one string
        (``"--no-nanny --resources GPU=1"``). With them, each worker is a
        ``dask worker`` process; without, a :class:`~distributed.Nanny` in
        this process starts it.
    death_timeout
        A worker that loses its scheduler for this long exits by itself.

    Workers are named ``local-<id>-<n>``. They are stopped by :meth:`close`
    and exit after ``death_timeout`` if the scheduler vanishes. A worker
    process whose nanny runs here ends with this process (distributed's
    worker processes watch their parent); a ``dask worker`` process is asked
    to die with the scheduler process (Linux ``PR_SET_PDEATHSIG``).
    """

    #: One worker per core unless a maximum is given: worker processes of
    #: sleeping or I/O-bound tasks may well outnumber the cores.
    default_maximum = os.cpu_count() or 1

    def __init__(
        self,
        scheduler: Scheduler,
        nthreads: Any = 1,
        memory_limit: Any = "auto",
        worker_args: Any = (),
        death_timeout: Any = "60s",
    ) -> None:
        super().__init__(scheduler)
        self.worker = WorkerOptions.parse(
            nthreads, memory_limit, worker_args, death_timeout
        )
        self.threads_per_worker = self.worker.nthreads
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.output: dict[str, deque[str]] = {}
        #: The workers whose nanny runs in this process (no ``worker_args``).
        self.nannies: dict[str, Nanny] = {}
        self._tasks = BackgroundTasks("local backend")
        self._names = worker_names("local")

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Check option names and values before the scheduler starts."""
        super().check_options(**options)
        cls(None, **options)  # type: ignore[arg-type]

    async def scale_up(self, n: int, **resources: Any) -> None:
        """Start workers until ``n`` are running or starting."""
        for _ in range(n - len(self.report())):
            name = next(self._names)
            if self.worker.worker_args:
                self.processes[name] = await self._spawn(name, resources)
            else:
                self.nannies[name] = self._start_nanny(name, resources)

    async def scale_down(self, workers: list[str]) -> None:
        """Stop the processes behind these worker addresses."""
        await asyncio.gather(*(self._stop(name) for name in self.names(workers)))

    def report(self) -> dict[str, str]:
        """The workers whose process or nanny has not ended."""
        self._forget_exited()
        nannies = [n for n, nanny in self.nannies.items() if nanny.status not in ENDING]
        return dict.fromkeys([*self.processes, *nannies], RUNNING)

    async def cancel_pending(self) -> None:
        """Stop the workers that never connected."""
        connected = {str(ws.name) for ws in self.scheduler.workers.values()}
        late = [n for n in [*self.processes, *self.nannies] if n not in connected]
        await asyncio.gather(*(self._stop(name) for name in late))

    async def close(self) -> None:
        names = [*self.processes, *self.nannies]
        await asyncio.gather(*(self._stop(name) for name in names))
        await self._tasks.cancel()

    def _start_nanny(self, name: str, resources: dict[str, Any]) -> Nanny:
        """A nanny in this process, starting in the background: ``scale_up``
        returns at once, as it does after spawning a ``dask worker``."""
        nanny = Nanny(
            self.scheduler.address,
            name=name,
            nthreads=self.worker.nthreads,
            memory_limit=self.worker.memory_limit,
            resources=resources or None,
            death_timeout=self.worker.death_timeout,
            dashboard_address=":0",
        )
        self._tasks.spawn(self._run_nanny(name, nanny), f"starting worker {name}")
        return nanny

    async def _run_nanny(self, name: str, nanny: Nanny) -> None:
        try:
            await nanny
        except Exception as e:
            if self.nannies.get(name) is nanny:  # not stopped meanwhile
                logger.warning("local backend: worker %s did not start: %r", name, e)
                del self.nannies[name]
            await nanny.close()

    def command(self, name: str, resources: dict[str, Any]) -> list[str]:
        """The ``dask worker`` command line for one worker."""
        program = python_worker(sys.executable)
        return self.worker.command(program, self.scheduler.address, name, resources)

    async def _spawn(
        self, name: str, resources: dict[str, Any]
    ) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *self.command(name, resources),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_DIE_WITH_PARENT,
        )
        self.output[name] = deque(maxlen=20)
        self._tasks.spawn(self._drain(name, proc), f"reading worker {name}'s output")
        logger.debug("local backend: started %s (pid %d)", name, proc.pid)
        return proc

    async def _drain(self, name: str, proc: asyncio.subprocess.Process) -> None:
        """Keep the last lines a worker wrote, so that a crash can be explained."""
        assert proc.stderr is not None
        lines = self.output[name]
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            logger.debug("%s: %s", name, line)
        code = await proc.wait()
        if name in self.processes and code != 0:
            logger.warning(
                "local backend: worker %s exited with %d:\n%s",
                name,
                code,
                "\n".join(lines),
            )

    def _forget_exited(self) -> None:
        for name, proc in list(self.processes.items()):
            if _exited(proc):
                del self.processes[name]
                self.output.pop(name, None)
        for name, nanny in list(self.nannies.items()):
            if nanny.status in ENDED:
                del self.nannies[name]

    async def _stop(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        self.output.pop(name, None)
        if proc is not None:
            await _terminate(proc)
        nanny = self.nannies.pop(name, None)
        if nanny is not None:
            await nanny.close(timeout=STOP_GRACE)


def _exited(proc: asyncio.subprocess.Process) -> bool:
    """Whether the process has ended.

    ``returncode`` alone can lag: asyncio's child watcher reaps a killed
    process at once but may report its status to the loop seconds later, and
    in that time the process must not count as a worker still starting.
    """
    if proc.returncode is not None:
        return True
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, and SIGKILL if the process is still there after ``STOP_GRACE``."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
