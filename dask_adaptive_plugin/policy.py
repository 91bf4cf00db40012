"""Policies: *when* to scale. Pure functions of demand, supply and a clock.

A policy does no I/O and reads no clock of its own: :meth:`Policy.decide`
gets a :class:`~dask_adaptive_plugin.stats.Snapshot` (demand), a
:class:`Supply` (the pools and their workers) and the time, and returns a
:class:`Plan`. That makes it testable without a cluster, and the simulator
runs the same policy in virtual time.

Pools are served by :func:`allocate`: each need goes to the pools whose
workers provide what it needs, cheapest first, keeping the workers that are
there before starting new ones; what no pool provides is *unsatisfiable*.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from dask_adaptive_plugin.config import invalid, parse_count, parse_duration
from dask_adaptive_plugin.pools import Pool
from dask_adaptive_plugin.retention import Retention
from dask_adaptive_plugin.stats import Need, Snapshot

#: The causes of decisions: a small fixed set, for metrics labels.
CAUSES = (
    "queued-work",
    "memory",
    "minimum",
    "fixed",
    "idle",
    "unsatisfiable",
    "fallback",
)


@dataclass(frozen=True)
class PoolSupply:
    """What a policy sees of one pool.

    Attributes
    ----------
    pool
        Its declaration.
    maximum
        Its bound: the pool's ``maximum`` and its backend's own, the lower.
    running, on_the_way, retiring
        Its workers connected, asked for and not connected yet, being retired.
    threads_per_worker
        Of its connected workers on average, else what its backend says.
    available
        ``False`` while the pool is in its fallback cool-down or back-off.
    lacks
        Resources its workers turned out not to have (undeclared pools).
    startup, startup_p90
        Measured seconds from request to connect: median and 90th percentile.
    """

    pool: Pool
    maximum: int | None = None
    running: int = 0
    on_the_way: int = 0
    retiring: int = 0
    threads_per_worker: float = 1.0
    available: bool = True
    lacks: frozenset[str] = frozenset()
    startup: float | None = None
    startup_p90: float | None = None
    #: Workers asked for by a hint (``request_workers``) until it expires.
    floor: int = 0

    @property
    def name(self) -> str:
        return self.pool.name

    @property
    def minimum(self) -> int:
        """The pool's ``minimum``, or a hint's floor if higher."""
        return max(self.pool.minimum, self.floor)

    @property
    def supply(self) -> int:
        """What ``scale_up``'s ``n`` counts: running and on their way."""
        return self.running + self.on_the_way

    def fits(self, needs: Mapping[str, float]) -> bool:
        return self.pool.fits(needs, self.lacks)


@dataclass(frozen=True)
class Supply:
    """What a policy sees of supply: the pools, cheapest first, and bounds."""

    pools: tuple[PoolSupply, ...]
    minimum: int = 0
    maximum: int | None = None
    #: Connected workers no pool claims (started by hand).
    unmanaged: int = 0
    #: address -> pool (``None``: unmanaged) of every connected worker.
    pool_of: Mapping[str, str | None] = field(default_factory=dict)
    #: address -> not retired before (monotonic seconds).
    held: Mapping[str, float] = field(default_factory=dict)
    #: Which pools (their indices) fit a need, kept by the planner between
    #: evaluations for as long as no pool learns what it lacks.
    fits: dict[tuple[tuple[str, float], ...], tuple[int, ...]] = field(
        default_factory=dict
    )

    @property
    def total(self) -> int:
        return sum(p.supply for p in self.pools) + self.unmanaged

    def fitting(self, needs: Mapping[str, float]) -> list[PoolSupply]:
        """The pools whose workers provide ``needs``, cheapest first."""
        key = tuple(sorted(needs.items())) if needs else ()
        found = self.fits.get(key)
        if found is None:
            found = self.fits[key] = tuple(
                i for i, p in enumerate(self.pools) if p.fits(needs)
            )
        pools = self.pools
        return [pools[i] for i in found]

    def get(self, name: str) -> PoolSupply:
        return next(p for p in self.pools if p.name == name)


