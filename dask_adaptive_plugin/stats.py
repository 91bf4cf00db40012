"""Cluster statistics kept incrementally from scheduler hooks.

:class:`ClusterStats` is seeded by one scan of the scheduler when the plugin
attaches and is then kept up to date in O(1) per hook call. A decision reads a
:class:`Snapshot` of it, whose cost does not depend on the number of tasks or
workers (only on the number of task prefixes and resource amounts waiting).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from time import time
from typing import TYPE_CHECKING, Any, Protocol

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


class WorkerLike(Protocol):
    """What a policy may read of a worker (``WorkerState`` in a scheduler)."""

    nbytes: int
    memory_limit: int


@dataclass(frozen=True)
class Snapshot:
    """What a policy sees: plain numbers, plus read-only views of two mappings.

    A simulator builds one by hand; in a scheduler, :meth:`ClusterStats.snapshot`
    builds it in time independent of the numbers of tasks and workers.
    """

    workers: int
    pending: int = 0
    nthreads: int = 0
    threads_per_worker: int = 1
    memory_limit: int = 0
    stored_bytes: int = 0
    queued: int = 0
    no_worker: int = 0
    processing: int = 0
    processing_seconds: float = 0.0
    unassigned_seconds: float = 0.0
    resource_needs: Mapping[str, float] = field(default_factory=dict)
    #: Idle workers: address -> since when, oldest first.
    idle: Mapping[str, float] = field(default_factory=dict)
    #: address -> worker (for ``nbytes`` and ``memory_limit``).
    worker_states: Mapping[str, WorkerLike] = field(default_factory=dict)

    @property
    def runnable(self) -> int:
        return self.queued + self.no_worker + self.processing


class ClusterStats:
    """Counters of tasks and workers, kept from the scheduler's hooks.

    Attributes
    ----------
    counts
        Tasks per state in :data:`COUNTED`.
    unassigned_by_prefix
        Task prefix name -> number of its tasks queued or without a worker.
    resource_needs
        Resource -> amount -> number of unassigned tasks that ask for it.
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

    def __init__(self, scheduler: Scheduler, now: float) -> None:
        self.scheduler = scheduler
        self._tasks = scheduler.tasks
        self.reseed(now)

    # -- seeding ---------------------------------------------------------------

    def reseed(self, now: float) -> None:
        """Recompute everything with one scan of the scheduler's state."""
        self.counts: dict[str, int] = dict.fromkeys(COUNTED, 0)
        self.unassigned_by_prefix: defaultdict[str, int] = defaultdict(int)
        self.resource_needs: defaultdict[str, defaultdict[float, int]] = defaultdict(
            lambda: defaultdict(int)
        )
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
            self.worker_added(address, now)
        self.needs_reseed = False

    # -- hooks: O(1) each --------------------------------------------------------

    def transition(
        self, key: Any, start: str, finish: str, worker: str | None
    ) -> None:
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

    def worker_added(self, address: str, now: float) -> None:
        ws = self.scheduler.workers.get(address)
        if ws is None or address in self.limits:
            return
        self.limits[address] = ws.memory_limit or 0
        self.memory_limit += self.limits[address]
        if ws.processing:
            self.busy[address] = None
        else:
            self.idle[address] = now

    def worker_removed(self, address: str) -> None:
        self.memory_limit -= self.limits.pop(address, 0)
        self.idle.pop(address, None)
        self.busy.pop(address, None)

    # -- bookkeeping -------------------------------------------------------------

    def _enter(self, ts: TaskState, state: str) -> None:
        if state in UNASSIGNED:
            self._count_unassigned(ts, 1)
        elif state == "processing":
            ws = ts.processing_on
            if ws is not None:
                self.idle.pop(ws.address, None)
                self.busy[ws.address] = None
        elif state == "memory":
            self.stored_bytes += max(ts.nbytes, 0)

    def _leave(self, ts: TaskState, state: str, worker: str | None) -> None:
        if state in UNASSIGNED:
            self._count_unassigned(ts, -1)
        elif state == "processing":
            now = time()
            if worker is not None:
                self._recheck(worker, now)
            if self.counts["processing"] == 0 and self.busy:
                self._all_idle(now)
        elif state == "memory":
            self.stored_bytes -= max(ts.nbytes, 0)

    def _count_unassigned(self, ts: TaskState, delta: int) -> None:
        prefix = ts.prefix.name
        count = self.unassigned_by_prefix[prefix] + delta
        if count:
            self.unassigned_by_prefix[prefix] = count
        else:
            del self.unassigned_by_prefix[prefix]
        for resource, amount in (ts.resource_restrictions or {}).items():
            amounts = self.resource_needs[resource]
            amounts[amount] += delta
            if not amounts[amount]:
                del amounts[amount]
                if not amounts:
                    del self.resource_needs[resource]

    def _recheck(self, address: str, now: float) -> None:
        """Move a worker believed busy to idle if it has nothing to do."""
        ws = self.scheduler.workers.get(address)
        if ws is None or ws.processing or address in self.idle:
            return
        self.busy.pop(address, None)
        self.idle[address] = now

    def _all_idle(self, now: float) -> None:
        # Nothing is processing anywhere: every worker is idle. Each address in
        # ``busy`` was put there by a transition, so this is amortised O(1).
        for address in self.busy:
            self.idle.setdefault(address, now)
        self.busy.clear()

    def recheck_some_busy(self, now: float) -> None:
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
                self.idle.setdefault(address, now)

    # -- reading -------------------------------------------------------------------

    def unassigned_seconds(self) -> float:
        """Estimated compute time of the tasks that no worker has yet."""
        s = self.scheduler
        prefixes = s.task_prefixes
        return sum(
            count * s._get_prefix_duration(prefixes[name])
            for name, count in self.unassigned_by_prefix.items()
            if name in prefixes
        )

    def largest_needs(self) -> dict[str, float]:
        """For each resource, the most that one waiting task asks for."""
        return {r: max(amounts) for r, amounts in self.resource_needs.items()}

    def snapshot(self, *, pending: int, threads_per_worker: int) -> Snapshot:
        s = self.scheduler
        return Snapshot(
            workers=len(s.workers),
            pending=pending,
            nthreads=s.total_nthreads,
            threads_per_worker=threads_per_worker,
            memory_limit=self.memory_limit,
            stored_bytes=self.stored_bytes,
            queued=self.counts["queued"],
            no_worker=self.counts["no-worker"],
            processing=self.counts["processing"],
            processing_seconds=s.total_occupancy,
            unassigned_seconds=self.unassigned_seconds(),
            resource_needs=self.largest_needs(),
            idle=self.idle,
            worker_states=s.workers,
        )

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain data, for comparison with a recomputation."""
        return {
            "counts": dict(self.counts),
            "unassigned_by_prefix": dict(self.unassigned_by_prefix),
            "resource_needs": {
                r: dict(a) for r, a in self.resource_needs.items() if a
            },
            "stored_bytes": self.stored_bytes,
            "memory_limit": self.memory_limit,
        }
