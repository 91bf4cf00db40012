"""Demand: counters of tasks and workers kept incrementally from scheduler hooks.

:class:`ClusterStats` is seeded by one scan of the scheduler when the plugin
attaches and is then kept up to date in O(1) per hook call. A decision reads a
:class:`Snapshot` of it, whose cost does not depend on the number of tasks or
workers, only on the number of resource classes and task prefixes with
runnable work.

Runnable work (tasks queued, without a worker, or processing) is grouped by
what its tasks need: one *class* per distinct combination of resource
restrictions (``{}`` for plain tasks, ``{"GPU": 1}``...). Tasks restricted to
particular workers that are not there (``workers=[...]``, no longer
connected) are counted apart as *pinned*: no new worker can run them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from dask_adaptive_plugin import _compat

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.scheduler import TaskState

#: Task states that are counted; "released" and "forgotten" are not work.
COUNTED = ("waiting", "queued", "no-worker", "processing", "memory", "erred")
#: States of runnable tasks that no worker has yet.
UNASSIGNED = ("queued", "no-worker")
#: States whose tasks are counted beyond the count per state.
TRACKED = frozenset({*UNASSIGNED, "processing", "memory"})

#: Busy workers re-checked per evaluation, to find those that became idle
#: without a transition telling us (work stealing moves tasks silently).
RECHECK_PER_EVALUATION = 4
#: A recount after a failed hook scans every task: it happens at most once
#: per this many seconds, and takes at most a tenth of the time.
RESEED_INTERVAL = 1.0
#: Distinct resource classes tracked one by one; tasks of further classes are
#: counted together, needing the most of each resource any of them asked for.
MAX_CLASSES = 32

#: A resource class: the sorted ``(resource, amount)`` pairs its tasks need.
ResourceClass = tuple[tuple[str, float], ...]
PLAIN: ResourceClass = ()
#: The class of the tasks beyond :data:`MAX_CLASSES`.
OVERFLOW: ResourceClass = (("*", 0.0),)
_PINNED: ResourceClass = (("pinned", 0.0),)


class WorkerLike(Protocol):
    """What a policy may read of a worker (``WorkerState`` in a scheduler)."""

    nbytes: int
    memory_limit: int


class Need(NamedTuple):
    """Runnable work of one resource class.

    A named tuple, not a dataclass: one is made per class in every evaluation,
    and a tuple is several times cheaper to make.

    Attributes
    ----------
    resources
        What each of its tasks needs: ``{}`` for plain tasks, ``{"GPU": 1}``.
    tasks
        Its tasks queued, without a worker, or processing.
    seconds
        Their estimated compute time (the scheduler's estimate per task prefix).
    waiting
        Of its tasks, those that no worker has yet.
    """

    resources: Mapping[str, float]
    tasks: int
    seconds: float
    waiting: int = 0


@dataclass(frozen=True)
class Snapshot:
    """What a policy sees of demand: plain numbers, plus read-only views of two
    mappings.

    A simulator builds one by hand; in a scheduler, :meth:`ClusterStats.snapshot`
    builds it in time independent of the numbers of tasks and workers.
    """

    workers: int
    nthreads: int = 0
    memory_limit: int = 0
    stored_bytes: int = 0
    queued: int = 0
    no_worker: int = 0
    processing: int = 0
    #: Tasks restricted to workers that are not connected: no new worker helps.
    pinned: int = 0
    #: Runnable work by resource class, plain work (``resources == {}``) first.
    needs: tuple[Need, ...] = ()
    #: Idle workers: address -> since when (monotonic seconds), oldest first.
    idle: Mapping[str, float] = field(default_factory=dict)
    #: address -> worker (for ``nbytes`` and ``memory_limit``).
    worker_states: Mapping[str, WorkerLike] = field(default_factory=dict)

    @property
    def runnable(self) -> int:
        return self.queued + self.no_worker + self.processing


class ClusterStats:
    """Counters of tasks and workers, kept from the scheduler's hooks.

    Parameters
    ----------
    scheduler
        The scheduler whose state is counted.
    clock
        Monotonic seconds (the event loop's ``time``): when workers became idle.

    Attributes
    ----------
    counts
        Tasks per state in :data:`COUNTED`.
    work
        Resource class -> task prefix -> runnable tasks (queued, without a
        worker, or processing), pinned tasks left out.
    waiting
        Resource class -> its tasks that no worker has yet.
    pinned
        Tasks without a worker that may only run on particular workers.
    stored_bytes
        Bytes of computed results in memory, each key counted once.
    memory_limit
        Total over the workers; ``limits`` has each worker's.
    idle
        Workers with nothing to do: address -> since when, oldest first.
    busy
        Workers believed to be processing something, in check order.

    Only computed tasks are counted: data sent with ``client.scatter`` enters
    the scheduler without a transition, and is left out of every counter.
    """

    def __init__(self, scheduler: Scheduler, clock: Callable[[], float]) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self._tasks = scheduler.tasks
        self.reseeded_at = -float("inf")
        self.reseed_cost = 0.0
        self.reseed()

    # -- seeding ---------------------------------------------------------------

    def reseed(self) -> None:
        """Recompute everything with one scan of the scheduler's state."""
        started = time.perf_counter()
        now = self.clock()
        self.counts: dict[str, int] = dict.fromkeys(COUNTED, 0)
        self.work: dict[ResourceClass, dict[str, int]] = {}
        self.waiting: dict[ResourceClass, int] = {}
        self.pinned = 0
        self.overflowed: set[ResourceClass] = set()
        self.overflow_needs: dict[str, float] = {}
        self.stored_bytes = 0
        self.memory_limit = 0
        self.limits: dict[str, int] = {}
        self.idle: dict[str, float] = {}
        self.busy: dict[str, None] = {}
        for ts in self.scheduler.tasks.values():
            if ts.run_spec is not None and ts.state in self.counts:
                self.counts[ts.state] += 1
                self._enter(ts, ts.state)
        for address in self.scheduler.workers:
            self.worker_added(address)
        self.needs_reseed = False
        self.reseeded_at = now
        self.reseed_cost = time.perf_counter() - started

    def next_reseed(self) -> float | None:
        """When a recount that is due may run, or ``None`` if none is due.

        A hook that keeps failing must not make every evaluation scan every
        task: at most one recount per :data:`RESEED_INTERVAL`, and at least
        ten times its own duration apart.
        """
        if not self.needs_reseed:
            return None
        gap = max(RESEED_INTERVAL, 10 * self.reseed_cost)
        return self.reseeded_at + gap

    def reseed_if_due(self) -> None:
        due = self.next_reseed()
        if due is not None and self.clock() >= due:
            self.reseed()

    # -- hooks: O(1) each --------------------------------------------------------

    def transition(self, key: Any, start: str, finish: str, worker: str | None) -> None:
        """A task moved from ``start`` to ``finish``.

        The hot path of the plugin: called several times per task.
        """
        counts = self.counts
        leaving, entering = start in counts, finish in counts
        if not (leaving or entering):
            return
        ts = self._tasks.get(key)
        if ts is None or ts.run_spec is None:
            return
        if leaving:
            counts[start] -= 1
            if start in TRACKED:
                self._leave(ts, start, worker)
        if entering:
            counts[finish] += 1
            if finish in TRACKED:
                self._enter(ts, finish)

    def worker_added(self, address: str) -> None:
        ws = self.scheduler.workers.get(address)
        if ws is None or address in self.limits:
            return
        self.limits[address] = ws.memory_limit or 0
        self.memory_limit += self.limits[address]
        if ws.processing:
            self.busy[address] = None
        else:
            self.idle[address] = self.clock()

    def worker_removed(self, address: str) -> None:
        self.memory_limit -= self.limits.pop(address, 0)
        self.idle.pop(address, None)
        self.busy.pop(address, None)

    # -- bookkeeping -------------------------------------------------------------

    def _enter(self, ts: TaskState, state: str) -> None:
        if state in UNASSIGNED or state == "processing":
            self._count_work(ts, state, 1)
        if state == "processing":
            ws = ts.processing_on
            if ws is not None:
                self.idle.pop(ws.address, None)
                self.busy[ws.address] = None
        elif state == "memory":
            self.stored_bytes += max(ts.nbytes, 0)

    def _leave(self, ts: TaskState, state: str, worker: str | None) -> None:
        if state in UNASSIGNED or state == "processing":
            self._count_work(ts, state, -1)
        if state == "processing":
            if worker is not None:
                self._recheck(worker)
            if self.counts["processing"] == 0 and self.busy:
                self._all_idle()
        elif state == "memory":
            self.stored_bytes -= max(ts.nbytes, 0)

    def _count_work(self, ts: TaskState, state: str, delta: int) -> None:
        if state == "no-worker" and _pinned(ts):
            self.pinned += delta
            return
        key = self._class_of(ts, delta)
        by_prefix = self.work.get(key)
        if by_prefix is None:
            by_prefix = self.work[key] = {}
        prefix = ts.prefix.name
        count = by_prefix.get(prefix, 0) + delta
        if count:
            by_prefix[prefix] = count
        else:
            del by_prefix[prefix]
        if state != "processing":
            self.waiting[key] = self.waiting.get(key, 0) + delta
            if not self.waiting[key]:
                del self.waiting[key]
        if not by_prefix:
            del self.work[key]
            if key == OVERFLOW:  # drained: every class may be counted alone again
                self.overflowed.clear()
                self.overflow_needs.clear()

    def _class_of(self, ts: TaskState, delta: int) -> ResourceClass:
        """The task's resource class; beyond :data:`MAX_CLASSES`, the overflow.

        Which classes overflowed is remembered until the overflow drains, so a
        task leaves the class it entered.
        """
        restrictions = ts.resource_restrictions
        if not restrictions:
            return PLAIN
        key = tuple(sorted(restrictions.items()))
        if key in self.overflowed:
            return OVERFLOW
        if key in self.work or len(self.work) < MAX_CLASSES or delta < 0:
            return key
        self.overflowed.add(key)
        for resource, amount in key:
            self.overflow_needs[resource] = max(
                amount, self.overflow_needs.get(resource, 0)
            )
        return OVERFLOW

    def _recheck(self, address: str) -> None:
        """Move a worker believed busy to idle if it has nothing to do."""
        ws = self.scheduler.workers.get(address)
        if ws is None or ws.processing or address in self.idle:
            return
        self.busy.pop(address, None)
        self.idle[address] = self.clock()

    def _all_idle(self) -> None:
        # Nothing is processing anywhere: every worker is idle. Each address in
        # ``busy`` was put there by a transition, so this is amortised O(1).
        now = self.clock()
        for address in self.busy:
            self.idle.setdefault(address, now)
        self.busy.clear()

    def recheck_some_busy(self) -> None:
        """Check the longest-unchecked few busy workers; O(1) per call."""
        for _ in range(min(RECHECK_PER_EVALUATION, len(self.busy))):
            address = next(iter(self.busy))
            del self.busy[address]
            ws = self.scheduler.workers.get(address)
            if ws is None:
                continue
            if ws.processing:
                self.busy[address] = None
            else:
                self.idle.setdefault(address, self.clock())

    # -- reading -------------------------------------------------------------------

    def needs(self) -> tuple[Need, ...]:
        """Runnable work by resource class, plain first; O(classes x prefixes)."""
        s = self.scheduler
        prefixes = s.task_prefixes
        duration = _compat.prefix_duration
        result = []
        for key in sorted(self.work, key=len):
            # one loop and one copy per class: this runs in every evaluation
            seconds: float = 0
            tasks = 0
            for name, count in self.work[key].items():
                tasks += count
                prefix = prefixes.get(name)
                if prefix is not None:
                    seconds += count * duration(s, prefix)
            resources = dict(self.overflow_needs if key == OVERFLOW else key)
            result.append(
                Need(
                    resources=resources,
                    tasks=tasks,
                    seconds=seconds,
                    waiting=self.waiting.get(key, 0),
                )
            )
        return tuple(result)

    def snapshot(self) -> Snapshot:
        s = self.scheduler
        return Snapshot(
            workers=len(s.workers),
            nthreads=s.total_nthreads,
            memory_limit=self.memory_limit,
            stored_bytes=self.stored_bytes,
            queued=self.counts["queued"],
            no_worker=self.counts["no-worker"],
            processing=self.counts["processing"],
            pinned=self.pinned,
            needs=self.needs(),
            idle=self.idle,
            worker_states=s.workers,
        )

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain data, for comparison with a recomputation."""
        return {
            "counts": dict(self.counts),
            "work": {k: dict(v) for k, v in self.work.items()},
            "waiting": dict(self.waiting),
            "pinned": self.pinned,
            "stored_bytes": self.stored_bytes,
            "memory_limit": self.memory_limit,
        }


def _pinned(ts: TaskState) -> bool:
    """Restricted to particular workers or hosts, with no way around it."""
    return bool(ts.worker_restrictions or ts.host_restrictions) and not (
        ts.loose_restrictions
    )