@dataclass(frozen=True)
class Up:
    """Bring ``pool`` to ``n`` workers (its running ones and those on their way)."""

    pool: str
    n: int
    reason: str
    cause: str = "queued-work"
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Down:
    """Retire these workers of ``pool`` (``None``: workers no pool claims)."""

    pool: str | None
    workers: tuple[str, ...]
    reason: str
    cause: str = "idle"


@dataclass(frozen=True)
class Plan:
    """What to do now, why, and when to look again at the latest.

    Attributes
    ----------
    ups, downs
        Per pool: grow to a total, or retire workers.
    desired
        Pool -> the workers it should have.
    unsatisfiable
        Needs that no pool provides.
    reason
        Why, in words, when there is nothing to do.
    deadline
        Evaluate again at this time even if nothing happens (an idle worker's
        timeout running out), or ``None``.
    """

    ups: tuple[Up, ...] = ()
    downs: tuple[Down, ...] = ()
    desired: Mapping[str, int] = field(default_factory=dict)
    unsatisfiable: tuple[Need, ...] = ()
    reason: str = ""
    deadline: float | None = None


class Policy:
    """Decides when to scale.

    To implement a policy:

    1. inherit from this class;
    2. take your options as keyword arguments of ``__init__`` and check them,
       raising ``ValueError`` that names the bad one;
    3. implement :meth:`decide`: no I/O, no clock but ``now``; :func:`allocate`
       and :func:`choose_idle_workers` do the pool arithmetic;
    4. register the class under the entry-point group
       ``dask_adaptive_plugin.policies``.

    The bounds (global ``minimum`` and ``maximum``, each pool's) and the idle
    timeouts are in the :class:`Supply` a policy is given.
    """

    def decide(self, snapshot: Snapshot, supply: Supply, now: float) -> Plan:
        """What to do for this demand and supply at time ``now``."""
        raise NotImplementedError


# -- allocation: needs to pools --------------------------------------------------------


class Demand(NamedTuple):
    """Threads a need calls for, and why.

    ``why`` is the reason, or a function that gives it: most demands start
    no worker, and their words are then never needed. (A named tuple: one is
    made per resource class in every evaluation.)
    """

    resources: Mapping[str, float]
    threads: float
    why: str | Callable[[], str]
    cause: str = "queued-work"
    #: Only counts in whole workers (a floor: a minimum, memory).
    workers: int = 0
    #: Threads for the tasks that no worker has yet: what a pool that does
    #: not declare its resources is asked for (its running workers may lack
    #: them; only those asked for this need count).
    waiting_threads: float = 0

    @property
    def reason(self) -> str:
        return self.why if isinstance(self.why, str) else self.why()


@dataclass
class Allocation:
    """Which pools serve the demands: kept (there now) and added (new) workers."""

    kept: Counter[str | None] = field(default_factory=Counter)
    added: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, list[Demand]] = field(default_factory=dict)
    unsatisfiable: list[Mapping[str, float]] = field(default_factory=list)

    def desired(self, name: str | None) -> int:
        return self.kept[name] + (self.added[name] if name is not None else 0)


