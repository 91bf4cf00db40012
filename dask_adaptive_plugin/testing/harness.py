"""A real scheduler, a worker of the kit's own, and the backend under test.

Every call to the backend goes through :meth:`Harness.call`, which bounds it
by ``start_timeout`` and turns a hang or an exception into
:class:`BackendFailed` with a message that says what the backend did.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from distributed import Scheduler, Worker
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_adaptive_plugin.backend import Backend, PoolContext
from dask_adaptive_plugin.testing import processes
from dask_adaptive_plugin.testing.spec import BackendUnderTest, Environment

logger = logging.getLogger(__name__)

#: The pool the kit's backends serve.
POOL = "kit"
#: Seconds between two looks at the scheduler while waiting.
POLL = 0.05
#: A plain-function call that takes longer than this blocked the event loop.
BLOCKING = 1.0


class BackendFailed(Exception):
    """A call to the backend raised, hung or blocked the event loop."""


class Violation(Exception):
    """The backend broke the contract; the message says how."""


class Watcher(SchedulerPlugin):
    """Every worker's name by address, also after it left the scheduler."""

    name = "adaptive-backend-kit"

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.names[worker] = str(scheduler.workers[worker].name)


class Harness:
    """One scenario's scheduler, its own worker and its backends.

    Use :func:`harness` to get one.
    """

    def __init__(
        self,
        spec: BackendUnderTest,
        scheduler: Scheduler,
        environment: Environment,
        own_worker: Worker,
    ) -> None:
        self.spec = spec
        self.scheduler = scheduler
        self.environment = environment
        self.own_worker = own_worker
        self.watcher = Watcher()
        scheduler.add_plugin(self.watcher)
        for address, ws in scheduler.workers.items():
            self.watcher.names[address] = str(ws.name)
        #: Events the backends logged through their pool context.
        self.events: list[dict[str, Any]] = []
        self.backends: list[Any] = []
        #: ids of the backends whose close() has been called.
        self.closed: set[int] = set()

    # -- the backend -------------------------------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        """The spec's options with the environment's over them."""
        return {**self.spec.options, **self.environment.options}

    def make_backend(self) -> Any:
        """``cls(scheduler, **options)`` with the kit's pool context, as the plugin does."""
        started = time.monotonic()
        try:
            backend = self.spec.cls(self.scheduler, **self.options)
        except Exception as e:
            raise BackendFailed(
                f"{self.spec.name}(scheduler, **{self.options!r}) raised "
                f"{_error(e)}: the kit cannot make the backend"
            ) from e
        self._check_not_blocking("__init__", started)
        context = PoolContext(
            POOL, log_event=self.events.append, worker_name=self.watcher.names.get
        )
        with contextlib.suppress(AttributeError):
            backend.pool = context
        self.backends.append(backend)
        return backend

    async def call(self, backend: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        """``backend.method(*args, **kwargs)``, a plain function or a coroutine,
        bounded by ``start_timeout``."""
        call = describe_call(method, *args, **kwargs)
        if method == "close":
            self.closed.add(id(backend))
        timeout = self.spec.start_timeout
        started = time.monotonic()
        try:
            result = getattr(backend, method)(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, timeout)
            else:
                self._check_not_blocking(call, started)
        except asyncio.TimeoutError:  # noqa: UP041 - not TimeoutError before 3.11
            raise BackendFailed(
                f"{call} did not return within {timeout:g} s (start_timeout): "
                "a backend must raise, not hang"
            ) from None
        except BackendFailed:
            raise
        except Exception as e:
            raise BackendFailed(f"{call} raised {_error(e)}") from e
        return result

    async def report(self, backend: Any) -> dict[str, str] | None:
        """``report()``, checked to be ``None`` or worker name -> pending/running."""
        if not hasattr(backend, "report"):
            return None
        result = await self.call(backend, "report")
        if result is None:
            return None
        if not isinstance(result, Mapping) or not all(
            isinstance(k, str) and v in ("pending", "running")
            for k, v in result.items()
        ):
            raise Violation(
                f"report() returned {result!r}: it must be None or map each "
                "worker name to 'pending' or 'running'"
            )
        return dict(result)

    async def close_quietly(self, backend: Any) -> None:
        """Close a backend after a scenario; what goes wrong is only logged."""
        if not hasattr(backend, "close") or id(backend) in self.closed:
            return
        try:
            await self.call(backend, "close")
        except BackendFailed as e:
            logger.warning("adaptive backend kit: cleaning up: %s", e)

    def _check_not_blocking(self, call: str, started: float) -> None:
        took = time.monotonic() - started
        if took > BLOCKING:
            raise BackendFailed(
                f"{call} blocked the event loop for {took:.1f} s: the plugin "
                "runs it on the scheduler's event loop, so anything that waits "
                "must be a coroutine"
            )

    # -- what the scheduler and the machine see ---------------------------------------

    def workers(self) -> dict[str, str]:
        """The connected workers except the kit's own: address -> name."""
        own = self.own_worker.address
        return {
            address: str(ws.name)
            for address, ws in self.scheduler.workers.items()
            if address != own
        }

    def own_worker_connected(self) -> bool:
        return self.own_worker.address in self.scheduler.workers

    def processes(self) -> dict[int, str]:
        """Processes on this machine with the scheduler's address on their command line."""
        return processes.processes_of(self.scheduler.address)

    async def leftovers(self) -> list[str]:
        """What the environment says the system still runs for the backend."""
        if self.environment.leftovers is None:
            return []
        found = self.environment.leftovers()
        if inspect.isawaitable(found):
            found = await found
        return sorted(str(item) for item in found)

    async def until(self, predicate: Callable[[], Any], timeout: float) -> bool:
        """Wait until ``predicate()`` (or its awaited result) is true; whether it was."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)


@contextlib.asynccontextmanager
async def harness(spec: BackendUnderTest) -> AsyncIterator[Harness]:
    """The environment, a scheduler and the kit's own worker, then a clean-up:
    every backend made is closed and processes left behind are killed."""
    own_name = f"kit-own-worker-{uuid.uuid4().hex[:8]}"
    async with (
        spec.environment() as environment,
        Scheduler(host=spec.host, port=0, dashboard=False) as scheduler,
        Worker(scheduler.address, name=own_name, nthreads=1) as own,
    ):
        h = Harness(spec, scheduler, environment, own)
        try:
            yield h
        finally:
            await _clean_up(h)


async def _clean_up(h: Harness) -> None:
    for backend in reversed(h.backends):
        await h.close_quietly(backend)
    left = h.processes()
    if left:
        logger.warning(
            "adaptive backend kit: killing processes left behind: %s",
            processes.describe(left),
        )
        processes.kill_trees(left)


def describe_call(method: str, *args: Any, **kwargs: Any) -> str:
    """``scale_up(2, kit=1)``: a call as it reads in a message."""
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{method}({', '.join(shown)})"


def implements(cls: type, method: str) -> bool:
    """Whether ``cls`` has ``method`` of its own, not :class:`Backend`'s default."""
    found = getattr(cls, method, None)
    return found is not None and found is not getattr(Backend, method, None)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
