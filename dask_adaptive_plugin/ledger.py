"""Supply: one entry per requested worker, per pool, with its state.

The ledger is the one record of the workers the plugin asked for::

    requested ─► launching ─► running ─► retiring ─► gone
        │            │           │
        └────────────┴───────────┴─► failed (never connected in time, crashed)

- *requested*: asked of the pool's backend; the backend has not said yet
  which worker it launched for it (seed backends never say: their entries
  stay requested until a worker connects).
- *launching*: the backend reported it by name (a job queued, a Pod created,
  a process started) and it has not connected yet.
- *running*: connected to the scheduler.
- *retiring*: its data is being moved away before it is stopped.

Three sources feed it: the controller (requests, cancellations, retirements),
the scheduler's hooks (arrivals, departures) and the backends, whose
:meth:`~dask_adaptive_plugin.Backend.report` the ledger reconciles with its
own view. Time is passed in (monotonic seconds); nothing here does I/O, so the
simulator drives the same ledger in virtual time.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dask_adaptive_plugin.metrics import STARTUP_BUCKETS, Histogram

REQUESTED = "requested"
LAUNCHING = "launching"
RUNNING = "running"
RETIRING = "retiring"
GONE = "gone"
FAILED = "failed"
#: States that count as supply: what the pool has or will have.
LIVE = (REQUESTED, LAUNCHING, RUNNING, RETIRING)
ON_THE_WAY = (REQUESTED, LAUNCHING)

#: A worker that leaves on its own this soon after it connected has crashed.
CRASH_WINDOW = 30.0
#: Ended entries kept, so that a worker that left can still be named.
ENDED_KEPT = 1000
#: Start-up latencies kept per pool for its median and 90th percentile.
LATENCY_SAMPLES = 200


@dataclass(eq=False)
class Entry:
    """One worker the plugin asked for (or found connected).

    Times are monotonic seconds. ``pool`` is ``None`` for a worker that no
    pool claims (one started by hand).
    """

    pool: str | None
    state: str
    requested: float
    deadline: float
    resources: Mapping[str, float] = field(default_factory=dict)
    name: str | None = None
    address: str | None = None
    launched: float | None = None
    connected: float | None = None
    ended: float | None = None
    #: Why it ended (gone or failed).
    why: str = ""
    #: An expected departure under way: "restart" (it comes back under its
    #: name) or "retirement"; such a departure is never a crash.
    leaving: str | None = None
    nthreads: int = 0
    #: The request it was asked in (``None``: adopted, not asked for).
    request: Request | None = None
    id: int = field(default_factory=itertools.count().__next__)


#: Start-up latencies sampled from one request at most.
SAMPLES_PER_REQUEST = 20


class Request:
    """One call for workers: how many, and how many of them have connected."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.arrived = 0
        self.every = max(1, size // SAMPLES_PER_REQUEST)

    def sampled(self) -> bool:
        """Count an arrival; whether its latency is one of the samples."""
        self.arrived += 1
        return (self.arrived - 1) % self.every == 0


@dataclass(frozen=True)
class Departure:
    """What a worker's leaving meant."""

    entry: Entry
    #: It left on its own within :data:`CRASH_WINDOW` of connecting.
    crashed: bool
    lifetime: float


@dataclass(frozen=True)
class Reconciled:
    """What a backend's report changed."""

    launched: int = 0
    vanished: list[Entry] = field(default_factory=list)
    not_launched: int = 0
    #: Workers that left the scheduler but that the backend still counts
    #: (their process or job is ending).
    lingering: int = 0


class Latency:
    """Start-up latencies (request to connect) of one pool: median and p90."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._sorted: list[float] = []
        self.count = 0

    def add(self, seconds: float) -> None:
        if len(self.samples) == self.samples.maxlen:
            self._sorted.pop(bisect.bisect_left(self._sorted, self.samples[0]))
        self.samples.append(seconds)
        bisect.insort(self._sorted, seconds)
        self.count += 1

    def quantile(self, q: float) -> float | None:
        if not self._sorted:
            return None
        return self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))]

    @property
    def median(self) -> float | None:
        return self.quantile(0.5)

    @property
    def p90(self) -> float | None:
        return self.quantile(0.9)


class Ledger:
    """Every worker asked for, per pool, with its state and timestamps.

    Parameters
    ----------
    pools
        The pool names.
    """

    def __init__(self, pools: Iterable[str]) -> None:
        self.pools = list(pools)
        self.counts: dict[str | None, Counter[str]] = {p: Counter() for p in self.pools}
        self.counts[None] = Counter()
        self.threads: Counter[str | None] = Counter()
        #: Changes whenever a count, a pool's threads or what it lacks change,
        #: so that a view built from them can be reused until then.
        self.version = 0
        self.latency: dict[str, Latency] = {p: Latency() for p in self.pools}
        #: The same latencies in buckets, for metrics.
        self.startup = {p: Histogram(STARTUP_BUCKETS) for p in self.pools}
        #: Resources that workers asked of a pool arrived without.
        self.lacks: dict[str, set[str]] = {p: set() for p in self.pools}
        #: address -> no retirement before (monotonic), for workers that could
        #: not be retired when chosen (a veto, a batch job not idle as a whole).
        self.held: dict[str, float] = {}
        self._by_name: dict[str, Entry] = {}
        self._by_address: dict[str, Entry] = {}
        #: address -> pool of every connected worker (``None``: no pool): a
        #: plain dict, for the policy's per-worker lookups.
        self.pool_of_address: dict[str, str | None] = {}
        #: Requested entries the backend has not named yet, oldest first.
        self._unnamed: dict[str, deque[Entry]] = {p: deque() for p in self.pools}
        #: Entries on their way, by request order (so by deadline) per pool.
        self._on_the_way: dict[str, deque[Entry]] = {p: deque() for p in self.pools}
        self._ended: dict[str, Entry] = {}
        self._ended_names: dict[str, Entry] = {}

    # -- reading ---------------------------------------------------------------------

    def count(self, pool: str | None, *states: str) -> int:
        counts = self.counts[pool]
        return sum(counts[s] for s in states)

    def supply(self, pool: str) -> int:
        """Workers of ``pool`` running or on their way (what ``n`` counts)."""
        return self.count(pool, *LIVE)

    def pool_of(self, address: str) -> str | None:
        entry = self._by_address.get(address)
        return entry.pool if entry is not None else None

    @property
    def by_address(self) -> Mapping[str, Entry]:
        """Connected workers (running or retiring) by address: a live view."""
        return self._by_address

    def entry(self, name: str) -> Entry | None:
        return self._by_name.get(name)

    def name_of(self, address: str) -> str | None:
        """The name of a worker, connected or recently gone."""
        entry = self._by_address.get(address) or self._ended.get(address)
        return entry.name if entry is not None else None

    def entries(self, pool: str | None = None) -> list[Entry]:
        """The live entries (of one pool, or all)."""
        live = {e.id: e for e in self._by_name.values()}
        live.update((e.id, e) for e in self._by_address.values())
        for queue in self._unnamed.values():
            live.update((e.id, e) for e in queue)
        return [e for e in live.values() if pool is None or e.pool == pool]

    def next_deadline(self) -> float | None:
        """When the earliest worker on its way becomes overdue."""
        deadlines = [q[0].deadline for q in map(self._prune, self.pools) if q]
        return min(deadlines) if deadlines else None

    def overdue(self, pool: str, now: float) -> list[Entry]:
        """Entries of ``pool`` on their way past their deadline.

        Deadlines follow request order, so the look stops at the first entry
        not yet due: a large request that never delivers costs nothing until
        its deadline.
        """
        overdue = []
        for entry in self._prune(pool):
            if entry.state not in ON_THE_WAY:
                continue
            if entry.deadline > now:
                break
            overdue.append(entry)
        return overdue

    def _prune(self, pool: str) -> deque[Entry]:
        queue = self._on_the_way[pool]
        while queue and queue[0].state not in ON_THE_WAY:
            queue.popleft()
        return queue

    # -- the controller: requests -----------------------------------------------

    def request(
        self,
        pool: str,
        count: int,
        now: float,
        timeout: float,
        resources: Mapping[str, float] | None = None,
    ) -> list[Entry]:
        """``count`` more workers were asked of ``pool``'s backend."""
        batch = Request(count)
        entries = [
            Entry(pool, REQUESTED, now, now + timeout, dict(resources or {}), request=batch)
            for _ in range(count)
        ]
        for entry in entries:
            self._count_new(pool)
            self._unnamed[pool].append(entry)
            self._on_the_way[pool].append(entry)
        return entries

    def cancel(self, entries: Iterable[Entry], now: float, why: str) -> None:
        """These entries on their way were given up on (overdue, cancelled)."""
        for entry in entries:
            if entry.state in ON_THE_WAY:
                self._end(entry, FAILED, now, why)

    def drop_unnamed(self, pool: str, now: float, why: str) -> int:
        """Requested entries the backend did not launch: they leave the ledger."""
        queue = self._unnamed[pool]
        dropped = 0
        while queue:
            entry = queue.popleft()
            if entry.state == REQUESTED:
                self._end(entry, GONE, now, why)
                dropped += 1
        return dropped

    # -- the backends: what they launched -----------------------------------------

    def reconcile(
        self,
        pool: str,
        report: Mapping[str, str],
        now: float,
        timeout: float,
        cancelling: bool = False,
    ) -> Reconciled:
        """Bring ``pool`` in line with what its backend reports.

        ``report`` maps each worker name the backend launched and has not
        stopped to ``"pending"`` or ``"running"``. A name the ledger does not
        know takes the oldest unnamed request of the pool, or becomes an entry
        of its own (a worker an earlier run left, adopted by the backend).
        Entries of the pool that have not connected and that the report no
        longer lists have ended: cancelled if ``cancelling`` (the controller
        just asked the backend to stop them), else failed. Unnamed requests
        left over were not launched.
        """
        launched = lingering = 0
        for name in report:
            entry = self._by_name.get(name)
            if entry is None and name in self._ended_names:
                lingering += 1  # it left the scheduler; its process is ending
                continue
            if entry is None or entry.state not in LIVE:
                entry = self._name_unnamed(pool, name, now, timeout)
                launched += 1
            elif entry.pool != pool:
                self._move_pool(entry, pool)
            if entry.state == REQUESTED:
                self._move(entry, LAUNCHING)
                entry.launched = now
        vanished = [
            e
            for e in list(self._on_the_way[pool])
            if e.state == LAUNCHING and e.name not in report
        ]
        for entry in vanished:
            why = "cancelled" if cancelling else "ended before it connected"
            self._end(entry, GONE if cancelling else FAILED, now, why)
        not_launched = self.drop_unnamed(pool, now, "not launched by the backend")
        return Reconciled(launched, vanished, not_launched, lingering)

    def _name_unnamed(self, pool: str, name: str, now: float, timeout: float) -> Entry:
        queue = self._unnamed[pool]
        while queue and queue[0].state != REQUESTED:
            queue.popleft()
        if queue:
            entry = queue.popleft()
        else:  # not asked for by this run: adopted from an earlier one
            entry = Entry(pool, REQUESTED, now, now + timeout)
            self._count_new(pool)
            self._on_the_way[pool].append(entry)
        entry.name = name
        self._by_name[name] = entry
        return entry

    # -- the scheduler: arrivals and departures ------------------------------------

    def arrived(
        self,
        address: str,
        name: str,
        resources: Mapping[str, float],
        nthreads: int,
        now: float,
        unnamed_from: Iterable[str] = (),
    ) -> Entry:
        """A worker connected. Returns its entry.

        A worker is attributed to its pool by its name (reported by the
        backend, or starting with ``"<pool>-"``); otherwise it takes the
        oldest unnamed request of the pools in ``unnamed_from`` (backends that
        do not report, and those in the middle of ``scale_up``). A worker no
        pool claims is kept with pool ``None``.
        """
        entry = self._by_name.get(name)
        if entry is None or entry.state not in LIVE:
            entry = self._claim(name, now, unnamed_from)
        if entry.address is not None:
            self._by_address.pop(entry.address, None)
            self.pool_of_address.pop(entry.address, None)
        if entry.state in ON_THE_WAY:
            if entry.pool is not None and entry.connected is None:
                self._measure(entry, now - entry.requested)
            self._move(entry, RUNNING)
        entry.address, entry.connected, entry.leaving = address, now, None
        entry.nthreads = nthreads
        self.threads[entry.pool] += nthreads
        self.version += 1
        self._by_address[address] = entry
        self.pool_of_address[address] = entry.pool
        self._learn_lacks(entry, resources)
        return entry

    def _claim(self, name: str, now: float, unnamed_from: Iterable[str]) -> Entry:
        pool = next((p for p in self.pools if name.startswith(f"{p}-")), None)
        candidates = [pool] if pool is not None else list(unnamed_from)
        queues = [q for q in map(self._live_unnamed, candidates) if q]
        if queues:
            entry = min(queues, key=lambda q: q[0].requested).popleft()
        else:
            entry = Entry(pool, REQUESTED, now, now)
            self._count_new(pool)
        entry.name = name
        self._by_name[name] = entry
        return entry

    def _live_unnamed(self, pool: str) -> deque[Entry]:
        queue = self._unnamed.get(pool, deque())
        while queue and queue[0].state != REQUESTED:
            queue.popleft()
        return queue

    def _measure(self, entry: Entry, seconds: float) -> None:
        """A first connection's start-up latency: every one counts for
        metrics; for the median and p90, each request gives a sample spread
        evenly over its arrivals (a request of thousands arrives slowest last,
        and the last arrivals alone would say the pool is slower than it is).
        Workers adopted from an earlier run say nothing of it."""
        assert entry.pool is not None
        request = entry.request
        if request is None:
            return
        self.startup[entry.pool].observe(seconds)
        if request.sampled():
            self.latency[entry.pool].add(seconds)

    def _learn_lacks(self, entry: Entry, resources: Mapping[str, float]) -> None:
        if entry.pool is None:
            return
        missing = {r for r, a in entry.resources.items() if resources.get(r, 0) < a}
        if not missing <= self.lacks[entry.pool]:
            self.lacks[entry.pool] |= missing
            self.version += 1

    def forget_lacks(self, needed: set[str]) -> None:
        """Forget what pools lack, but for resources still ``needed``: a need
        that went away and comes back is tried again."""
        for lacks in self.lacks.values():
            if not lacks <= needed:
                lacks &= needed
                self.version += 1

    def left(self, address: str, now: float, timeout: float = 0.0) -> Departure | None:
        """A worker left the scheduler. ``timeout``: how long one that is
        restarting may take to come back."""
        entry = self._by_address.pop(address, None)
        self.pool_of_address.pop(address, None)
        self.held.pop(address, None)
        if entry is None:
            return None
        self.threads[entry.pool] -= entry.nthreads
        self.version += 1
        lifetime = now - (entry.connected or now)
        self._ended[address] = entry
        if entry.leaving == "restart" and entry.pool is not None:
            self._move(entry, LAUNCHING)  # its nanny brings it back under its name
            entry.deadline = now + timeout
            self._on_the_way[entry.pool].append(entry)
            return Departure(entry, False, lifetime)
        if entry.state == RETIRING or entry.leaving is not None:
            self._end(entry, GONE, now, "retired")
            return Departure(entry, False, lifetime)
        crashed = lifetime < CRASH_WINDOW and entry.pool is not None
        if crashed:
            self._end(entry, FAILED, now, f"exited {lifetime:.1f}s after it connected")
        else:
            self._end(entry, GONE, now, "left the scheduler")
        return Departure(entry, crashed, lifetime)

    def expect_departure(self, address: str, why: str) -> None:
        """This worker is about to leave on purpose: a restart, a retirement."""
        entry = self._by_address.get(address)
        if entry is not None:
            entry.leaving = why

    def restarting(self) -> None:
        """Every connected worker is being restarted (``client.restart()``)."""
        for entry in self._by_address.values():
            entry.leaving = "restart"

    # -- retirement -------------------------------------------------------------------

    def retiring(self, addresses: Iterable[str]) -> None:
        for address in addresses:
            entry = self._by_address.get(address)
            if entry is not None and entry.state == RUNNING:
                self._move(entry, RETIRING)

    def kept(self, addresses: Iterable[str], until: float) -> None:
        """Workers that were not retired after all stay, held until ``until``."""
        for address in addresses:
            entry = self._by_address.get(address)
            if entry is None:
                continue
            if entry.state == RETIRING:
                self._move(entry, RUNNING)
            entry.leaving = None
            self.held[address] = until

    # -- bookkeeping --------------------------------------------------------------------

    def _count_new(self, pool: str | None) -> None:
        self.counts[pool][REQUESTED] += 1
        self.version += 1

    def _move(self, entry: Entry, state: str) -> None:
        self.version += 1
        counts = self.counts[entry.pool]
        counts[entry.state] -= 1
        counts[state] += 1
        entry.state = state

    def _move_pool(self, entry: Entry, pool: str) -> None:
        self.version += 1
        self.counts[entry.pool][entry.state] -= 1
        self.counts[pool][entry.state] += 1
        if entry.address is not None:
            self.threads[entry.pool] -= entry.nthreads
            self.threads[pool] += entry.nthreads
            if entry.address in self.pool_of_address:
                self.pool_of_address[entry.address] = pool
        entry.pool = pool

    def _end(self, entry: Entry, state: str, now: float, why: str) -> None:
        self._move(entry, state)
        self.counts[entry.pool][state] -= 1  # ended entries are not counted
        entry.ended, entry.why = now, why
        if entry.name is not None and self._by_name.get(entry.name) is entry:
            del self._by_name[entry.name]
        if entry.address is not None:  # it had connected: remember who it was
            self._ended[entry.address] = entry
            self._ended_names[entry.name or entry.address] = entry
            for ended in (self._ended, self._ended_names):
                while len(ended) > ENDED_KEPT:
                    del ended[next(iter(ended))]
