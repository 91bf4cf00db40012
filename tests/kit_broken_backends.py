"""Backends that break the contract on purpose, each in one way, for the
conformance kit's own tests (``test_kit_self_tests.py``): the kit must fail
them, in the right test, with the right message.

Loaded by the kit as ``--adaptive-backend kit_broken_backends:CLASS``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dask_adaptive_inprocess import InProcessBackend

from dask_adaptive_plugin.backends.local import LocalBackend


class CountsNAsADelta(InProcessBackend):
    """``scale_up(n)`` starts ``n`` more workers, whatever already runs."""

    async def scale_up(self, n: int, **resources: Any) -> None:
        await asyncio.gather(*(self._new_worker(resources) for _ in range(n)))


class StopsTheWrongWorker(InProcessBackend):
    """``scale_down`` stops as many of its *other* workers as it was given."""

    async def scale_down(self, workers: list[str]) -> None:
        named = set(self.names(workers))
        others = [name for name in self.workers if name not in named]
        victims = others[: len(named)]
        await asyncio.gather(*(self.workers.pop(name).close() for name in victims))


class LeaksOnClose(LocalBackend):
    """``close()`` forgets its workers (nannies, processes) instead of stopping them."""

    async def close(self) -> None:
        self.processes.clear()
        self.nannies.clear()
        await self._tasks.cancel()


class HangsInScaleUp(InProcessBackend):
    """``scale_up`` never returns."""

    async def scale_up(self, n: int, **resources: Any) -> None:
        await asyncio.Event().wait()