def allocate(demands: list[Demand], supply: Supply, floor: int = 0) -> Allocation:
    """Serve ``demands`` from the pools, and keep ``floor`` workers in all.

    Needs that few pools can serve go first (the plain need, which every pool
    serves, last). Each is served in two passes, both cheapest pool first:
    first by workers there already (so a worker is never replaced by a
    cheaper one while it is needed), then by new ones in pools that are
    available and have room, within the global ``maximum``; plain work starts
    new workers only in pools without special resources, if there are any.
    Workers no pool claims serve plain work, after every pool. Finally each
    pool is brought to its ``minimum`` and all together to ``floor``.
    """
    result = Allocation()
    free: dict[str | None, int] = {p.name: p.supply for p in supply.pools}
    free[None] = supply.unmanaged
    room = math.inf if supply.maximum is None else supply.maximum - supply.total
    # Each need's pools are found once (fits() is the costly part with many
    # pools and classes); the sort is stable, as sorting the needs was.
    served = [(d, supply.fitting(d.resources)) for d in demands]
    served.sort(key=lambda pair: (len(pair[1]), not pair[0].resources))
    left = []
    for demand, fitting in served:
        if not fitting:
            result.unsatisfiable.append(demand.resources)
            continue
        if demand.resources and all(p.pool.resources is None for p in fitting):
            want = _keep_undeclared(result, free, fitting, demand)
        else:
            want = _keep(
                result, free, fitting, demand, include_unmanaged=not demand.resources
            )
        left.append((demand, fitting, want))
    for demand, fitting, want in left:
        room -= _grow(result, _growable(fitting, demand), demand, want, room)
    for p in supply.pools:
        if not p.minimum:
            continue  # a minimum of 0 keeps and adds no worker
        floor_p = Demand(
            {},
            0,
            f"minimum of pool {p.name} is {p.minimum}",
            "minimum",
            p.minimum,
        )
        want = _keep(result, free, [p], floor_p, minus=result.desired(p.name))
        room -= _grow(result, [p], floor_p, want, room)
    if floor > 0:
        everyone = [p for p in supply.pools]
        total = sum(result.desired(p.name) for p in everyone) + result.kept[None]
        demand = Demand({}, 0, f"minimum is {supply.minimum}", "minimum", floor)
        want = _keep(
            result, free, everyone, demand, minus=total, include_unmanaged=True
        )
        room -= _grow(result, everyone, demand, want, room)
    return result


def _keep(
    result: Allocation,
    free: dict[str | None, int],
    pools: list[PoolSupply],
    demand: Demand,
    minus: int = 0,
    include_unmanaged: bool = False,
) -> float:
    """Take workers that are there for ``demand``; returns what is still wanted
    (threads for work, workers for a floor)."""
    want: float = demand.workers - minus if demand.workers else demand.threads
    kept = result.kept
    for p in pools:
        if want <= 0:
            return want
        name = p.pool.name
        if not free[name]:
            continue
        per = 1.0 if demand.workers else p.threads_per_worker
        take = min(free[name], math.ceil(want / per))
        free[name] -= take
        kept[name] += take
        want -= take * per
    if include_unmanaged and want > 0 and free[None]:
        take = min(free[None], math.ceil(want))
        free[None] -= take
        kept[None] += take
        want -= take
    return want


def _growable(fitting: list[PoolSupply], demand: Demand) -> list[PoolSupply]:
    """Where new workers for ``demand`` may start: plain work does not start
    workers in pools that provide special resources (GPUs are for the work
    that needs them), unless no other pool exists."""
    if demand.resources:
        return fitting
    plain = [p for p in fitting if not p.pool.resources]
    return plain or fitting


def _keep_undeclared(
    result: Allocation,
    free: dict[str | None, int],
    pools: list[PoolSupply],
    demand: Demand,
) -> float:
    """Like :func:`_keep`, for a need that only undeclared pools may serve:
    only tasks no worker has count, served by workers on their way."""
    want = demand.waiting_threads
    for p in pools:
        if want <= 0:
            break
        take = min(free[p.name], p.on_the_way, math.ceil(want / p.threads_per_worker))
        free[p.name] -= take
        result.kept[p.name] += take
        want -= take * p.threads_per_worker
    return want


def _grow(
    result: Allocation,
    pools: list[PoolSupply],
    demand: Demand,
    want: float,
    room: float,
) -> int:
    """Add new workers for what ``demand`` still wants; returns how many."""
    added = 0
    for p in pools:
        if want <= 0 or room - added <= 0:
            break
        if not p.available:
            continue
        per = 1.0 if demand.workers else p.threads_per_worker
        space = (
            math.inf
            if p.maximum is None
            else p.maximum - p.supply - result.added[p.name]
        )
        take = int(min(space, room - added, math.ceil(want / per)))
        if take <= 0:
            continue
        result.added[p.name] += take
        result.reasons.setdefault(p.name, []).append(demand)
        added += take
        want -= take * per
    return added


