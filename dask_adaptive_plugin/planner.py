"""The decision logic between the policy and the backends, free of I/O.

The policy says what the cluster should look like; the :class:`Planner` turns
that into actions and keeps what must outlive one evaluation: the ledger of
supply, back-off after failures, crash counts, fallback cool-downs, and which
unsatisfiable needs were reported. It does no I/O and reads no clock: the
controller drives it with the real scheduler and asyncio, the simulator in
virtual time, through the same calls:

1. :meth:`Planner.evaluate` with a snapshot of demand: the actions to take
   now and when to evaluate again at the latest;
2. around each action, :meth:`starting` and :meth:`finished`;
3. :meth:`arrived` and :meth:`left` as workers connect and leave.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask_adaptive_plugin.ledger import (
    ON_THE_WAY,
    RETIRING,
    RUNNING,
    Departure,
    Entry,
    Ledger,
    Reconciled,
)
from dask_adaptive_plugin.policy import Down, Plan, Policy, PoolSupply, Supply, Up
from dask_adaptive_plugin.pools import Pool
from dask_adaptive_plugin.stats import Need, Snapshot

BACKOFF_START = 1.0
BACKOFF_CAP = 60.0
DOUBLINGS_TO_CAP = math.ceil(math.log2(BACKOFF_CAP / BACKOFF_START))
#: Consecutive crashes in a pool after which it is asked for no more workers
#: until new work is submitted.
CRASH_LIMIT = 5


@dataclass(frozen=True)
class Cancel:
    """Stop the workers of ``pool`` that are overdue (``Backend.cancel_pending``)."""

    pool: str
    entries: tuple[Entry, ...]
    reason: str


@dataclass(frozen=True)
class Forget:
    """Tell ``pool``'s backend that these workers crashed (``scale_down``), so
    that it frees their slots."""

    pool: str
    workers: tuple[str, ...]
    names: tuple[str, ...]


Action = Up | Down | Cancel | Forget


@dataclass(frozen=True)
class PoolRuntime:
    """A pool with what its backend instance says about itself."""

    pool: Pool
    #: The pool's ``maximum`` and the backend's own, the lower.
    maximum: int | None = None
    threads_per_worker: float = 1.0
    #: Whether the backend reports what it launched (``Backend.report``).
    reports: bool = False

    @property
    def name(self) -> str:
        return self.pool.name


@dataclass
class PoolState:
    """What must outlive one evaluation, per pool."""

    failures: int = 0
    not_before: float = -math.inf
    crashes: int = 0
    #: Unavailable (fallback cool-down) until then.
    cooldown_until: float = -math.inf
    #: Its crashed workers the backend has not been told about yet.
    crashed: list[Entry] = field(default_factory=list)


@dataclass(frozen=True)
class Hint:
    """A floor of ``n`` workers (in ``pool``, or in all) until ``until``."""

    n: int
    pool: str | None
    until: float


@dataclass(frozen=True)
class Evaluation:
    """One evaluation's outcome: what to do, and when to look again."""

    actions: tuple[Action, ...]
    deadline: float | None
    plan: Plan


def backoff(count: int) -> float:
    """Seconds to wait after ``count`` failures in a row: 1, 2, 4 ... 60.

    The exponent stops growing once the cap is reached: a pool that never
    delivers counts failures for as long as it runs, and ``2.0 ** 1024``
    overflows a float.
    """
    doublings = min(max(count - 1, 0), DOUBLINGS_TO_CAP)
    return min(BACKOFF_CAP, BACKOFF_START * 2**doublings)


