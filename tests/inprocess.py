"""The test backend: the example package's in-process workers, recording calls.

Starting a worker inside the scheduler's process takes milliseconds instead of
the seconds a process takes, so the scenario tests stay fast; the scheduler,
the workers and the plugin are all the real thing. Faults can be switched on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dask_adaptive_inprocess


class InProcessBackend(dask_adaptive_inprocess.InProcessBackend):
    """Records each call, and misbehaves on request.

    Parameters
    ----------
    fail
        The first ``fail`` calls to ``scale_up`` raise.
    hang
        The first ``hang`` calls to ``scale_up`` never return.
    ghost
        ``scale_up`` starts nothing: requested workers never arrive.
    die_after
        Seconds after which each new worker closes itself (a crash loop).
    """

    def __init__(
        self,
        scheduler: Any,
        fail: int = 0,
        hang: int = 0,
        ghost: bool = False,
        die_after: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(scheduler, **options)
        self.fail, self.hang, self.ghost, self.die_after = fail, hang, ghost, die_after
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.in_flight = self.most_in_flight = 0
        self.closed = False

    async def scale_up(self, n: int, **kwargs: Any) -> None:
        self.calls.append(("up", n, kwargs))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self._misbehave()
            if not self.ghost:
                await super().scale_up(n, **kwargs)
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
        for worker in self.workers.values():
            asyncio.ensure_future(worker.close())
        self.workers.clear()

    async def scale_down(self, workers: list[str]) -> None:
        self.calls.append(("down", list(workers), {}))
        await super().scale_down(workers)

    async def cancel_pending(self) -> None:
        self.calls.append(("cancel", None, {}))

    async def close(self) -> None:
        self.closed = True
        await super().close()

    def ups(self) -> list[int]:
        return [n for kind, n, _ in self.calls if kind == "up"]