def ups_of(allocation: Allocation, supply: Supply) -> tuple[Up, ...]:
    """The scale-ups an allocation calls for, cheapest pool first."""
    ups = []
    for p in supply.pools:
        added = allocation.added[p.name]
        if not added:
            continue
        demands = allocation.reasons[p.name]
        if p.pool.resources is not None:
            kwargs = dict(p.pool.resources)
        else:  # an undeclared pool is asked for what the tasks need
            kwargs = {}
            for d in demands:
                for resource, amount in d.resources.items():
                    kwargs[resource] = max(amount, kwargs.get(resource, 0))
        reason = "; ".join(dict.fromkeys(d.reason for d in demands))
        ups.append(Up(p.name, p.supply + added, reason, demands[0].cause, kwargs))
    return tuple(ups)


# -- choosing workers to retire -------------------------------------------------------------


#: Idle workers within this fraction of their timeout go with those past it.
TOGETHER = 0.5


def choose_idle_workers(
    snapshot: Snapshot,
    supply: Supply,
    surplus: Mapping[str | None, int],
    now: float,
    memory_threshold: float | None = None,
    timeouts: Mapping[str | None, float] | None = None,
) -> tuple[dict[str | None, list[str]], float | None]:
    """Pick, per pool, up to ``surplus[pool]`` idle workers to retire, and when
    to look again.

    Candidates are workers idle for at least their pool's idle timeout
    (``timeouts``, by default each pool's ``idle_timeout``) and not held back; those of the dearest pools go first, within a pool
    those holding the least data, and no more go than keeps the stored data
    under ``memory_threshold`` of the remaining workers' memory (one worker
    always stays while there is data to hold). Costs O(idle workers past the
    shortest timeout), nothing when no worker may go, never a scan of all
    workers.

    Returns
    -------
    chosen
        Pool -> addresses to retire.
    deadline
        When the next idle worker's timeout runs out, or ``None``.
    """
    surplus = {pool: n for pool, n in surplus.items() if n > 0}
    budget = snapshot.workers - 1 if snapshot.stored_bytes else snapshot.workers
    if not surplus or budget <= 0:
        return {}, None  # only an event can change that: no deadline needed
    timeouts = timeouts if timeouts is not None else _idle_timeouts(supply)
    expired, deadline = _expired(snapshot, supply, surplus, timeouts, now)
    states = snapshot.worker_states
    chosen: dict[str | None, list[str]] = {}
    limit = snapshot.memory_limit
    for pool in _dearest_first(supply, expired):
        picked: list[str] = []
        memory_full = False
        for address in heapq.nsmallest(
            min(surplus[pool], budget), expired[pool], key=lambda a: states[a].nbytes
        ):
            remaining = limit - (states[address].memory_limit or 0)
            if (
                memory_threshold is not None
                and limit
                and snapshot.stored_bytes > (memory_threshold * remaining)
            ):
                memory_full = True
                break
            picked.append(address)
            limit = remaining
        if picked:
            chosen[pool] = picked
            budget -= len(picked)
        if memory_full:
            break
    return chosen, deadline


def _expired(
    snapshot: Snapshot,
    supply: Supply,
    surplus: Mapping[str | None, int],
    timeouts: Mapping[str | None, float],
    now: float,
) -> tuple[dict[str | None, list[str]], float | None]:
    """Per pool in ``surplus``, its connected idle workers whose timeout has
    run out and that are not held back, oldest first; and when the next
    timeout runs out.

    Workers whose timeout runs out within :data:`TOGETHER` of it go with
    those of their pool whose timeout has run out: a pool retires one batch
    at a time, so one by one they would each wait for the retirement before.

    Reads the idle workers oldest first and stops at the first one idle for
    less than the shortest timeout's early part. The loop runs once per idle
    worker that may go (10,000 when all may), so what it reads is bound to
    locals.
    """
    shortest = min(timeouts[pool] for pool in surplus)
    pool_of, held, states = supply.pool_of.get, supply.held.get, snapshot.worker_states
    expired: dict[str | None, list[str]] = {}
    nearly: dict[str | None, list[str]] = {}
    deadline = None
    for address, since in snapshot.idle.items():
        if since > now - shortest * (1 - TOGETHER):
            deadline = _earliest(deadline, since + shortest)
            break
        pool = pool_of(address)
        if pool not in surplus:
            continue
        ready = since + timeouts[pool]
        hold = held(address)
        if hold is not None and hold > ready:
            ready = hold  # held back: not retired before then
        if address not in states:
            continue
        if ready <= now:
            expired.setdefault(pool, []).append(address)
            continue
        deadline = _earliest(deadline, ready)
        if (hold is None or hold <= now) and ready - now <= TOGETHER * timeouts[pool]:
            nearly.setdefault(pool, []).append(address)
    for pool, workers in expired.items():
        workers += nearly.get(pool, ())
    return expired, deadline


