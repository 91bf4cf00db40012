"""Policies: *when* to scale. Pure functions of a snapshot and a clock.

A policy does no I/O and reads no clock of its own: :meth:`Policy.decide`
gets a :class:`~dask_adaptive_plugin.stats.Snapshot` and the time, and returns
a :class:`Decision`. That makes it testable without a cluster and usable by a
simulator in virtual time.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dask_adaptive_plugin.config import invalid, parse_count, parse_duration
from dask_adaptive_plugin.stats import Snapshot


@dataclass(frozen=True)
class Decision:
    """What to do now, why, and when to look again at the latest.

    Attributes
    ----------
    status
        ``"up"``: bring the total to ``n`` workers; ``"down"``: retire
        ``workers``; ``"hold"``: nothing to do.
    reason
        Why, in words, for the log.
    kwargs
        Keyword arguments for ``scale_up`` (what waiting tasks need).
    deadline
        Evaluate again at this time even if nothing happens (an idle worker's
        timeout running out), or ``None``.
    """

    status: Literal["up", "down", "hold"]
    n: int = 0
    workers: tuple[str, ...] = ()
    reason: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    deadline: float | None = None


class Policy:
    """Decides when to scale.

    To implement a policy:

    1. inherit from this class;
    2. take your options as keyword arguments of ``__init__`` (after the
       common ones) and check them, raising ``ValueError`` that names the bad one;
    3. implement :meth:`decide`: no I/O, no clock but ``now``;
    4. register the class under the entry-point group
       ``dask_adaptive_plugin.policies``.

    Parameters
    ----------
    minimum, maximum
        Bounds on the number of workers (``maximum=None``: unbounded).
    idle_timeout
        Seconds a worker must have been idle before it may be retired.
    """

    def __init__(
        self, *, minimum: int = 0, maximum: int | None = None, idle_timeout: float = 10
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.idle_timeout = idle_timeout

    def decide(self, snapshot: Snapshot, now: float) -> Decision:
        """What to do for this state of the cluster at time ``now``."""
        raise NotImplementedError

    def bounded(self, n: int) -> int:
        """``n`` within minimum and maximum."""
        n = max(n, self.minimum)
        return n if self.maximum is None else min(n, self.maximum)


def choose_idle_workers(
    snapshot: Snapshot,
    count: int,
    now: float,
    idle_timeout: float,
    memory_threshold: float | None = None,
) -> tuple[list[str], float | None]:
    """Pick up to ``count`` workers to retire, and when to look again.

    Candidates are workers idle for at least ``idle_timeout``; those holding the
    least data go first, and no more go than keeps the stored data under
    ``memory_threshold`` of the remaining workers' memory (and one worker
    always stays while there is data to hold). Costs O(expired), nothing when
    no worker may go, and never a scan of all workers.

    Returns
    -------
    workers
        Addresses to retire.
    deadline
        When the next idle worker's timeout runs out, or ``None``.
    """
    if snapshot.stored_bytes:
        count = min(count, snapshot.workers - 1)  # someone must receive the data
    if count <= 0:
        return [], None  # only an event can change that: no deadline needed
    cutoff = now - idle_timeout
    expired, deadline = [], None
    for address, since in snapshot.idle.items():
        if since > cutoff:
            deadline = since + idle_timeout
            break
        expired.append(address)
    if not expired:
        return [], deadline
    states = snapshot.worker_states
    expired = [a for a in expired if a in states]
    chosen, limit = [], snapshot.memory_limit
    for address in heapq.nsmallest(count, expired, key=lambda a: states[a].nbytes):
        remaining = limit - (states[address].memory_limit or 0)
        if memory_threshold is not None and limit and snapshot.stored_bytes > (
            memory_threshold * remaining
        ):
            break
        chosen.append(address)
        limit = remaining
    return chosen, deadline


class AdaptivePolicy(Policy):
    """Scale with the work, after the policy of Dask's adaptive deployments.

    - Grow straight to the number of workers that finishes the known work
      (running and waiting, estimated per task prefix as the scheduler does)
      within ``target_duration``, as soon as work waits; never to more
      workers than there are runnable tasks.
    - Grow by ``scale_factor`` when tasks wait that no current worker can run
      (they need a resource no worker has), or when stored data passes
      ``memory_threshold`` of the workers' memory limits.
    - Shrink by retiring the idle workers holding the least data once they
      have been idle for ``idle_timeout``, keeping memory under the threshold.
    - Always within minimum and maximum.

    Parameters
    ----------
    target_duration
        How long the work in the scheduler should take (default ``"5s"``).
    scale_factor
        Growth factor when work waits (default 2).
    memory_threshold
        Fraction of the workers' memory limits that stored data may fill
        (default 0.5).
    """

    def __init__(
        self,
        *,
        minimum: int = 0,
        maximum: int | None = None,
        idle_timeout: float = 10,
        target_duration: Any = "5s",
        scale_factor: Any = 2,
        memory_threshold: Any = 0.5,
    ) -> None:
        super().__init__(minimum=minimum, maximum=maximum, idle_timeout=idle_timeout)
        self.target_duration = parse_duration("target_duration", target_duration)
        if self.target_duration <= 0:
            raise invalid("target_duration", target_duration, "a duration > 0")
        self.scale_factor = _parse_number("scale_factor", scale_factor, "> 1", 1)
        self.memory_threshold = _parse_number(
            "memory_threshold", memory_threshold, "between 0 and 1", 0, 1
        )

    def decide(self, snapshot: Snapshot, now: float) -> Decision:
        s = snapshot
        need, why = self.workers_needed(s)
        target = self.bounded(need)
        if target > s.workers + s.pending:
            if need < target:
                why = f"minimum is {self.minimum}"
            return Decision("up", n=target, reason=why, kwargs=s.resource_needs)
        surplus = s.workers - target
        workers, deadline = choose_idle_workers(
            s, surplus, now, self.idle_timeout, self.memory_threshold
        )
        if workers:
            reason = f"idle for {self.idle_timeout:g}s and not needed ({why})"
            return Decision(
                "down", workers=tuple(workers), reason=reason, deadline=deadline
            )
        return Decision("hold", reason=why, deadline=deadline)

    def workers_needed(self, s: Snapshot) -> tuple[int, str]:
        """How many workers the work and the data call for, and why."""
        cpu, cpu_why = self._for_work(s)
        memory, memory_why = self._for_memory(s)
        return (memory, memory_why) if memory > cpu else (cpu, cpu_why)

    def _for_work(self, s: Snapshot) -> tuple[int, str]:
        if not s.runnable:
            return 0, "no runnable tasks"
        tpw = s.nthreads / s.workers if s.workers and s.nthreads else s.threads_per_worker
        seconds = s.processing_seconds + s.unassigned_seconds
        n = math.ceil(seconds / self.target_duration / tpw)
        why = f"{s.runnable} runnable tasks, ~{seconds:.3g}s of work"
        if s.queued and not s.idle:
            why = f"{s.queued} tasks wait for a worker; {why}"
        if s.no_worker:
            # no worker can run these, so how long they take says nothing about
            # how many workers they need: grow by the factor
            n = max(n, math.ceil(s.workers * self.scale_factor), s.workers + 1)
            why = f"{s.no_worker} tasks need a worker that no worker is; {why}"
        return max(1, min(n, self._most_useful(s, tpw))), why

    @staticmethod
    def _most_useful(s: Snapshot, tpw: float) -> int:
        """More workers than this would have nothing to run."""
        most = math.ceil(s.runnable / tpw)
        if s.no_worker:
            # no current worker can run these: they need workers of their own
            most = max(most, s.workers + math.ceil(s.no_worker / tpw))
        return most

    def _for_memory(self, s: Snapshot) -> tuple[int, str]:
        if not (s.workers and s.memory_limit):
            return 0, ""
        if s.stored_bytes <= self.memory_threshold * s.memory_limit:
            return 0, ""
        per_worker = s.memory_limit / s.workers
        n = max(
            math.ceil(s.workers * self.scale_factor),
            math.ceil(s.stored_bytes / (self.memory_threshold * per_worker)),
        )
        share = s.stored_bytes / s.memory_limit
        return n, f"stored data fills {share:.0%} of memory limits"


class FixedPolicy(Policy):
    """Keep exactly ``n`` workers (default: ``minimum``).

    Lost workers are replaced; extra workers are retired once they have been
    idle for ``idle_timeout``.
    """

    def __init__(
        self,
        *,
        minimum: int = 0,
        maximum: int | None = None,
        idle_timeout: float = 10,
        n: Any = None,
    ) -> None:
        super().__init__(minimum=minimum, maximum=maximum, idle_timeout=idle_timeout)
        wanted = minimum if n is None else parse_count("n", n)
        assert wanted is not None
        self.n = self.bounded(wanted)

    def decide(self, snapshot: Snapshot, now: float) -> Decision:
        s = snapshot
        reason = f"fixed at {self.n} workers"
        if s.workers + s.pending < self.n:
            return Decision("up", n=self.n, reason=reason, kwargs=s.resource_needs)
        workers, deadline = choose_idle_workers(
            s, s.workers - self.n, now, self.idle_timeout
        )
        if workers:
            return Decision(
                "down", workers=tuple(workers), reason=reason, deadline=deadline
            )
        return Decision("hold", reason=reason, deadline=deadline)


def _parse_number(
    name: str, value: Any, accepted: str, low: float, high: float = math.inf
) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise invalid(name, value, f"a number {accepted}") from None
    if isinstance(value, bool) or not (low < number <= high) or math.isnan(number):
        raise invalid(name, value, f"a number {accepted}")
    return number
