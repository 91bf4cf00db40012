"""A test backend: real ``distributed.Worker`` objects on the scheduler's loop.

Starting a worker this way takes milliseconds instead of the seconds a process
takes, so the scenario tests stay fast; everything else (the scheduler, the
workers, the plugin) is the real thing. Every call is recorded.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from distributed import Worker

from dask_adaptive_plugin import Backend


class InProcessBackend(Backend):
    """Runs workers in the scheduler's process and records each call.

    Parameters
    ----------
    nthreads
        Threads per worker.
    memory_limit
        Memory limit per worker in bytes (0: none).
    fail
        Number of ``scale_up`` calls that raise before calls succeed.
    """

    def __init__(
        self, scheduler: Any, nthreads: int = 1, memory_limit: int = 0, fail: int = 0
    ) -> None:
        super().__init__(scheduler)
        self.nthreads = self.threads_per_worker = nthreads
        self.memory_limit = memory_limit
        self.fail = fail
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.workers: dict[str, Worker] = {}
        self.closed = False
        self._names = (f"inproc-{i}" for i in itertools.count())

    async def scale_up(self, n: int, **kwargs: Any) -> None:
        self.calls.append(("up", n, kwargs))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("scale_up failed on purpose")
        for _ in range(n - len(self.workers)):
            name = next(self._names)
            self.workers[name] = worker = Worker(
                self.scheduler.address,
                name=name,
                nthreads=self.nthreads,
                memory_limit=self.memory_limit,
                resources=kwargs or None,
                validate=True,
            )
            asyncio.ensure_future(worker.start())

    async def scale_down(self, workers: list[str]) -> None:
        self.calls.append(("down", list(workers), {}))
        known = self.scheduler.workers
        names = [str(known[a].name) for a in workers if a in known]
        await asyncio.gather(*(self.workers.pop(n).close() for n in names if n in self.workers))

    async def close(self) -> None:
        self.closed = True
        await asyncio.gather(*(w.close() for w in self.workers.values()))
        self.workers.clear()

    def ups(self) -> list[int]:
        return [n for kind, n, _ in self.calls if kind == "up"]

    def downs(self) -> list[list[str]]:
        return [w for kind, w, _ in self.calls if kind == "down"]
