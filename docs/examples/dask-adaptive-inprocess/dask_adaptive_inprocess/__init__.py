"""An example backend: workers inside the scheduler's process."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

from distributed import Worker

from dask_adaptive_plugin import RUNNING, Backend
from dask_adaptive_plugin.config import parse_count

__all__ = ["InProcessBackend"]


class InProcessBackend(Backend):
    """Run workers as ``distributed.Worker`` objects on the scheduler's loop.

    Parameters
    ----------
    scheduler
        The scheduler the workers join.
    nthreads
        Threads per worker (default 1).
    memory_limit
        Memory limit per worker in bytes, or a size such as ``"2GiB"`` (default:
        none).
    """

    def __init__(
        self, scheduler: Any, nthreads: Any = 1, memory_limit: Any = 0
    ) -> None:
        super().__init__(scheduler)
        self.nthreads = self.threads_per_worker = _parse_nthreads(nthreads)
        self.memory_limit = memory_limit
        self.workers: dict[str, Worker] = {}
        prefix = f"inprocess-{uuid.uuid4().hex[:6]}"
        self._names = (f"{prefix}-{i}" for i in itertools.count())

    @classmethod
    def check_options(cls, **options: Any) -> None:
        super().check_options(**options)
        if "nthreads" in options:
            _parse_nthreads(options["nthreads"])

    async def scale_up(self, n: int, **resources: Any) -> None:
        """Start workers until this backend has ``n``; new ones get ``resources``."""
        new = [self._new_worker(resources) for _ in range(n - len(self.workers))]
        await asyncio.gather(*new)

    async def scale_down(self, workers: list[str]) -> None:
        """Close the workers at these addresses (or forget them if they are gone)."""
        names = [n for n in self.names(workers) if n in self.workers]
        await asyncio.gather(*(self.workers.pop(n).close() for n in names))

    def report(self) -> dict[str, str]:
        """The workers this backend started and has not stopped."""
        return dict.fromkeys(self.workers, RUNNING)

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers.values()))
        self.workers.clear()

    async def _new_worker(self, resources: dict[str, Any]) -> None:
        name = next(self._names)
        self.workers[name] = worker = Worker(
            self.scheduler.address,
            name=name,
            nthreads=self.nthreads,
            memory_limit=self.memory_limit,
            resources=resources or None,
        )
        await worker


def _parse_nthreads(value: Any) -> int:
    return parse_count("nthreads", value, low=1, backend_option=True)  # type: ignore[return-value]
