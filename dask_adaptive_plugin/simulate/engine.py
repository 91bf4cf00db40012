"""The simulation: a scheduler, backends and the controller's loop, in virtual time.

One heap of events, each at a virtual time: work arriving, tasks finishing,
workers connecting, evaluations. The decision logic is the real one: a
:class:`~dask_adaptive_plugin.planner.Planner` with the real policy and
ledger, driven through the calls the controller makes
(:mod:`dask_adaptive_plugin.controller`), in the same order:

- every event pokes; an evaluation runs at once after a quiet spell, at
  least ``MIN_GAP`` after the previous one, after every other event of the
  same instant (a burst of events is one evaluation), and at the deadline
  the evaluation names;
- around each action ``planner.starting`` and ``planner.finished`` with the
  backend's ``report()``; a retirement goes through ``planner.retiring`` and
  ``planner.retired``; workers connecting and leaving are
  ``planner.arrived`` and ``planner.left``; new work is ``planner.new_work``.

The simulated scheduler gives each worker ``nthreads`` slots and its pool's
resources, and starts tasks first in, first out per resource class on free
threads of workers that fit (the cheapest pool's first, within a pool the
worker free the longest); a freed thread takes
the oldest waiting task it fits. A chain's next task starts on the worker of
its predecessor (its data is there). Durations are estimated per task prefix
as the scheduler estimates them (0.5 s, ``unknown-task-duration``, until a
task of the prefix finishes; then a moving average). Backend calls take no
virtual time; a worker connects after its pool's sampled latency.

Everything is counted in aggregate: a batch of tasks that start together on
a worker and take the same time is one event.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from dask_adaptive_plugin.backend import PENDING, RUNNING
from dask_adaptive_plugin.controller import MIN_GAP
from dask_adaptive_plugin.ledger import ON_THE_WAY
from dask_adaptive_plugin.planner import Action, Cancel, Forget, Planner
from dask_adaptive_plugin.policy import Down, Up
from dask_adaptive_plugin.pools import Pool
from dask_adaptive_plugin.simulate.distributions import Fixed
from dask_adaptive_plugin.simulate.report import (
    Histogram,
    PoolFigures,
    SimulationResult,
    Timeline,
)
from dask_adaptive_plugin.simulate.settings import Settings, SimulatedPool
from dask_adaptive_plugin.simulate.workload import (
    Arrival,
    Cell,
    ResourceClass,
    TaskSpec,
    Workload,
)
from dask_adaptive_plugin.stats import Need, Snapshot

# Event kinds, and their order at equal times: what happens first, then the
# decisions about it (as an evaluation runs after the callbacks already due).
ARRIVE, CELL, COMPLETE, CONNECT, EVALUATE, TIMER = range(6)
HAPPENS, DECIDES = 0, 1
#: Amounts of resources compare with this slack (sums of fractions).
EPSILON = 1e-9
#: Decision records kept in the result's log.
LOG_KEPT = 1000

Batch = tuple["Worker", "TaskClass", TaskSpec, int, float, "Cell | None"]


class Worker:
    """A simulated worker: threads, resources, what it runs."""

    __slots__ = (
        "address",
        "available",
        "connected",
        "free",
        "name",
        "nthreads",
        "pool",
        "running",
        "shape",
    )
    #: What a policy reads of a ``WorkerState``: no data is simulated.
    nbytes = 0
    memory_limit = 0

    def __init__(
        self, name: str, pool: str, nthreads: int, resources: Mapping[str, float],
        shape: Shape, now: float,
    ) -> None:
        self.address = f"sim://{name}"
        self.name, self.pool, self.nthreads = name, pool, nthreads
        self.free = nthreads
        self.available = dict(resources)
        self.running = 0
        self.connected = now
        self.shape = shape


class TaskClass:
    """Runnable tasks of one resource class: a queue, and counts per prefix."""

    __slots__ = (
        "key",
        "needs",
        "prefixes",
        "queue",
        "queued",
        "resources",
        "running",
        "shapes",
    )

    def __init__(self, key: ResourceClass) -> None:
        self.key = key
        self.needs = key
        self.resources = dict(key)
        self.queue: deque[list[Any]] = deque()  # [runnable since, count, spec, cell]
        self.queued = 0
        self.running = 0
        #: prefix -> runnable tasks (waiting and running)
        self.prefixes: dict[str, int] = {}
        #: shapes whose workers fit, cheapest pool first
        self.shapes: list[Shape] = []


class Shape:
    """Workers alike (threads and resources): which classes they fit, and
    which of them have room for each class, oldest first."""

    __slots__ = ("classes", "cost", "ready", "resources")

    def __init__(self, resources: Mapping[str, float], cost: float) -> None:
        self.resources = dict(resources)
        self.cost = cost
        self.classes: list[TaskClass] = []
        self.ready: dict[TaskClass, OrderedDict[Worker, None]] = {}

    def fits(self, cls: TaskClass) -> bool:
        return all(self.resources.get(r, 0) + EPSILON >= a for r, a in cls.needs)


class Launch:
    """A worker a simulated backend launched."""

    __slots__ = ("cancelled", "connected", "name", "resources")

    def __init__(self, name: str, resources: Mapping[str, float]) -> None:
        self.name, self.resources = name, resources
        self.connected = self.cancelled = False


class SimulatedBackend:
    """A pool's backend: launches workers that connect after a sampled
    latency (or never), reports them by name, stops them at once."""

    def __init__(
        self, engine: Engine, pool: Pool, simulated: SimulatedPool, rng: random.Random
    ) -> None:
        self.engine, self.pool, self.simulated, self.rng = engine, pool, simulated, rng
        self.launched: dict[str, Launch] = {}
        self.pending: dict[str, Launch] = {}
        self._report: dict[str, str] = {}
        self._view = MappingProxyType(self._report)
        self.serial = 0
        self.requested = self.never = self.cancelled = 0

    def scale_up(self, n: int, **kwargs: Any) -> None:
        """Launch workers until ``n`` are launched and not stopped."""
        declared = self.pool.resources
        resources = dict(declared) if declared is not None else {
            r: float(a) for r, a in kwargs.items()
        }
        for _ in range(n - len(self.launched)):
            self.serial += 1
            launch = Launch(f"{self.pool.name}-{self.serial}", resources)
            self.launched[launch.name] = self.pending[launch.name] = launch
            self._report[launch.name] = PENDING
            self.requested += 1
            if self.rng.random() < self.simulated.never_deliver:
                self.never += 1  # waits for ever, until cancelled
            else:
                delay = self.simulated.latency.sample(self.rng)
                self.engine.connecting += 1
                self.engine.schedule(self.engine.now + delay, CONNECT, (self, launch))

    def connected(self, launch: Launch) -> None:
        launch.connected = True
        del self.pending[launch.name]
        self._report[launch.name] = RUNNING

    def report(self) -> Mapping[str, str]:
        """What it launched and has not stopped (a live, read-only view)."""
        return self._view

    def cancel_pending(self) -> None:
        for name, launch in self.pending.items():
            launch.cancelled = True
            del self.launched[name], self._report[name]
            self.cancelled += 1
        self.pending.clear()

    def scale_down(self, names: list[str]) -> None:
        for name in names:
            launch = self.launched.pop(name, None)
            if launch is not None:
                self._report.pop(name, None)
                self.pending.pop(name, None)


class Engine:
    """One simulation run. Build, :meth:`run`, then :meth:`result`.

    Parameters
    ----------
    settings
        Pools, policy, bounds: as the plugin reads them.
    workload
        What arrives when.
    seed
        Makes every random draw (workload, latencies) reproducible.
    horizon
        Stop at this virtual time at the latest (``None``: when done).
    """

    def __init__(
        self,
        settings: Settings,
        workload: Workload,
        seed: int = 0,
        horizon: float | None = None,
    ) -> None:
        self.settings, self.workload, self.seed = settings, workload, seed
        self.horizon = math.inf if horizon is None else horizon
        options = settings.options
        self.planner = Planner(
            settings.runtimes(),
            settings.policy(),
            self._record,
            minimum=options.minimum,
            maximum=options.maximum,
        )
        self.pools = {p.name: p for p in settings.pools}
        self.backends = {
            p.name: SimulatedBackend(
                self, p, settings.simulated[p.name], random.Random(f"{seed}:pool:{p.name}")
            )
            for p in settings.pools
        }
        self.arrivals: Iterator[Arrival] = workload.arrivals(seed)
        self._init_scheduler()
        self._init_loop()
        self._init_figures()

    def _init_scheduler(self) -> None:
        self.workers: dict[str, Worker] = {}
        #: address -> idle since, oldest first (what ClusterStats keeps)
        self.idle: dict[str, float] = {}
        self.nthreads = 0
        self.processing = 0
        self.queued = 0
        self.classes: dict[ResourceClass, TaskClass] = {}
        self.class_order: list[TaskClass] = []
        self.shapes: dict[tuple[Any, ...], Shape] = {}
        #: prefix -> the scheduler's duration estimate (moving average)
        self.estimates: dict[str, float] = {}

    def _init_loop(self) -> None:
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.counter = itertools.count()
        self.completions: dict[float, list[Batch]] = {}
        self.now = 0.0
        self.soon = False
        self.last_evaluation = -math.inf
        self.not_before = -math.inf
        self.pokes = 0
        self.timer_at: float | None = None
        self.timer_generation = 0
        self.evaluations = 0
        self.actions = 0
        self.pending_arrivals = 0
        #: when the cluster or the work last changed (timers that find
        #: nothing to do change nothing)
        self.last_change = 0.0
        #: workers on their way that will connect (their event is due)
        self.connecting = 0
        self.last_progress = 0.0

    def _init_figures(self) -> None:
        self.tasks = 0
        self.finished = 0
        self.makespan = 0.0
        self.first_arrival: float | None = None
        self.first_worker: float | None = None
        self.waits = Histogram()
        self.records: Counter[str] = Counter()
        self.log: deque[tuple[float, dict[str, Any]]] = deque(maxlen=LOG_KEPT)
        self.decide_errors: list[str] = []
        names = list(self.pools)
        self.connected = dict.fromkeys(names, 0)
        self.peak = dict.fromkeys(names, 0)
        self.worker_seconds = dict.fromkeys(names, 0.0)
        self.busy_seconds = dict.fromkeys(names, 0.0)
        self.ups = dict.fromkeys(names, 0)
        self.downs = dict.fromkeys(names, 0)
        self.timeline = Timeline(names)

    # -- the loop ----------------------------------------------------------------------

    def schedule(self, t: float, kind: int, payload: Any, order: int = HAPPENS) -> None:
        heapq.heappush(self.heap, (t, order, next(self.counter), kind, payload))

    def run(self) -> SimulationResult:
        """Simulate until the work is done and the cluster is quiet."""
        started = time.perf_counter()
        self._next_arrival()
        self.poke()  # the controller's start: a minimum is honoured at once
        handlers: dict[int, Callable[[Any], None]] = {
            ARRIVE: self._arrive,
            CELL: self._cell,
            COMPLETE: self._complete,
            CONNECT: self._connect,
            EVALUATE: self._evaluate,
            TIMER: self._timer,
        }
        heap, pop = self.heap, heapq.heappop
        #: the cluster's last change, unless cut short by the drain or horizon
        self.end = 0.0
        while heap:
            stop = self._stop_time()
            if heap[0][0] > stop:
                self.end = stop
                break
            t, _, _, kind, payload = pop(heap)
            self.now = t
            handlers[kind](payload)
        else:
            self.end = self.last_change
        self.wall_seconds = time.perf_counter() - started
        return self.result()

    def _stop_time(self) -> float:
        """Done: no more work to come, none waiting or running, and then at
        most ``drain`` seconds (workers retiring, requests timing out)."""
        if self.pending_arrivals or self.processing or self.connecting:
            return self.horizon
        return min(self.horizon, self.last_progress + self.settings.drain)

    # -- the controller, in virtual time ------------------------------------------------

    def poke(self) -> None:
        """Something changed: evaluate soon (``Controller.poke``)."""
        self.pokes += 1
        if self.soon:
            return
        self.soon = True
        when = max(self.last_evaluation + MIN_GAP, self.not_before, self.now)
        self.schedule(when, EVALUATE, None, DECIDES)

    def _timer(self, generation: int) -> None:
        if generation == self.timer_generation:
            self.timer_at = None
            self.poke()

    def _set_timer(self, when: float | None) -> None:
        """The one timer: evaluate at ``when`` even if nothing happens."""
        if when == self.timer_at:
            return
        self.timer_at = when
        self.timer_generation += 1
        if when is not None:
            self.schedule(max(when, self.now), TIMER, self.timer_generation, DECIDES)

    def _evaluate(self, _: Any = None) -> None:
        self.soon = False
        now = self.last_evaluation = self.now
        self.evaluations += 1
        try:
            evaluation = self.planner.evaluate(self.snapshot(), now, busy=())
        except Exception as e:  # as the controller: recorded, backed off
            self.decide_errors.append(f"{type(e).__name__}: {e}")
            self.not_before = now + self.planner.failed(None, "decide", e, now)
            self._set_timer(self.not_before)
            return
        for action in evaluation.actions:
            self._run(action)
        self._set_timer(evaluation.deadline)
        self._sample(evaluation.plan.desired)

    def _run(self, action: Action) -> None:
        """One action, as ``Controller._run`` and ``_action_done`` do it."""
        self.actions += 1
        self.last_change = self.now
        pokes, now = self.pokes, self.now
        backend = self.backends.get(action.pool) if action.pool is not None else None
        requested = self.planner.starting(action, now)
        error, changed = None, False
        try:
            changed = self._call(action, backend)
        except Exception as e:
            error = e
        report = backend.report() if backend is not None else None
        self.planner.finished(action, now, requested, report, error)
        if changed or error is not None or self.pokes != pokes:
            self.poke()

    def _call(self, action: Action, backend: SimulatedBackend | None) -> bool:
        if isinstance(action, Up):
            assert backend is not None
            backend.scale_up(action.n, **action.kwargs)
            return True
        if isinstance(action, Down):
            return self._retire(action, backend)
        if isinstance(action, Cancel):
            if backend is not None:
                backend.cancel_pending()
            return True
        if isinstance(action, Forget):
            if backend is not None:
                backend.scale_down(list(action.names))
            return True
        raise TypeError(f"unknown action {action!r}")

    def _retire(self, down: Down, backend: SimulatedBackend | None) -> bool:
        """``Controller._retire``: eligible workers go; no data to move."""
        workers = self.workers
        eligible = [
            a for a in down.workers if a in workers and workers[a].running == 0
        ]
        chosen = self.planner.retiring(down, eligible, eligible, self.now)
        if not chosen:
            return False
        self.planner.retired(down, chosen, chosen, "", self.now)
        if backend is not None:
            backend.scale_down([workers[a].name for a in chosen])
        for address in chosen:
            self._remove_worker(address)
        return True

    # -- events ------------------------------------------------------------------------------

    def _next_arrival(self) -> None:
        arrival = next(self.arrivals, None)
        if arrival is not None:
            self.pending_arrivals += 1
            self.schedule(arrival.t, ARRIVE, arrival)

    def _arrive(self, arrival: Arrival) -> None:
        self.pending_arrivals -= 1
        self._next_arrival()
        self._submit(arrival)

    def _cell(self, arrival: Arrival) -> None:
        self.pending_arrivals -= 1
        self._submit(arrival)

    def _submit(self, arrival: Arrival) -> None:
        """A graph arrives (``update_graph``): new work."""
        if arrival.count <= 0:
            return
        if self.first_arrival is None:
            self.first_arrival = self.now
            if self.workers:
                self.first_worker = self.now
        self.planner.new_work()
        self.tasks += arrival.count * arrival.spec.links  # chains included
        self.last_progress = self.last_change = self.now
        self._runnable(arrival.spec, arrival.count, arrival.cell)
        self.poke()

    def _connect(self, payload: tuple[SimulatedBackend, Launch]) -> None:
        backend, launch = payload
        self.connecting -= 1
        if launch.cancelled:
            return
        backend.connected(launch)
        pool = backend.pool.name
        nthreads = backend.simulated.nthreads
        shape = self._shape(pool, nthreads, launch.resources)
        worker = Worker(launch.name, pool, nthreads, launch.resources, shape, self.now)
        self.workers[worker.address] = worker
        self.idle[worker.address] = self.now
        self.nthreads += nthreads
        self.last_change = self.now
        self.connected[pool] += 1
        self.peak[pool] = max(self.peak[pool], self.connected[pool])
        if self.first_worker is None and self.first_arrival is not None:
            self.first_worker = self.now
        self.planner.arrived(
            worker.address, worker.name, launch.resources, nthreads, self.now, busy=()
        )
        self._fill(worker)
        self._update_ready(worker)
        self.poke()

    def _remove_worker(self, address: str) -> None:
        """The scheduler's ``remove_worker``: the hooks, then the planner."""
        worker = self.workers.pop(address)
        self.idle.pop(address, None)
        for ready in worker.shape.ready.values():
            ready.pop(worker, None)
        self.nthreads -= worker.nthreads
        self.last_change = self.now
        self.connected[worker.pool] -= 1
        self.worker_seconds[worker.pool] += self.now - worker.connected
        self.planner.left(address, self.now)
        self.poke()

    def _complete(self, t: float) -> None:
        for batch in self.completions.pop(t):
            self._finish(*batch)
        self.last_progress = self.last_change = self.now
        self.poke()

    # -- the simulated scheduler ----------------------------------------------------------

    def _task_class(self, key: ResourceClass) -> TaskClass:
        cls = self.classes.get(key)
        if cls is None:
            cls = self.classes[key] = TaskClass(key)
            self.class_order = sorted(self.classes.values(), key=lambda c: len(c.key))
            for shape in self.shapes.values():
                self._join(shape, cls)
        return cls

    def _shape(self, pool: str, nthreads: int, resources: Mapping[str, float]) -> Shape:
        key = (pool, nthreads, tuple(sorted(resources.items())))
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = Shape(resources, self.pools[pool].cost)
            for cls in self.classes.values():
                self._join(shape, cls)
        return shape

    def _join(self, shape: Shape, cls: TaskClass) -> None:
        """Workers of ``shape`` may run tasks of ``cls``."""
        if not shape.fits(cls):
            return
        shape.classes.append(cls)
        ready = shape.ready[cls] = OrderedDict()
        for worker in self.workers.values():
            if worker.shape is shape and _capacity(worker, cls) > 0:
                ready[worker] = None
        cls.shapes.append(shape)
        cls.shapes.sort(key=lambda s: s.cost)

    def _runnable(self, spec: TaskSpec, count: int, cell: Cell | None) -> None:
        """``count`` tasks become runnable: onto free threads, else queued."""
        cls = self._task_class(spec.resources)
        cls.prefixes[spec.prefix] = cls.prefixes.get(spec.prefix, 0) + count
        if not cls.queue:
            for shape in cls.shapes:
                ready = shape.ready[cls]
                while count and ready:
                    worker = next(iter(ready))
                    n = min(count, _capacity(worker, cls))
                    self._start(worker, cls, spec, n, cell, self.now)
                    self._update_ready(worker)
                    count -= n
                if not count:
                    return
        if count:
            cls.queue.append([self.now, count, spec, cell])
            cls.queued += count
            self.queued += count

    def _start(
        self,
        worker: Worker,
        cls: TaskClass,
        spec: TaskSpec,
        n: int,
        cell: Cell | None,
        since: float,
    ) -> None:
        """``n`` tasks start on ``worker``; the caller updates its readiness."""
        now = self.now
        if not worker.running:
            self.idle.pop(worker.address, None)
        worker.running += n
        worker.free -= n
        for resource, amount in cls.needs:
            worker.available[resource] -= amount * n
        cls.running += n
        self.processing += n
        self.waits.add(now - since, n)
        self.last_progress = now
        duration = spec.duration
        if isinstance(duration, Fixed):
            self._at(now + duration.seconds, (worker, cls, spec, n, duration.seconds, cell))
        else:
            for _ in range(n):
                d = duration.sample(spec.rng)
                self._at(now + d, (worker, cls, spec, 1, d, cell))

    def _at(self, t: float, batch: Batch) -> None:
        batches = self.completions.get(t)
        if batches is None:
            self.completions[t] = [batch]
            self.schedule(t, COMPLETE, t)
        else:
            batches.append(batch)

    def _finish(
        self,
        worker: Worker,
        cls: TaskClass,
        spec: TaskSpec,
        n: int,
        seconds: float,
        cell: Cell | None,
    ) -> None:
        """``n`` tasks finish on ``worker``; a chain's next tasks start there."""
        now = self.now
        worker.running -= n
        worker.free += n
        for resource, amount in cls.needs:
            worker.available[resource] += amount * n
        cls.running -= n
        self.processing -= n
        self.finished += n
        self.makespan = now
        self.busy_seconds[worker.pool] += n * seconds
        self._learn(spec.prefix, seconds, n)
        successor = spec.successor
        if successor is not None:  # runnable now; its input is on this worker
            self._start(worker, cls, successor, n, cell, now)
        else:
            count = cls.prefixes[spec.prefix] - n
            if count:
                cls.prefixes[spec.prefix] = count
            else:
                del cls.prefixes[spec.prefix]
            if cell is not None:
                self._cell_done(cell, n)
            self._fill(worker)
        if not worker.running:
            self.idle[worker.address] = now
        self._update_ready(worker)

    def _cell_done(self, cell: Cell, n: int) -> None:
        cell.remaining -= n
        if cell.remaining <= 0:
            arrival = cell.session.next_cell(self.now)
            if arrival is not None:
                self.pending_arrivals += 1
                self.schedule(arrival.t, CELL, arrival)

    def _fill(self, worker: Worker) -> None:
        """Free threads take the oldest waiting tasks they fit."""
        while self.queued and worker.free:
            best = None
            for cls in worker.shape.classes:
                if cls.queued and (best is None or cls.queue[0][0] < best.queue[0][0]):
                    if _capacity(worker, cls) > 0:
                        best = cls
            if best is None:
                return
            head = best.queue[0]
            n = min(head[1], _capacity(worker, best))
            head[1] -= n
            if not head[1]:
                best.queue.popleft()
            best.queued -= n
            self.queued -= n
            self._start(worker, best, head[2], n, head[3], head[0])

    def _update_ready(self, worker: Worker) -> None:
        shape = worker.shape
        for cls in shape.classes:
            ready = shape.ready[cls]
            if _capacity(worker, cls) > 0:
                if worker not in ready:
                    ready[worker] = None
            else:
                ready.pop(worker, None)

    def _learn(self, prefix: str, seconds: float, n: int) -> None:
        """The scheduler's moving average of a prefix's durations
        (``TaskPrefix.add_duration``), for ``n`` tasks of ``seconds`` each."""
        seconds = round(seconds * 1e6) / 1e6
        old = self.estimates.get(prefix)
        if old == seconds:
            return  # the common case of fixed durations: nothing moves
        if old is None:
            old = self.settings.default_durations.get(prefix, -1.0)
        if old < 0:
            old, n = seconds, n - 1
        self.estimates[prefix] = seconds + (old - seconds) * 0.5**n

    def estimate(self, prefix: str) -> float:
        """``Scheduler._get_prefix_duration`` (without live execution times)."""
        estimate = self.estimates.get(prefix)
        if estimate is not None:
            return estimate
        return self.settings.default_durations.get(prefix, self.settings.unknown_duration)

    def snapshot(self) -> Snapshot:
        """What ``ClusterStats.snapshot`` gives the planner."""
        needs = []
        queued = no_worker = 0
        estimate = self.estimate
        for cls in self.class_order:
            tasks = cls.queued + cls.running
            if not tasks:
                continue
            seconds = 0.0
            for prefix, count in cls.prefixes.items():
                seconds += count * estimate(prefix)
            needs.append(Need(cls.resources, tasks, seconds, cls.queued))
            if cls.key:
                no_worker += cls.queued
            else:
                queued += cls.queued
        return Snapshot(
            workers=len(self.workers),
            nthreads=self.nthreads,
            queued=queued,
            no_worker=no_worker,
            processing=self.processing,
            needs=tuple(needs),
            idle=self.idle,
            worker_states=self.workers,
        )

    # -- figures ----------------------------------------------------------------------------

    def _record(self, entry: dict[str, Any]) -> None:
        status = entry.get("status", "?")
        self.records[status] += 1
        pool = entry.get("pool")
        if status == "up" and pool in self.ups:
            self.ups[pool] += 1
        elif status == "down" and pool in self.downs:
            self.downs[pool] += 1
        self.log.append((self.now, entry))

    def _sample(self, desired: Mapping[str, int]) -> None:
        ledger = self.planner.ledger
        self.timeline.add(
            self.now,
            self.queued + self.processing,
            [
                (self.connected[p], ledger.count(p, *ON_THE_WAY), desired.get(p, 0))
                for p in self.pools
            ],
        )

    def result(self) -> SimulationResult:
        end = self.end
        for worker in self.workers.values():
            self.worker_seconds[worker.pool] += end - worker.connected
            worker.connected = end
        ledger = self.planner.ledger
        pools = {}
        for name, pool in self.pools.items():
            backend = self.backends[name]
            latency = ledger.latency[name]
            pools[name] = PoolFigures(
                cost=pool.cost,
                nthreads=backend.simulated.nthreads,
                worker_seconds=self.worker_seconds[name],
                cost_seconds=self.worker_seconds[name] * pool.cost,
                busy_seconds=self.busy_seconds[name],
                peak_workers=self.peak[name],
                requested=backend.requested,
                never_delivered=backend.never,
                cancelled=backend.cancelled,
                ups=self.ups[name],
                downs=self.downs[name],
                startup_median=latency.median,
                startup_p90=latency.p90,
            )
        first = None
        if self.first_arrival is not None and self.first_worker is not None:
            first = self.first_worker - self.first_arrival
        return SimulationResult(
            workload=self.workload.source,
            config=self.settings.source,
            seed=self.seed,
            tasks=self.tasks,
            finished=self.finished,
            makespan=self.makespan,
            end=end,
            time_to_first_worker=first,
            waits=self.waits,
            pools=pools,
            records=dict(sorted(self.records.items())),
            evaluations=self.evaluations,
            actions=self.actions,
            wall_seconds=self.wall_seconds,
            decide_errors=list(self.decide_errors),
            timeline=self.timeline,
            log=list(self.log),
        )


def _capacity(worker: Worker, cls: TaskClass) -> int:
    """How many tasks of ``cls`` fit on ``worker`` now."""
    n = worker.free
    for resource, amount in cls.needs:
        fits = int((worker.available.get(resource, 0.0) + EPSILON) // amount)
        n = min(n, fits)
    return n
