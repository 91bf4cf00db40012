"""The controller: turns events into decisions and decisions into backend calls.

Event-driven: :meth:`Controller.poke` is a flag. The first poke after a quiet
spell schedules one evaluation at once on the event loop; pokes that arrive
before it runs are coalesced into it. Timers exist only for deadlines: one the
policy names (an idle worker's timeout), a requested worker that is overdue,
or the end of a back-off after a failure. There is no polling.

One backend action runs at a time; pokes during an action lead to one
evaluation after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from time import time
from typing import TYPE_CHECKING, Any

from distributed.core import Status

from dask_adaptive_plugin.policy import Decision, Policy
from dask_adaptive_plugin.stats import ClusterStats

if TYPE_CHECKING:
    from distributed import Scheduler

    from dask_adaptive_plugin.backend import Backend

logger = logging.getLogger(__name__)

#: Evaluations are at least this far apart, so that a scheduler busy with
#: thousands of transitions a second pays for 50 evaluations at most. The first
#: event after a quiet spell is still evaluated at once.
MIN_GAP = 0.02
#: Seconds an action in progress gets to finish when the plugin stops.
CLOSE_GRACE = 10.0
BACKOFF_START = 1.0
BACKOFF_CAP = 60.0


#: A worker that leaves on its own this soon after it connected has crashed.
CRASH_WINDOW = 30.0
#: Consecutive crashes after which no more workers are asked for until new
#: work is submitted.
CRASH_LIMIT = 5


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
    """Connects statistics, policy and backend for one scheduler.

    Parameters
    ----------
    scheduler
        The scheduler whose workers are scaled.
    stats
        Its incremental statistics.
    policy
        Decides what to do.
    backend
        Starts and stops workers.
    record
        Called with each decision's record (a dict with ``status`` and
        ``reason``); the plugin keeps it in its log and as an event.
    start_timeout
        Seconds after which workers requested but not connected are given up
        on; it also bounds every backend call.
    retire_timeout
        Seconds a retirement may take before it is aborted and the workers kept.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        stats: ClusterStats,
        policy: Policy,
        backend: Backend,
        record: Callable[[dict[str, Any]], None],
        start_timeout: float,
        retire_timeout: float = 60.0,
    ) -> None:
        self.scheduler = scheduler
        self.stats = stats
        self.policy = policy
        self.backend = backend
        self.record = record
        self.start_timeout = start_timeout
        self.retire_timeout = retire_timeout
        self.loop = asyncio.get_running_loop()
        #: Workers requested from the backend that have not connected yet.
        self.pending = 0
        self.pending_since = 0.0
        self.failures = 0
        self.not_before = 0.0
        #: When each worker connected, to tell a crash from a long life.
        self.arrivals: dict[str, float] = {}
        self.retiring: set[str] = set()
        self.crashes = 0
        self.last_evaluation = -math.inf
        self.evaluations = 0
        self.closed = False
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._action: asyncio.Task | None = None
        self._poked_during_action = False

    # -- events --------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed: evaluate soon. O(1); safe to call from any hook."""
        if self._soon is not None or self.closed:
            return
        if self._action is not None:
            self._poked_during_action = True
            return
        delay = max(self.last_evaluation + MIN_GAP, self.not_before) - time()
        if delay <= 0:
            self._soon = self.loop.call_soon(self._evaluate)
        else:
            self._soon = self.loop.call_later(delay, self._evaluate)

    def worker_arrived(self, address: str, now: float) -> None:
        self.arrivals[address] = now
        if self.pending:
            self.pending -= 1
            # Only an arrival proves that asking for workers works: a scale_up
            # call that returns is not enough to end a back-off.
            self._succeeded()

    def worker_left(self, address: str, now: float) -> None:
        """A worker left: count it as a crash if it left early and on its own."""
        arrived = self.arrivals.pop(address, None)
        if address in self.retiring or arrived is None:
            return
        lifetime = now - arrived
        if lifetime > CRASH_WINDOW:
            self.crashes = 0
            return
        self.crashes += 1
        self._failed(
            "worker",
            RuntimeError(f"{address} exited {lifetime:.1f}s after it connected"),
            now,
        )

    def new_work(self) -> None:
        """A graph arrived: a user wants work done, so crashes are forgiven."""
        if self.crashes >= CRASH_LIMIT:
            self.crashes = 0
            self._succeeded()

    # -- scheduling ----------------------------------------------------------------

    def _set_timer(self, when: float | None) -> None:
        """The one timer: evaluate at ``when`` even if no event comes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None and not self.closed:
            self._timer = self.loop.call_later(max(0.0, when - time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.poke()

    def _evaluate(self) -> None:
        self._soon = None
        if self.closed or self._action is not None:
            return
        now = time()
        if self.pending and now > self.pending_since + self.start_timeout:
            self._start(self._give_up_pending())
            return
        try:
            decision = self.decide(now)
        except Exception as e:
            self._failed("decide", e, now)
            return
        if decision.status == "up" and self.crashes >= CRASH_LIMIT:
            return  # until new work arrives: see new_work
        if decision.status == "up":
            self._start(self._scale_up(decision))
        elif decision.status == "down":
            self._start(self._scale_down(decision))
        self._set_timer(self._next_deadline(decision))

    def decide(self, now: float) -> Decision:
        """One evaluation of the policy on the current statistics."""
        self.last_evaluation = now
        self.evaluations += 1
        stats = self.stats
        if stats.needs_reseed:
            stats.reseed(now)
        stats.recheck_some_busy(now)
        snapshot = stats.snapshot(
            pending=self.pending,
            threads_per_worker=getattr(self.backend, "threads_per_worker", 1) or 1,
        )
        return self.policy.decide(snapshot, now)

    def _next_deadline(self, decision: Decision) -> float | None:
        deadlines = [decision.deadline]
        if self.pending:
            deadlines.append(self.pending_since + self.start_timeout)
        upcoming = [d for d in deadlines if d is not None]
        return min(upcoming) if upcoming else None

    # -- actions ---------------------------------------------------------------------

    def _start(self, action: Awaitable[bool]) -> None:
        self._action = asyncio.ensure_future(action)
        self._action.add_done_callback(self._action_done)

    def _action_done(self, task: asyncio.Task) -> None:
        self._action = None
        if task.cancelled() or self.closed:
            return
        error = task.exception()
        if error is not None:
            # a failure the action did not expect (a backend answering
            # nonsense): still an event and a back-off, never a crash
            self._failed(task.get_coro().__name__.lstrip("_"), error, time())
        changed = error is None and task.result()
        poked, self._poked_during_action = self._poked_during_action, False
        # After a change, look again at once; after an action that changed
        # nothing, wait for the next event, so that nothing can spin.
        if changed or poked:
            self.poke()

    async def _scale_up(self, decision: Decision) -> bool:
        workers = len(self.scheduler.workers)
        record = {
            "status": "up",
            "n": decision.n,
            "reason": decision.reason,
            "workers": workers,
            "pending": self.pending,
        }
        if decision.kwargs:
            record["kwargs"] = dict(decision.kwargs)
        self.record(record)
        before = self.pending
        # Counted before the call: workers may connect while it runs.
        self.pending, self.pending_since = decision.n - workers, time()
        try:
            await call_backend(
                self.backend.scale_up,
                decision.n,
                timeout=self.start_timeout,
                **decision.kwargs,
            )
        except Exception as e:
            self.pending = before
            self._failed("scale_up", e, time())
            return False
        return True

    async def _scale_down(self, decision: Decision) -> bool:
        eligible = self.retirable(decision.workers)
        now = time()
        for address in set(decision.workers) - set(eligible):
            # Not retirable now: restart its idle clock, so it is not picked
            # again before another idle timeout has passed.
            if self.stats.idle.pop(address, None) is not None:
                self.stats.idle[address] = now
        # A worker whose batch-job mates are not idle long enough yet keeps its
        # clock: the policy picks them together once they all are.
        workers = self._whole_units(eligible)
        if not workers:
            return False
        for address in workers:
            self.stats.idle.pop(address, None)
        self.retiring.update(workers)
        try:
            return await self._retire(workers, decision.reason)
        finally:
            self.retiring.difference_update(workers)

    async def _retire(self, workers: list[str], reason: str) -> bool:
        """Move the workers' data away, then have the backend stop them."""
        stimulus_id = f"adaptive-retire-{time()}"
        retired, why_kept = await self._move_data_away(workers, stimulus_id)
        kept = sorted(set(workers) - set(retired))
        for address in kept:
            self.stats.idle[address] = time()
        if kept:
            self.record({"status": "kept", "workers": kept, "reason": why_kept})
        if not retired:
            return False
        self.record({"status": "down", "workers": retired, "reason": reason})
        try:
            await call_backend(
                self.backend.scale_down, retired, timeout=self.start_timeout
            )
        except Exception as e:
            self._failed("scale_down", e, time())
        else:
            self._succeeded()
        finally:
            await self._remove_from_scheduler(retired, stimulus_id)
        return True

    async def _move_data_away(
        self, workers: list[str], stimulus_id: str
    ) -> tuple[list[str], str]:
        """``Scheduler.retire_workers``, bounded by ``retire_timeout``.

        Returns the workers whose data is safe elsewhere, and why the others
        are kept. distributed's retirement has no timeout of its own; one that
        hangs is cancelled and the workers return to the running state.
        """
        try:
            retired = await asyncio.wait_for(
                self.scheduler.retire_workers(
                    workers=workers,
                    close_workers=False,
                    remove=False,
                    stimulus_id=stimulus_id,
                ),
                self.retire_timeout,
            )
        except asyncio.TimeoutError:
            self._resume_workers(workers, stimulus_id)
            return [], (
                f"retirement did not finish within {self.retire_timeout:g}s; "
                "the workers keep their data and their work"
            )
        return list(retired), "retirement aborted: their data could not be moved"

    def _resume_workers(self, workers: list[str], stimulus_id: str) -> None:
        """Undo an unfinished retirement, as the scheduler does when it aborts one."""
        amm = self.scheduler.extensions.get("amm")
        for policy in list(getattr(amm, "policies", ())):
            if getattr(policy, "address", None) in workers:
                amm.policies.discard(policy)  # type: ignore[union-attr]
        for address in workers:
            ws = self.scheduler.workers.get(address)
            if ws is None or ws.status != Status.closing_gracefully:
                continue
            self.scheduler.handle_worker_status_change(Status.running, ws, stimulus_id)
            self.scheduler.stream_comms[address].send(
                {
                    "op": "worker-status-change",
                    "status": Status.running.name,
                    "stimulus_id": stimulus_id,
                }
            )

    async def _give_up_pending(self) -> bool:
        """Requested workers are overdue: cancel them and ask again, after back-off."""
        overdue, self.pending = self.pending, 0
        cancel = getattr(self.backend, "cancel_pending", None)
        error: Exception = TimeoutError(
            f"{overdue} requested workers did not connect within "
            f"{self.start_timeout:g}s"
        )
        if cancel is not None:
            try:
                await call_backend(cancel, timeout=self.start_timeout)
            except Exception as e:
                error = RuntimeError(f"{error}; cancelling them failed: {e}")
        self._failed("start", error, time())
        return False

    def retirable(self, candidates: tuple[str, ...] | list[str]) -> list[str]:
        """Of ``candidates``, those that may be retired right now.

        Never a worker running or holding tasks to run, a long-running
        (seceded) worker, one not in the running state, or one that another
        plugin vetoes through ``valid_workers_downscaling``.
        """
        workers = self.scheduler.workers
        wss = [
            ws
            for address in candidates
            if (ws := workers.get(address)) is not None
            and ws.status == Status.running
            and not ws.processing
            and not ws.long_running
        ]
        for plugin in list(self.scheduler.plugins.values()):
            wss = plugin.valid_workers_downscaling(self.scheduler, wss)
        return [ws.address for ws in wss]

    def _whole_units(self, addresses: list[str]) -> list[str]:
        """Keep only workers whose whole unit (a batch job) can go."""
        together = getattr(self.backend, "stopped_together", None)
        if together is None:
            return addresses
        allowed = set(addresses)
        return [a for a in addresses if allowed.issuperset(together(a))]

    async def _remove_from_scheduler(self, addresses: list[str], stimulus_id: str) -> None:
        """Workers the backend stopped but the scheduler still lists: close them."""
        for address in addresses:
            if address in self.scheduler.workers:
                await self.scheduler.remove_worker(
                    address, close=True, expected=True, stimulus_id=stimulus_id
                )

    # -- failures ---------------------------------------------------------------------

    def _failed(self, what: str, error: BaseException, now: float) -> None:
        """Record a failure and wait longer after each one in a row.

        Crashes count on their own: asking for workers succeeds while the
        workers keep dying, and that must slow down too.
        """
        self.failures += 1
        count = self.crashes if what == "worker" else self.failures
        delay = min(BACKOFF_CAP, BACKOFF_START * 2 ** (count - 1))
        self.not_before = now + delay
        logger.warning("adaptive: %s failed (retry in %gs): %r", what, delay, error)
        self._set_timer(self.not_before)
        reason = f"{what} failed; retrying after back-off"
        if self.crashes >= CRASH_LIMIT:
            reason = (
                f"{self.crashes} workers in a row exited soon after starting; "
                "no more are asked for until new work is submitted"
            )
        self.record(
            {
                "status": "error",
                "action": what,
                "error": f"{type(error).__name__}: {error}",
                "failures": count,
                "retry_in": delay,
                "reason": reason,
            }
        )

    def _succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Begin acting: evaluate at once (a minimum is honoured immediately)."""
        self.poke()

    async def close(self) -> None:
        """Stop acting: cancel timers; let an action in progress finish.

        Cancelling a backend call half-way could leave a worker half-stopped,
        so it gets ``CLOSE_GRACE`` seconds before it is cancelled.
        """
        self.closed = True
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        action = self._action
        if action is None:
            return
        await asyncio.wait({action}, timeout=CLOSE_GRACE)
        if not action.done():
            action.cancel()
        with contextlib.suppress(BaseException):
            await action