def _idle_timeouts(supply: Supply) -> dict[str | None, float]:
    timeouts: dict[str | None, float] = {
        p.name: p.pool.idle_timeout for p in supply.pools
    }
    timeouts[None] = min(timeouts.values(), default=0.0)
    return timeouts


def _dearest_first(supply: Supply, pools: Mapping[str | None, Any]) -> list[str | None]:
    cost: dict[str | None, float] = {p.name: p.pool.cost for p in supply.pools}
    return sorted(pools, key=lambda pool: -cost.get(pool, math.inf))


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def downs_of(
    chosen: Mapping[str | None, list[str]],
    supply: Supply,
    why: str,
    cause: str = "idle",
    timeouts: Mapping[str | None, float] | None = None,
) -> tuple[Down, ...]:
    timeouts = timeouts if timeouts is not None else _idle_timeouts(supply)
    return tuple(
        Down(
            pool,
            tuple(workers),
            f"idle for {timeouts[pool]:.3g}s and not needed ({why})",
            cause,
        )
        for pool, workers in chosen.items()
    )


def surplus_of(allocation: Allocation, supply: Supply) -> dict[str | None, int]:
    """Per pool, workers beyond what the allocation keeps."""
    surplus: dict[str | None, int] = {
        p.name: p.supply - allocation.desired(p.name) for p in supply.pools
    }
    surplus[None] = supply.unmanaged - allocation.kept[None]
    return surplus


# -- the policies ------------------------------------------------------------------------------


