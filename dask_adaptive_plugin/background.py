"""Background tasks that are kept, bounded and never fail silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class BackgroundTasks:
    """The background tasks of one owner (the plugin, a backend).

    asyncio keeps only a weak reference to a task, and an exception in a task
    nobody awaits is reported, if at all, as "Task exception was never
    retrieved" when it is garbage collected. Every task started here is kept
    until it ends, its exception is logged with what it was doing (and passed
    to ``on_error``), and :meth:`cancel` ends them all within a bound.

    Parameters
    ----------
    owner
        Named in log messages ("ssh backend").
    on_error
        Called with the task's description and its exception, for example to
        log an event on topic ``"adaptive"``.
    """

    def __init__(
        self,
        owner: str,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.owner = owner
        self.on_error = on_error
        self.tasks: dict[asyncio.Task[Any], str] = {}

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; ``what`` says what it does."""
        task = asyncio.ensure_future(coro)
        self.tasks[task] = what
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        what = self.tasks.pop(task, "a background task")
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        logger.error("%s: %s failed: %r", self.owner, what, error, exc_info=error)
        if self.on_error is not None:
            try:
                self.on_error(what, error)  # type: ignore[arg-type]
            except Exception:
                logger.exception("%s: reporting a failure failed", self.owner)

    async def cancel(
        self, timeout: float = 5.0, keep: asyncio.Task[Any] | None = None
    ) -> None:
        """Cancel every task (but ``keep``, the caller's own) and wait up to
        ``timeout`` seconds for them to end."""
        tasks = [task for task in self.tasks if task is not keep]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
