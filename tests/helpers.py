"""What several test modules share: a scheduler with the plugin, a watcher."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

from distributed import Client, Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_adaptive_plugin import AdaptivePlugin
from inprocess import InProcessBackend


class Watcher(SchedulerPlugin):
    """Records the number of workers at every change, and every computation."""

    name = "watcher"

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.computed: Counter = Counter()

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.sizes.append(len(scheduler.workers))

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self.sizes.append(len(scheduler.workers))

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if start == "processing" and finish == "memory":
            self.computed[key] += 1


@asynccontextmanager
async def adaptive_cluster(**kwargs: Any):
    """A scheduler with the plugin (added before start), a watcher and a client."""
    kwargs.setdefault("backend", InProcessBackend)
    plugin = AdaptivePlugin(**kwargs)
    watcher = Watcher()
    async with Scheduler(
        dashboard_address=":0", host="127.0.0.1", plugins=[plugin, watcher]
    ) as s:
        async with Client(s.address, asynchronous=True) as c:
            yield s, c, plugin, watcher


async def until(predicate, timeout: float = 20, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(interval)


def statuses(plugin: AdaptivePlugin) -> list[str]:
    return [entry["status"] for _, entry in plugin.log]


