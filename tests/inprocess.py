"""The test backend: the example package's in-process workers, recording calls.

Starting a worker inside the scheduler's process takes milliseconds instead of
the seconds a process takes, so the scenario tests stay fast; the scheduler,
the workers and the plugin are all the real thing.
"""

from __future__ import annotations

from typing import Any

import dask_adaptive_inprocess


class InProcessBackend(dask_adaptive_inprocess.InProcessBackend):
    """Records each call; the first ``fail`` calls to ``scale_up`` raise."""

    def __init__(self, scheduler: Any, fail: int = 0, **options: Any) -> None:
        super().__init__(scheduler, **options)
        self.fail = fail
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.closed = False

    async def scale_up(self, n: int, **kwargs: Any) -> None:
        self.calls.append(("up", n, kwargs))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("scale_up failed on purpose")
        await super().scale_up(n, **kwargs)

    async def scale_down(self, workers: list[str]) -> None:
        self.calls.append(("down", list(workers), {}))
        await super().scale_down(workers)

    async def close(self) -> None:
        self.closed = True
        await super().close()

    def ups(self) -> list[int]:
        return [n for kind, n, _ in self.calls if kind == "up"]
