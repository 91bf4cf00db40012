"""The only module that touches distributed's internals.

Each use says why no public API serves, and was checked against distributed
2026.8.0. ``tests/test_compat.py`` fails when distributed changes one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from distributed import Scheduler
from distributed.core import Status

if TYPE_CHECKING:
    from distributed.scheduler import TaskPrefix

#: The distributed release these internals were checked against.
CHECKED_AGAINST = "2026.8.0"


def prefix_duration(scheduler: Scheduler, prefix: TaskPrefix) -> float:
    """How long one task of ``prefix`` is expected to take, in seconds.

    The scheduler's own estimate (the measured average, else
    ``distributed.scheduler.default-task-durations``, else the unknown-task
    duration), which it uses for its occupancy. It is only offered as the
    private ``Scheduler._get_prefix_duration``; re-implementing it would drift
    from what the scheduler believes.
    """
    return scheduler._get_prefix_duration(prefix)


def when_added(plugin: object, start: Callable[[Scheduler], None]) -> None:
    """Call ``start(scheduler)`` soon if ``plugin`` was just added to a running
    scheduler with ``Scheduler.add_plugin``.

    ``add_plugin`` reads the plugin's ``name`` and stores it, but neither calls
    ``start`` nor tells the plugin which scheduler it joined. So the plugin calls
    this when its name is read: on the next turn of the event loop, the running
    scheduler that now holds it under that name is found among
    ``Scheduler._instances`` (private: there is no public registry of the
    schedulers of a process). A scheduler that is not running yet starts the
    plugin itself; ``register_scheduler_plugin`` has started it already.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no event loop: no running scheduler to have been added to
    loop.call_soon(_start_if_added, plugin, start)


def _start_if_added(plugin: object, start: Callable[[Scheduler], None]) -> None:
    for scheduler in list(Scheduler._instances):
        if scheduler.status == Status.running and any(
            p is plugin for p in scheduler.plugins.values()
        ):
            start(scheduler)


def undo_retirement(scheduler: Scheduler, workers: list[str], stimulus_id: str) -> None:
    """Return workers whose retirement was given up on to the running state.

    ``Scheduler.retire_workers`` has no timeout and no way to abort it from
    outside, so this does what it does itself when a retirement fails: drop
    the retirement policies it gave the Active Memory Manager (its private
    ``policies`` set of ``RetireWorker`` objects, each with an ``address``),
    and change the workers' status back on the scheduler and on the workers.
    """
    amm = scheduler.extensions.get("amm")
    for policy in list(getattr(amm, "policies", ())):
        if getattr(policy, "address", None) in workers:
            amm.policies.discard(policy)  # type: ignore[union-attr]
    for address in workers:
        ws = scheduler.workers.get(address)
        if ws is None or ws.status != Status.closing_gracefully:
            continue
        scheduler.handle_worker_status_change(Status.running, ws, stimulus_id)
        scheduler.worker_send(
            address,
            {
                "op": "worker-status-change",
                "status": Status.running.name,
                "stimulus_id": stimulus_id,
            },
        )
