"""The test backend: the example package's in-process workers, recording calls.

Starting a worker inside the scheduler's process takes milliseconds instead of
the seconds a process takes, so the scenario tests stay fast; the scheduler,
the workers and the plugin are all the real thing. Faults can be switched on.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import dask_adaptive_inprocess

from dask_adaptive_plugin import PENDING


class InProcessBackend(dask_adaptive_inprocess.InProcessBackend):
    """Records each call, and misbehaves on request.

    Parameters
    ----------
    fail
        The first ``fail`` calls to ``scale_up`` raise.
    hang
        The first ``hang`` calls to ``scale_up`` never return.
    ghost
        ``scale_up`` starts nothing: requested workers wait for ever, like
        jobs in a queue that never runs them (``hold`` without end).
    die_after
        Seconds after which each new worker closes itself (a crash loop).
    keep_dead
        Workers that died stay counted, as a backend does that learns late
        that its process ended (until ``scale_down`` names them).
    hold
        The first ``hold`` workers asked for wait, like batch jobs in a full
        queue: counted as on their way, never started; ``scale_down``
        cancels them, as the job-queue backends cancel waiting jobs.
    ignore_resources
        New workers get no resources, whatever ``scale_up`` asks for.
    maximum
        The most workers this backend says it can run, set in ``__init__``.
    fail_init
        ``__init__`` raises.
    hang_close
        ``close`` never returns.
    """

    def __init__(
        self,
        scheduler: Any,
        fail: int = 0,
        hang: int = 0,
        ghost: bool = False,
        die_after: float | None = None,
        keep_dead: bool = False,
        hold: int = 0,
        ignore_resources: bool = False,
        maximum: int | None = None,
        fail_init: bool = False,
        hang_close: bool = False,
        **options: Any,
    ) -> None:
        if fail_init:
            raise RuntimeError("the backend could not start, on purpose")
        super().__init__(scheduler, **options)
        self.fail, self.hang, self.ghost, self.die_after = fail, hang, ghost, die_after
        self.keep_dead, self.held = keep_dead, 0
        self.hold = math.inf if ghost else hold
        self.ignore_resources, self.hang_close = ignore_resources, hang_close
        if maximum is not None:
            self.maximum = maximum
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.in_flight = self.most_in_flight = 0
        self.closed = False

    async def scale_up(self, n: int, **kwargs: Any) -> None:
        self.calls.append(("up", n, kwargs))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self._misbehave()
            missing = n - len(self.workers) - self.held
            holding = max(min(missing, self.hold), 0)
            self.hold -= holding
            self.held += int(holding)
            resources = {} if self.ignore_resources else kwargs
            await super().scale_up(n - self.held, **resources)
            if self.die_after is not None:
                asyncio.get_running_loop().call_later(self.die_after, self._kill_all)
        finally:
            self.in_flight -= 1

    async def _misbehave(self) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("scale_up failed on purpose")
        if self.hang:
            self.hang -= 1
            await asyncio.Event().wait()

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            asyncio.ensure_future(worker.close())
        if not self.keep_dead:
            self.workers.clear()

    async def scale_down(self, workers: list[str]) -> None:
        self.calls.append(("down", list(workers), {}))
        self.held = 0
        await super().scale_down(workers)

    async def cancel_pending(self) -> None:
        self.calls.append(("cancel", None, {}))
        self.held = 0

    async def close(self) -> None:
        self.closed = True
        if self.hang_close:
            await asyncio.Event().wait()
        await super().close()

    def report(self) -> dict[str, str]:
        """Its workers, and the held requests as waiting ones."""
        held = {f"held-{id(self)}-{i}": PENDING for i in range(self.held)}
        return {**super().report(), **held}

    def ups(self) -> list[int]:
        return [n for kind, n, _ in self.calls if kind == "up"]
