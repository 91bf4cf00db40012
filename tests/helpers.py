"""What several test modules share: a scheduler with the plugin, a watcher."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

from distributed import Client, Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin
from inprocess import InProcessBackend

from dask_adaptive_plugin import AdaptivePlugin


class Watcher(SchedulerPlugin):
    """Records the number of workers at every change, and every computation."""

    name = "watcher"

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.added = 0
        self.computed: Counter = Counter()

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.added += 1
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


@asynccontextmanager
async def scheduler_with(backend: str, **plugin_options: Any):
    """A scheduler (no dashboard) with the plugin, once its backend is made."""
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
        plugin = AdaptivePlugin(backend=backend, **plugin_options)
        scheduler.add_plugin(plugin)
        await until(lambda: plugin.backend is not None, what="the plugin to start")
        yield scheduler, plugin


async def until(
    predicate, timeout: float = 20, interval: float = 0.01, what: str = ""
) -> None:
    """Wait until ``predicate()`` is true (or, for a coroutine, its result is),
    at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await _result(predicate()):
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {what or predicate}"
        await asyncio.sleep(interval)


async def _result(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


def statuses(plugin: AdaptivePlugin) -> list[str]:
    return [entry["status"] for _, entry in plugin.log]


def errors(plugin: AdaptivePlugin, action: str) -> list[dict[str, Any]]:
    """The plugin's ``error`` records for one action."""
    return [
        e for _, e in plugin.log if e["status"] == "error" and e.get("action") == action
    ]


def events(scheduler: Scheduler, status: str | None = None) -> list[dict[str, Any]]:
    """The plugin's events on the scheduler, of one status or all."""
    return [
        msg
        for _, msg in scheduler.get_events("adaptive")
        if status is None or msg.get("status") == status
    ]


def assert_no_secret(scheduler: Scheduler, caplog: Any, secret: str, seen: str) -> None:
    """``secret`` is in no event and no log record, which do mention ``seen``."""
    text = repr(scheduler.get_events("adaptive")) + caplog.text
    assert secret not in text
    assert seen in text.lower()  # the check looked at something


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs here (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