class Planner:
    """Turns plans into actions; keeps supply, failures and cool-downs.

    Parameters
    ----------
    pools
        The pools, with what their backends say about themselves.
    policy
        Decides what the cluster should look like.
    record
        Called with each decision's record (a dict with ``status`` and
        ``reason``), to be kept in the plugin's log and as an event.
    minimum, maximum
        Bounds on all workers together.
    """

    def __init__(
        self,
        pools: Iterable[PoolRuntime],
        policy: Policy,
        record: Callable[[dict[str, Any]], None],
        minimum: int = 0,
        maximum: int | None = None,
    ) -> None:
        self.pools = sorted(pools, key=lambda p: p.pool.cost)
        self.by_name = {p.name: p for p in self.pools}
        self.policy = policy
        self.record = record
        self.minimum, self.maximum = minimum, maximum
        self.ledger = Ledger(self.by_name)
        self.state = {p.name: PoolState() for p in self.pools}
        #: Failures that belong to no pool (the policy raising).
        self.global_state = PoolState()
        #: Unsatisfiable needs reported, by their resources.
        self.unsatisfiable: dict[tuple[tuple[str, float], ...], Need] = {}
        self.last_plan = Plan()
        self.evaluations = 0
        #: Pools whose workers arrived without their declared resources.
        self.misconfigured: set[str] = set()
        #: Floors asked for by users who know what is coming.
        self.hints: list[Hint] = []
        #: Views reused between evaluations while the ledger does not change.
        self._pool_supplies: dict[str, tuple[tuple[Any, ...], PoolSupply]] = {}
        self._fits: dict[tuple[tuple[str, float], ...], tuple[int, ...]] = {}
        self._fits_version = -1

    # -- the view the policy gets -------------------------------------------------------

    def supply(self, now: float) -> Supply:
        """The policy's view of supply: built anew only where it changed."""
        ledger = self.ledger
        floors = self._floors(now)
        if ledger.version != self._fits_version:
            self._fits.clear()  # what a pool lacks may have changed
            self._fits_version = ledger.version
        return Supply(
            pools=tuple(self._pool_supply(p, now, floors.get(p.name, 0)) for p in self.pools),
            minimum=max(self.minimum, floors.get(None, 0)),
            maximum=self.maximum,
            unmanaged=ledger.count(None, RUNNING, RETIRING),
            pool_of=ledger.pool_of_address,
            held=ledger.held,
            fits=self._fits,
        )

    def _pool_supply(self, p: PoolRuntime, now: float, floor: int) -> PoolSupply:
        """One pool's view; the last one again if nothing it shows changed."""
        ledger, name = self.ledger, p.name
        key = (ledger.version, self.available(name, now), floor)
        cached = self._pool_supplies.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        running = ledger.count(name, RUNNING)
        latency = ledger.latency[name]
        view = PoolSupply(
            pool=p.pool,
            maximum=p.maximum,
            running=running,
            on_the_way=ledger.count(name, *ON_THE_WAY),
            retiring=ledger.count(name, RETIRING),
            threads_per_worker=(
                ledger.threads[name] / running if running else p.threads_per_worker
            )
            or 1.0,
            available=key[1],
            lacks=frozenset(ledger.lacks[name]),
            startup=latency.median,
            startup_p90=latency.p90,
            floor=floor,
        )
        self._pool_supplies[name] = (key, view)
        return view

    # -- hints --------------------------------------------------------------------------

    def request(self, n: int, pool: str | None, duration: float, now: float) -> Hint:
        """Keep at least ``n`` workers (in ``pool``, or in all pools) for
        ``duration`` seconds: a user who knows work is coming."""
        if pool is not None and pool not in self.by_name:
            raise ValueError(
                f"unknown pool {pool!r} in a request for workers; the pools are "
                f"{', '.join(self.by_name)}"
            )
        hint = Hint(n, pool, now + duration)
        self.hints.append(hint)
        where = f"pool {pool}" if pool is not None else "all pools"
        self.record(
            {
                "status": "request",
                "n": n,
                "pool": pool,
                "for": duration,
                "cause": "minimum",
                "reason": f"a client asked for at least {n} workers in {where} "
                f"for {duration:g}s",
            }
        )
        return hint

    def _floors(self, now: float) -> dict[str | None, int]:
        """The floors of the hints in force; expired ones are dropped, and said."""
        expired = [h for h in self.hints if h.until <= now]
        for hint in expired:
            self.hints.remove(hint)
            self.record(
                {
                    "status": "request-expired",
                    "n": hint.n,
                    "pool": hint.pool,
                    "reason": f"the request for {hint.n} workers has expired",
                }
            )
        floors: dict[str | None, int] = {}
        for hint in self.hints:
            floors[hint.pool] = max(hint.n, floors.get(hint.pool, 0))
        return floors

    def available(self, pool: str, now: float) -> bool:
        """Whether ``pool`` may be asked for workers now."""
        state = self.state[pool]
        return (
            now >= state.cooldown_until
            and now >= state.not_before
            and state.crashes < CRASH_LIMIT
        )

    # -- evaluating ------------------------------------------------------------------------

    def evaluate(
        self, snapshot: Snapshot, now: float, busy: Iterable[str] = ()
    ) -> Evaluation:
        """What to do now; pools in ``busy`` have an action running already."""
        self.evaluations += 1
        busy = set(busy)
        actions: list[Action] = []
        if self._housekeeping_due(now):
            for p in self.pools:
                if p.name in busy:
                    continue
                action = self._overdue(p, now) or self._forget_crashed(p)
                if action is not None:
                    actions.append(action)
                    busy.add(p.name)
        plan = self.policy.decide(snapshot, self.supply(now), now)
        self.global_state.failures = 0
        self.last_plan = plan
        self._report_unsatisfiable(plan, snapshot)
        for up in plan.ups:
            if up.pool not in busy and self.available(up.pool, now):
                actions.append(up)
                busy.add(up.pool)
        for down in plan.downs:
            if down.pool not in busy:
                actions.append(down)
                if down.pool is not None:
                    busy.add(down.pool)
        return Evaluation(tuple(actions), self._deadline(plan, now), plan)

    def _housekeeping_due(self, now: float) -> bool:
        """Whether a request is overdue or a crash unreported: O(1) mostly."""
        deadline = self.ledger.next_deadline()
        overdue = deadline is not None and deadline <= now
        return overdue or any(state.crashed for state in self.state.values())

    def _deadline(self, plan: Plan, now: float) -> float | None:
        deadlines = [plan.deadline, self.ledger.next_deadline()]
        deadlines += [hint.until for hint in self.hints]
        for name, state in self.state.items():
            for t in (state.not_before, state.cooldown_until):
                if t > now:
                    deadlines.append(t)
        upcoming = [d for d in deadlines if d is not None]
        return min(upcoming) if upcoming else None

    def _overdue(self, p: PoolRuntime, now: float) -> Cancel | None:
        overdue = self.ledger.overdue(p.name, now)
        if not overdue:
            return None
        reason = (
            f"{len(overdue)} requested workers did not connect within "
            f"{p.pool.start_timeout:g}s"
        )
        return Cancel(p.name, tuple(overdue), reason)

    def _forget_crashed(self, p: PoolRuntime) -> Forget | None:
        crashed, self.state[p.name].crashed = self.state[p.name].crashed, []
        if not crashed:
            return None
        return Forget(
            p.name,
            tuple(e.address for e in crashed if e.address),
            tuple(e.name for e in crashed if e.name),
        )

    def _report_unsatisfiable(self, plan: Plan, snapshot: Snapshot) -> None:
        """One event per need that no pool provides, until the need goes away."""
        current = {tuple(sorted(n.resources.items())): n for n in plan.unsatisfiable}
        for key, need in current.items():
            if key not in self.unsatisfiable:
                self.record(self._unsatisfiable_record(need))
        self.unsatisfiable = current
        # learned anew once the need is back
        self.ledger.forget_lacks({r for n in snapshot.needs for r in n.resources})

    def _unsatisfiable_record(self, need: Need) -> dict[str, Any]:
        provides = {
            p.name: (
                dict(p.pool.resources)
                if p.pool.resources is not None
                else f"undeclared; its workers arrived without {sorted(self.ledger.lacks[p.name])}"
            )
            for p in self.pools
        }
        wanted = ", ".join(f"{r}={a:g}" for r, a in need.resources.items())
        return {
            "status": "unsatisfiable",
            "needs": dict(need.resources),
            "tasks": need.tasks,
            "pools": provides,
            "cause": "unsatisfiable",
            "reason": f"{need.tasks} tasks need {wanted}, which no pool provides; "
            "no worker is asked for them",
        }

    # -- actions ---------------------------------------------------------------------------

    def starting(self, action: Action, now: float) -> list[Entry]:
        """Called before an action's backend call. For a scale-up: the ledger
        entries of the workers asked for (counted before the call, since
        workers may connect while it runs)."""
        if isinstance(action, Up):
            p = self.by_name[action.pool]
            supply = self.ledger.supply(action.pool)
            self.record(self._up_record(action, p))
            return self.ledger.request(
                action.pool,
                max(action.n - supply, 0),
                now,
                p.pool.start_timeout,
                action.kwargs,
            )
        return []

    def _up_record(self, up: Up, p: PoolRuntime) -> dict[str, Any]:
        ledger = self.ledger
        record: dict[str, Any] = {
            "status": "up",
            "pool": up.pool,
            "n": up.n,
            "reason": up.reason,
            "cause": up.cause,
            "workers": ledger.count(up.pool, RUNNING),
            "pending": ledger.count(up.pool, *ON_THE_WAY),
        }
        latency = ledger.latency[up.pool]
        if latency.count:
            record["startup"] = {"median": latency.median, "p90": latency.p90}
        if up.kwargs:
            record["kwargs"] = dict(up.kwargs)
        return record

    def finished(
        self,
        action: Action,
        now: float,
        requested: list[Entry] = (),  # type: ignore[assignment]
        report: Mapping[str, str] | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Called after an action's backend call, with the backend's report
        (``None`` if it cannot tell) and the error, if it failed."""
        pool = action.pool
        reconciled = None
        if pool is not None and report is not None:
            reconciled = self.reconcile(pool, report, now, not isinstance(action, Up))
        if isinstance(action, Cancel):
            self._cancelled(action, now, error)
        elif error is not None:
            if isinstance(action, Up) and report is None:
                self.ledger.cancel(requested, now, "scale_up failed")
            delay = self.failed(pool, _action_name(action), error, now)
            if isinstance(action, Down):  # tried again after the back-off
                self.ledger.kept(action.workers, until=now + delay)
        elif isinstance(action, Up) and reconciled is not None:
            self._check_launched(action, requested, reconciled, now)
        elif isinstance(action, Down) and pool is not None:
            self.state[pool].failures = 0

    def reconcile(
        self, pool: str, report: Mapping[str, str], now: float, cancelling: bool = False
    ) -> Reconciled:
        """Bring the ledger in line with what ``pool``'s backend reports.

        ``cancelling``: the backend was just asked to stop workers, so those
        it no longer lists were cancelled; otherwise they failed.
        """
        p = self.by_name[pool]
        reconciled = self.ledger.reconcile(
            pool, report, now, p.pool.start_timeout, cancelling
        )
        if reconciled.vanished and not cancelling:
            self._vanished(pool, reconciled.vanished, now)
        return reconciled

    # -- retiring ------------------------------------------------------------------------

    def retiring(
        self, down: Down, eligible: list[str], workers: list[str], now: float
    ) -> list[str]:
        """Before moving data away: of the chosen workers, those ``eligible``
        now, and of them the ``workers`` that go (whole batch jobs).

        A worker not eligible (a veto, a running task) is not chosen again
        before another idle timeout; one whose batch-job mates are not idle
        long enough yet keeps its place, to be chosen with them later.
        Returns the workers to retire, now marked retiring.
        """
        hold_until = now + self.idle_timeout(down.pool)
        self.ledger.kept(set(down.workers) - set(eligible), until=hold_until)
        self.ledger.retiring(workers)
        return workers

    def retired(
        self,
        down: Down,
        workers: list[str],
        retired: list[str],
        why_kept: str,
        now: float,
    ) -> None:
        """After moving data away: ``retired`` go, the others are kept (and
        held for an idle timeout); both are recorded."""
        kept = sorted(set(workers) - set(retired))
        self.ledger.kept(kept, until=now + self.idle_timeout(down.pool))
        if kept:
            self.record(
                {"status": "kept", "pool": down.pool, "workers": kept, "reason": why_kept}
            )
        if retired:
            self.record(
                {
                    "status": "down",
                    "pool": down.pool,
                    "workers": list(retired),
                    "reason": down.reason,
                    "cause": down.cause,
                }
            )

    def idle_timeout(self, pool: str | None) -> float:
        """A pool's idle timeout; for workers no pool claims, the shortest."""
        p = self.by_name.get(pool) if pool is not None else None
        if p is not None:
            return p.pool.idle_timeout
        return min((q.pool.idle_timeout for q in self.pools), default=0.0)

    def _check_launched(
        self, up: Up, requested: list[Entry], reconciled: Reconciled, now: float
    ) -> None:
        """A backend that reports and launched none of what it was asked for is
        failing (or full): back off, never spin. If it still counts workers
        that have left (their process is ending), that is no failure: it is
        asked again shortly, quietly."""
        if not requested or any(e.name is not None for e in requested):
            return
        if reconciled.lingering:
            self.state[up.pool].not_before = now + BACKOFF_START
            return
        self.failed(
            up.pool,
            "scale_up",
            RuntimeError(
                f"the backend launched none of the {len(requested)} workers asked for"
            ),
            now,
        )

    def _cancelled(
        self, cancel: Cancel, now: float, error: BaseException | None
    ) -> None:
        """Overdue workers were cancelled: the pool falls back for a cool-down."""
        self.ledger.cancel(cancel.entries, now, cancel.reason)
        state = self.state[cancel.pool]
        state.failures += 1
        p = self.by_name[cancel.pool]
        cooldown = max(p.pool.start_timeout, backoff(state.failures))
        state.cooldown_until = now + cooldown
        message = cancel.reason
        if error is not None:
            message = (
                f"{message}; cancelling them failed: {type(error).__name__}: {error}"
            )
        fallback = self._fallback_pool(cancel)
        self.record(
            {
                "status": "error",
                "action": "start",
                "pool": cancel.pool,
                "error": f"TimeoutError: {message}",
                "failures": state.failures,
                "retry_in": cooldown,
                "reason": f"pool {cancel.pool} did not deliver; not asked again "
                f"for {cooldown:g}s",
            }
        )
        if fallback is not None:
            self.record(
                {
                    "status": "fallback",
                    "pool": cancel.pool,
                    "to": fallback,
                    "cause": "fallback",
                    "until": state.cooldown_until,
                    "reason": f"pool {cancel.pool} did not deliver within its "
                    f"start_timeout of {p.pool.start_timeout:g}s; its work goes "
                    f"to pool {fallback} for {cooldown:g}s",
                }
            )

    def _fallback_pool(self, cancel: Cancel) -> str | None:
        """The next pool that fits what the overdue workers were asked for."""
        needs = cancel.entries[0].resources if cancel.entries else {}
        after = False
        for p in self.pools:
            if p.name == cancel.pool:
                after = True
            elif after and p.pool.fits(needs, frozenset(self.ledger.lacks[p.name])):
                return p.name
        return next(
            (
                p.name
                for p in self.pools
                if p.name != cancel.pool and p.pool.fits(needs)
            ),
            None,
        )

    def _vanished(self, pool: str, entries: list[Entry], now: float) -> None:
        names = ", ".join(e.name or "?" for e in entries)
        self.failed(
            pool,
            "start",
            RuntimeError(
                f"{len(entries)} workers ended before they connected ({names})"
            ),
            now,
        )

    # -- failures ------------------------------------------------------------------------------

    def failed(
        self, pool: str | None, what: str, error: BaseException, now: float
    ) -> float:
        """Record a failure and wait longer after each one in a row, per pool.

        Crashes count on their own: asking for workers succeeds while the
        workers keep dying, and that must slow down too. Returns the delay.
        """
        state = self.state[pool] if pool is not None else self.global_state
        state.failures += 1
        count = state.crashes if what == "worker" else state.failures
        delay = backoff(count)
        state.not_before = now + delay
        reason = f"{what} failed; retrying after back-off"
        if state.crashes >= CRASH_LIMIT:
            reason = (
                f"{state.crashes} workers in a row exited soon after starting; "
                "no more are asked for until new work is submitted"
            )
        record = {
            "status": "error",
            "action": what,
            "error": f"{type(error).__name__}: {error}",
            "failures": count,
            "retry_in": delay,
            "reason": reason,
        }
        if pool is not None:
            record["pool"] = pool
        self.record(record)
        return delay

    def new_work(self) -> None:
        """A graph arrived: a user wants work done, so crashes are forgiven."""
        for state in self.state.values():
            if state.crashes >= CRASH_LIMIT:
                state.crashes = 0
                state.failures = 0
                state.not_before = -math.inf

    # -- workers coming and going ---------------------------------------------------------------

    def arrived(
        self,
        address: str,
        name: str,
        resources: Mapping[str, float],
        nthreads: int,
        now: float,
        busy: Iterable[str] = (),
    ) -> Entry:
        """A worker connected. ``busy``: pools with an action running, whose
        backend may not have named its new workers yet."""
        unnamed_from = [p.name for p in self.pools if not p.reports or p.name in busy]
        entry = self.ledger.arrived(
            address, name, resources, nthreads, now, unnamed_from
        )
        if entry.pool is not None:
            # only an arrival proves that asking for workers works
            state = self.state[entry.pool]
            state.failures = 0
            state.not_before = state.cooldown_until = -math.inf
            self._check_declared_resources(entry.pool, name, resources)
        return entry

    def _check_declared_resources(
        self, pool: str, name: str, resources: Mapping[str, float]
    ) -> None:
        """Say once per pool if its workers lack what the pool declares: its
        backend does not give the workers their ``--resources``."""
        declared = self.by_name[pool].pool.resources
        if not declared or pool in self.misconfigured:
            return
        missing = {r: a for r, a in declared.items() if resources.get(r, 0) < a}
        if missing:
            self.misconfigured.add(pool)
            self.record(
                {
                    "status": "error",
                    "action": "resources",
                    "pool": pool,
                    "error": f"worker {name} has resources {dict(resources)}",
                    "reason": f"pool {pool} declares resources {dict(declared)} but "
                    f"its worker {name} arrived without {missing}: tasks that need "
                    "them cannot run there; check that its backend passes the "
                    "pool's resources to the workers",
                }
            )

    def left(self, address: str, now: float) -> Departure | None:
        """A worker left; a crash frees its slot at once and backs its pool off."""
        pool = self.ledger.pool_of(address)
        timeout = self.by_name[pool].pool.start_timeout if pool in self.by_name else 0.0
        departure = self.ledger.left(address, now, timeout)
        if departure is None or departure.entry.pool is None:
            return departure
        state = self.state[departure.entry.pool]
        if not departure.crashed:
            if departure.lifetime > 30 and departure.entry.leaving is None:
                state.crashes = 0
            return departure
        state.crashes += 1
        state.crashed.append(departure.entry)
        self.failed(
            departure.entry.pool,
            "worker",
            RuntimeError(f"{address} {departure.entry.why}"),
            now,
        )
        return departure


def _action_name(action: Action) -> str:
    return {Up: "scale_up", Down: "retire", Cancel: "cancel", Forget: "scale_down"}[
        type(action)
    ]