class AdaptivePolicy(Policy):
    """Scale with the work, after the policy of Dask's adaptive deployments.

    - Size each resource class of runnable work (running and waiting,
      estimated per task prefix as the scheduler does) to finish within
      ``target_duration``, as soon as work waits; never more threads than
      it has tasks.
    - Grow by ``scale_factor`` when stored data passes ``memory_threshold``
      of the workers' memory limits.
    - Serve it from the pools that fit, cheapest first (:func:`allocate`).
    - Shrink by retiring the idle workers beyond that, the dearest pools'
      first, keeping memory under the threshold, once they have been idle
      for their pool's *retention* (:mod:`~dask_adaptive_plugin.retention`):
      the hold that would have cost least over the gaps in demand the pool
      has seen, pricing a second of makespan at the cluster's average cost
      rate and a worker given away at its share of a start-up's wait; never
      more than one start-up (at the cheapest pool's price) nor less than
      its ``idle_timeout``.
    - Never shrink a pool below the most it wanted within its *stabilization
      window*, ``stabilization`` times its retention (as Kubernetes' HPA
      does with a fixed window): a dip in demand shorter than that does not
      give its workers away.

    Parameters
    ----------
    target_duration
        How long the work in the scheduler should take (default ``"5s"``).
    scale_factor
        Growth factor under memory pressure (default 2).
    memory_threshold
        Fraction of the workers' memory limits that stored data may fill
        (default 0.5).
    stabilization
        The stabilization window in retentions (default 1; 0: none).
    retention
        ``"startup"`` (default): idle workers are kept for the retention
        above, which starts from the measured start-up latency;
        ``"idle-timeout"``: for each pool's ``idle_timeout`` alone, whatever
        a new worker takes to come (as distributed's ``Adaptive``).
    """

    RETENTIONS = ("startup", "idle-timeout")

    def __init__(
        self,
        *,
        target_duration: Any = "5s",
        scale_factor: Any = 2,
        memory_threshold: Any = 0.5,
        stabilization: Any = 1,
        retention: str = "startup",
    ) -> None:
        self.target_duration = parse_duration("target_duration", target_duration)
        if self.target_duration <= 0:
            raise invalid("target_duration", target_duration, "a duration > 0")
        self.scale_factor = _parse_number("scale_factor", scale_factor, "> 1", 1)
        self.memory_threshold = _parse_number(
            "memory_threshold", memory_threshold, "between 0 and 1", 0, 1
        )
        self.stabilization = _parse_number(
            "stabilization", stabilization, ">= 0", -1e-12
        )
        if retention not in self.RETENTIONS:
            raise invalid(
                "retention", retention, " or ".join(map(repr, self.RETENTIONS))
            )
        self.retention = retention
        self.retention_state = Retention()
        self.windows: dict[str, StabilizationWindow] = {}

    def decide(self, snapshot: Snapshot, supply: Supply, now: float) -> Plan:
        s = snapshot
        demands = [self.demand_of(need, s) for need in s.needs]
        memory, memory_why = self.memory_floor(s)
        floor = max(supply.minimum, memory)
        allocation = allocate(demands, supply, floor)
        if memory > supply.minimum:
            _rename_floor(allocation, memory_why, "memory")
        why = self.summary(s)
        desired = {p.name: allocation.desired(p.name) for p in supply.pools}
        if self.retention == "startup":
            self.retention_state.observe(now, _cost_rate(supply), desired)
        timeouts = self.timeouts(supply, now)
        surplus, window_ends = self.stabilized_surplus(
            allocation, supply, desired, timeouts, now
        )
        chosen, deadline = choose_idle_workers(
            s, supply, surplus, now, self.memory_threshold, timeouts
        )
        for end in window_ends:
            deadline = _earliest(deadline, end)
        return Plan(
            ups=ups_of(allocation, supply),
            downs=downs_of(chosen, supply, why, timeouts=timeouts),
            desired=desired,
            unsatisfiable=tuple(
                n for n in s.needs if n.resources in allocation.unsatisfiable
            ),
            reason=why,
            deadline=deadline,
        )

    def stabilized_surplus(
        self,
        allocation: Allocation,
        supply: Supply,
        desired: Mapping[str, int],
        timeouts: Mapping[str | None, float],
        now: float,
    ) -> tuple[dict[str | None, int], list[float]]:
        """Per pool, workers beyond the most it wanted within its window; and
        when windows that hold workers now end (to look again then).

        A pool's window is ``stabilization`` times its retention, once its
        start-up latency is measured (none before: nothing is known of what
        a replacement costs).
        """
        surplus = surplus_of(allocation, supply)
        ends = []
        for p in supply.pools:
            length = self.stabilization * timeouts[p.name] if p.startup else 0.0
            window = self.windows.setdefault(p.name, StabilizationWindow())
            most = window.add(now, desired[p.name], length)
            if most > desired[p.name] and surplus[p.name] > 0:
                surplus[p.name] = max(0, p.supply - most)
                ends.append(window.ends(length))
        return surplus, ends

    def timeouts(self, supply: Supply, now: float) -> dict[str | None, float]:
        """Per pool, how long an idle worker is kept: its retention
        (:mod:`~dask_adaptive_plugin.retention`), never less than its
        ``idle_timeout``; with ``retention="idle-timeout"``, that alone."""
        if self.retention != "startup":
            return _idle_timeouts(supply)
        hold = self.retention_state.hold
        cheapest = min((p.pool.cost for p in supply.pools), default=1.0)
        timeouts: dict[str | None, float] = {
            p.name: hold(
                p.name,
                now,
                p.startup,
                p.pool.cost,
                p.running,
                p.pool.idle_timeout,
                longest=(p.startup or 0.0) * cheapest / p.pool.cost,
            )
            for p in supply.pools
        }
        timeouts[None] = min(timeouts.values(), default=0.0)
        return timeouts

    def demand_of(self, need: Need, s: Snapshot) -> Demand:
        """Threads that finish ``need`` within the target duration."""
        threads = self.threads_for(need.seconds, need.tasks)
        waiting = need.seconds * need.waiting / need.tasks if need.tasks else 0.0
        waiting_threads = self.threads_for(waiting, need.waiting)
        queued = s.queued if s.queued and not s.idle else 0
        return Demand(
            need.resources,
            threads,
            partial(_need_reason, need, queued),
            waiting_threads=waiting_threads,
        )

    def threads_for(self, seconds: float, tasks: int) -> int:
        """Threads that run ``tasks`` taking ``seconds`` within the target
        duration: at least one, at most one per task."""
        if not tasks:
            return 0
        return min(max(1, math.ceil(seconds / self.target_duration)), tasks)

    def memory_floor(self, s: Snapshot) -> tuple[int, str]:
        """Workers the stored data calls for (0 below the threshold), and why."""
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

    @staticmethod
    def summary(s: Snapshot) -> str:
        if not s.runnable:
            return "no runnable tasks"
        return tasks(s.runnable, "runnable task")


