"""Retiring workers without losing data or work.

A worker is retired through the scheduler first (``retire_workers`` copies the
data only it holds to other workers) and only then stopped by its backend.
Never a worker running tasks, a long-running (seceded) one, one that another
plugin vetoes, or part of a batch job whose other workers must stay.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from distributed.core import Status

from dask_adaptive_plugin import _compat

if TYPE_CHECKING:
    from distributed import Scheduler

    from dask_adaptive_plugin.backend import Backend


def retirable(
    scheduler: Scheduler, candidates: tuple[str, ...] | list[str]
) -> list[str]:
    """Of ``candidates``, those that may be retired right now.

    Never a worker running or holding tasks to run, a long-running (seceded)
    worker, one not in the running state, or one that another plugin vetoes
    through ``valid_workers_downscaling`` (as distributed's P2P shuffle does
    for its participants).
    """
    workers = scheduler.workers
    wss = [
        ws
        for address in candidates
        if (ws := workers.get(address)) is not None
        and ws.status == Status.running
        and not ws.processing
        and not ws.long_running
    ]
    for plugin in list(scheduler.plugins.values()):
        wss = plugin.valid_workers_downscaling(scheduler, wss)
    return [ws.address for ws in wss]


def whole_units(backend: Backend | None, addresses: list[str]) -> list[str]:
    """Keep only workers whose whole unit (a batch job) can go."""
    together = getattr(backend, "stopped_together", None)
    if together is None:
        return addresses
    allowed = set(addresses)
    return [a for a in addresses if allowed.issuperset(together(a))]


async def move_data_away(
    scheduler: Scheduler, workers: list[str], timeout: float, stimulus_id: str
) -> tuple[list[str], str]:
    """``Scheduler.retire_workers``, bounded by ``timeout``.

    Returns the workers whose data is safe elsewhere, and why the others are
    kept. distributed's retirement has no timeout of its own; one that hangs
    is cancelled and the workers return to the running state.
    """
    try:
        retired = await asyncio.wait_for(
            scheduler.retire_workers(
                workers=workers,
                close_workers=False,
                remove=False,
                stimulus_id=stimulus_id,
            ),
            timeout,
        )
    except asyncio.TimeoutError:
        _compat.undo_retirement(scheduler, workers, stimulus_id)
        return [], (
            f"retirement did not finish within {timeout:g}s; "
            "the workers keep their data and their work"
        )
    return list(retired), "retirement aborted: their data could not be moved"


async def remove_from_scheduler(
    scheduler: Scheduler, addresses: list[str], stimulus_id: str
) -> None:
    """Workers the backend stopped but the scheduler still lists: close them."""
    for address in addresses:
        if address in scheduler.workers:
            await scheduler.remove_worker(
                address, close=True, expected=True, stimulus_id=stimulus_id
            )
