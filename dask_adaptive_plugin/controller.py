"""The controller: turns scheduler events into evaluations, and actions into
backend calls, on the scheduler's event loop.

Event-driven: :meth:`Controller.poke` is a flag. The first poke after a quiet
spell schedules one evaluation at once; pokes that arrive before it runs are
coalesced into it. Timers exist only for deadlines: one the policy names (an
idle worker's timeout), a requested worker that becomes overdue, the end of
a back-off or cool-down. There is no polling. Every deadline and duration is
measured on the event loop's monotonic clock.

Each pool runs one action at a time; the decisions themselves are made by
the :class:`~dask_adaptive_plugin.planner.Planner`, which does no I/O.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dask_adaptive_plugin import retire
from dask_adaptive_plugin.background import BackgroundTasks
from dask_adaptive_plugin.metrics import EVALUATION_BUCKETS, Histogram
from dask_adaptive_plugin.planner import Action, Cancel, Forget, Planner
from dask_adaptive_plugin.policy import Down, Up

if TYPE_CHECKING:
    from distributed import Scheduler

    from dask_adaptive_plugin.backend import Backend
    from dask_adaptive_plugin.stats import ClusterStats

logger = logging.getLogger(__name__)

#: Evaluations are at least this far apart, so that a scheduler busy with
#: thousands of transitions a second pays for 50 evaluations at most. The first
#: event after a quiet spell is still evaluated at once.
MIN_GAP = 0.02
#: Seconds an action in progress gets to finish when the plugin stops.
CLOSE_GRACE = 10.0


async def call_backend(
    method: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any
) -> Any:
    """Call a backend method (a plain function or a coroutine), within ``timeout``."""
    result = method(*args, **kwargs)
    if inspect.isawaitable(result):
        try:
            result = await asyncio.wait_for(result, timeout)
        except asyncio.TimeoutError:
            name = getattr(method, "__name__", "backend call")
            raise TimeoutError(f"{name} did not return within {timeout:g}s") from None
    return result


class Controller:
    """Connects statistics, planner and backends for one scheduler.

    Parameters
    ----------
    scheduler
        The scheduler whose workers are scaled.
    stats
        Its incremental statistics (demand).
    planner
        Decides, and keeps the ledger (supply).
    backends
        Pool name -> its backend.
    record
        Called with each record for the plugin's log and events.
    retire_timeout
        Seconds a retirement may take before it is aborted and the workers kept.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        stats: ClusterStats,
        planner: Planner,
        backends: Mapping[str, Backend],
        record: Callable[[dict[str, Any]], None],
        retire_timeout: float = 60.0,
    ) -> None:
        self.scheduler = scheduler
        self.stats = stats
        self.planner = planner
        self.ledger = planner.ledger
        self.backends = dict(backends)
        self.record = record
        self.retire_timeout = retire_timeout
        self.loop = asyncio.get_running_loop()
        self.evaluations = 0
        #: How long each evaluation took, for metrics.
        self.evaluation_seconds = Histogram(EVALUATION_BUCKETS)
        self.closed = False
        self.last_evaluation = -math.inf
        #: After a failed evaluation, none before this.
        self.not_before = -math.inf
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: The running action of each pool (``None``: workers no pool claims).
        self._actions: dict[str | None, asyncio.Task[bool]] = {}
        self._pokes = 0
        self._tasks = BackgroundTasks("adaptive controller")

    def now(self) -> float:
        return self.loop.time()

    # -- events --------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed: evaluate soon. O(1); safe to call from any hook."""
        self._pokes += 1
        if self._soon is not None or self.closed:
            return
        delay = max(self.last_evaluation + MIN_GAP, self.not_before) - self.now()
        if delay <= 0:
            self._soon = self.loop.call_soon(self._evaluate)
        else:
            self._soon = self.loop.call_later(delay, self._evaluate)

    def worker_arrived(self, address: str) -> None:
        ws = self.scheduler.workers.get(address)
        if ws is None:
            return
        self.planner.arrived(
            address,
            str(ws.name),
            ws.resources,
            ws.nthreads,
            self.now(),
            busy=[p for p in self._actions if p is not None],
        )

    def worker_left(self, address: str) -> None:
        self.planner.left(address, self.now())

    # -- scheduling ----------------------------------------------------------------

    def _set_timer(self, when: float | None) -> None:
        """The one timer: evaluate at ``when`` even if no event comes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None and not self.closed:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.poke()

    def _evaluate(self) -> None:
        self._soon = None
        if self.closed:
            return
        now = self.last_evaluation = self.now()
        self.evaluations += 1
        started = time.perf_counter()
        try:
            evaluation = self.decide(now)
            self.evaluation_seconds.observe(time.perf_counter() - started)
        except Exception as e:
            self.not_before = now + self.planner.failed(None, "decide", e, now)
            self._set_timer(self.not_before)
            return
        for action in evaluation.actions:
            self._start(action)
        deadlines = [evaluation.deadline, self.stats.next_reseed()]
        upcoming = [d for d in deadlines if d is not None]
        self._set_timer(min(upcoming) if upcoming else None)

    def decide(self, now: float) -> Any:
        """One evaluation of the planner on the current statistics."""
        self.stats.reseed_if_due()
        self.stats.recheck_some_busy()
        return self.planner.evaluate(self.stats.snapshot(), now, busy=self._actions)

    # -- actions ---------------------------------------------------------------------

    def _start(self, action: Action) -> None:
        task = self._tasks.spawn(self._run(action), f"{_describe(action)}")
        self._actions[action.pool] = task
        pokes = self._pokes
        task.add_done_callback(lambda t: self._action_done(action, t, pokes))

    def _action_done(
        self, action: Action, task: asyncio.Task[bool], pokes: int
    ) -> None:
        if self._actions.get(action.pool) is task:
            del self._actions[action.pool]
        if task.cancelled() or self.closed:
            return
        changed = task.exception() is None and task.result()
        # After a change (a failure is one: its back-off sets a deadline),
        # look again at once; after an action that changed nothing, only if
        # something else happened meanwhile, so that nothing can spin.
        if changed or self._pokes != pokes:
            self.poke()

    async def _run(self, action: Action) -> bool:
        """Run one action; whether it changed anything."""
        backend = self.backends.get(action.pool) if action.pool is not None else None
        requested = self.planner.starting(action, self.now())
        error, changed = None, False
        try:
            changed = await self._call(action, backend)
        except Exception as e:
            error = e
        report = await self._report(action.pool, backend)
        self.planner.finished(action, self.now(), requested, report, error)
        # a failure changed something too: a back-off whose end is a deadline
        return changed or error is not None

    async def _call(self, action: Action, backend: Backend | None) -> bool:
        timeout = self._timeout(action.pool)
        if isinstance(action, Up):
            assert backend is not None
            await call_backend(
                backend.scale_up, action.n, timeout=timeout, **action.kwargs
            )
            return True
        if isinstance(action, Down):
            return await self._retire(action, backend)
        if isinstance(action, Cancel):
            cancel = getattr(backend, "cancel_pending", None)
            if cancel is not None:
                await call_backend(cancel, timeout=timeout)
            return True
        if isinstance(action, Forget):
            if action.workers and backend is not None:
                await call_backend(
                    backend.scale_down, list(action.workers), timeout=timeout
                )
            return True
        raise TypeError(f"unknown action {action!r}")

    async def refresh(self) -> None:
        """Reconcile the ledger with every backend that reports, now."""
        for name, backend in self.backends.items():
            if name in self._actions:
                continue  # its action reconciles when it ends
            report = await self._report(name, backend)
            if report is not None:
                self.planner.reconcile(name, report, self.now())

    async def _report(
        self, pool: str | None, backend: Backend | None
    ) -> Mapping[str, str] | None:
        """What the backend says it launched; ``None`` if it cannot tell."""
        report = getattr(backend, "report", None)
        if report is None or pool is None:
            return None
        try:
            result = await call_backend(report, timeout=self._timeout(pool))
        except Exception as e:
            logger.warning("adaptive: pool %s: report() failed: %r", pool, e)
            return None
        if result is not None and not isinstance(result, Mapping):
            logger.warning(
                "adaptive: pool %s: report() returned %r, not a mapping", pool, result
            )
            return None
        return result

    def _timeout(self, pool: str | None) -> float:
        p = self.planner.by_name.get(pool) if pool is not None else None
        return p.pool.start_timeout if p is not None else 60.0

    # -- retiring ----------------------------------------------------------------------

    async def _retire(self, down: Down, backend: Backend | None) -> bool:
        """Move the workers' data away, then have the backend stop them."""
        if down.pool is None:
            # workers no pool claimed: perhaps a backend adopted them since
            await self.refresh()
            if any(self.ledger.pool_of(a) is not None for a in down.workers):
                return True  # decide again, now that they have a pool
        eligible = retire.retirable(self.scheduler, down.workers)
        workers = self.planner.retiring(
            down, eligible, retire.whole_units(backend, eligible), self.now()
        )
        if not workers:
            return False
        stimulus_id = f"adaptive-retire-{time.time()}"
        try:
            retired, why_kept = await retire.move_data_away(
                self.scheduler, workers, self.retire_timeout, stimulus_id
            )
        except BaseException:
            self.ledger.kept(workers, until=self.now())  # the planner holds them
            raise
        self.planner.retired(down, workers, retired, why_kept, self.now())
        if not retired:
            return False
        try:
            if backend is not None:
                await call_backend(
                    backend.scale_down, retired, timeout=self._timeout(down.pool)
                )
        finally:
            await retire.remove_from_scheduler(self.scheduler, retired, stimulus_id)
        return True

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Begin acting: evaluate at once (a minimum is honoured immediately)."""
        self.poke()

    async def close(self) -> None:
        """Stop acting: cancel timers; let actions in progress finish.

        Cancelling a backend call half-way could leave a worker half-stopped,
        so they get ``CLOSE_GRACE`` seconds before they are cancelled.
        """
        self.closed = True
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        actions = list(self._actions.values())
        if actions:
            await asyncio.wait(actions, timeout=CLOSE_GRACE)
        await self._tasks.cancel()


def _describe(action: Action) -> str:
    return f"{type(action).__name__.lower()} of pool {action.pool}"