class FixedPolicy(Policy):
    """Keep exactly ``n`` workers (default: the global ``minimum``).

    Lost workers are replaced; extra workers are retired once they have been
    idle for their pool's ``idle_timeout``. With several pools, the cheapest
    serve first.
    """

    def __init__(self, *, n: Any = None) -> None:
        self.n = None if n is None else parse_count("n", n)

    def decide(self, snapshot: Snapshot, supply: Supply, now: float) -> Plan:
        n = supply.minimum if self.n is None else self.n
        if supply.maximum is not None:
            n = min(n, supply.maximum)
        reason = f"fixed at {n} workers"
        allocation = allocate([], supply, n)
        _rename_floor(allocation, reason, "fixed")
        surplus = surplus_of(allocation, supply)
        total = (
            sum(allocation.desired(p.name) for p in supply.pools)
            + allocation.kept[None]
        )
        if total > n:  # pool minimums can ask for more than n: they win
            reason = f"{reason} (pool minimums keep {total})"
        chosen, deadline = choose_idle_workers(snapshot, supply, surplus, now)
        return Plan(
            ups=ups_of(allocation, supply),
            downs=downs_of(chosen, supply, reason, "idle"),
            desired={p.name: allocation.desired(p.name) for p in supply.pools},
            reason=reason,
            deadline=deadline,
        )


class StabilizationWindow:
    """The most a pool wanted over a sliding window: O(1) amortised per add.

    A deque of ``(time, desired)`` with desired strictly decreasing, so its
    first entry is the window's maximum.
    """

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()

    def add(self, now: float, desired: int, length: float) -> int:
        """Record ``desired`` at ``now``; the most within ``length`` seconds."""
        entries = self.entries
        while entries and entries[-1][1] <= desired:
            entries.pop()
        entries.append((now, desired))
        while len(entries) > 1 and entries[0][0] <= now - length:
            entries.popleft()  # the newest always stays: it is now
        return entries[0][1]

    def ends(self, length: float) -> float:
        """When the window's current maximum drops out of it."""
        return self.entries[0][0] + length


def _cost_rate(supply: Supply) -> float:
    """What the pools' connected workers cost per second, together."""
    return sum(p.running * p.pool.cost for p in supply.pools)


def _rename_floor(allocation: Allocation, reason: str, cause: str) -> None:
    """Growth for the global floor: say it was for ``reason``."""
    for demands in allocation.reasons.values():
        for i, d in enumerate(demands):
            if d.cause == "minimum" and d.reason.startswith("minimum is "):
                demands[i] = Demand(d.resources, d.threads, reason, cause, d.workers)


def _need_reason(need: Need, queued: int) -> str:
    """Why a need wants workers, in words."""
    work = f"~{need.seconds:.3g}s of work"
    if need.resources:
        wanted = ", ".join(f"{r}={a:g}" for r, a in need.resources.items())
        return f"{tasks(need.tasks, 'runnable task')} need {wanted}, {work}"
    why = f"{tasks(need.tasks, 'runnable task')}, {work}"
    if queued:
        waits = "waits" if queued == 1 else "wait"
        why = f"{tasks(queued, 'task')} {waits} for a worker; {why}"
    return why


def tasks(count: int, noun: str) -> str:
    """``"1 runnable task"``, ``"3 runnable tasks"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


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
