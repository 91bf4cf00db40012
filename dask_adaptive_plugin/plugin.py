"""The scheduler plugin: hooks feed the statistics and poke the controller.

Attaching and detaching:

- ``Scheduler(plugins=[plugin])`` and ``register_scheduler_plugin`` (what
  ``client.register_plugin`` and ``--preload`` use) call :meth:`start`, and
  a start failure is raised to whoever awaits it.
- ``scheduler.add_plugin(plugin)`` on a running scheduler does not call
  ``start``; the plugin notices that it was added (:func:`_compat.when_added`)
  and starts itself at once. A failure there is an ERROR log line and an
  ``error`` event on topic ``"adaptive"``, and the plugin removes itself.
- Once started, the plugin checks every :data:`MEMBERSHIP_CHECK` seconds that
  the scheduler still holds it: ``unregister_scheduler_plugin`` removes a
  plugin without telling it, and a removed plugin must not go on scaling with
  a backend nobody will close.
- A new adaptive plugin replaces the previous one (found in
  ``scheduler.plugins``), which stops and closes its backends first.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import deque
from time import time
from typing import TYPE_CHECKING, Any

import dask
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_adaptive_plugin import _compat, dashboard, hints, metrics, registry
from dask_adaptive_plugin.backend import Backend, PoolContext
from dask_adaptive_plugin.background import BackgroundTasks
from dask_adaptive_plugin.config import Options, describe, resolve_options
from dask_adaptive_plugin.controller import Controller, call_backend
from dask_adaptive_plugin.planner import Planner, PoolRuntime
from dask_adaptive_plugin.pools import DEFAULT, Pool, resolve_pools
from dask_adaptive_plugin.stats import ClusterStats
from dask_adaptive_plugin.trace import TraceRecorder

if TYPE_CHECKING:
    from distributed import Scheduler

    from dask_adaptive_plugin.policy import Policy

logger = logging.getLogger(__name__)

#: Seconds between checks that the scheduler still holds the plugin.
MEMBERSHIP_CHECK = 1.0


class AdaptivePlugin(SchedulerPlugin):
    """Adaptive scaling inside the scheduler.

    Every argument left as ``None`` comes from dask config
    (``adaptive-plugin.*``); bad values raise ``ValueError`` here, naming the
    option, the value and what is accepted.

    Parameters
    ----------
    backend
        How workers are started and stopped: an entry-point name in
        ``dask_adaptive_plugin.backends`` (``"local"``), a
        :class:`~dask_adaptive_plugin.Backend` class, or an instance. This is
        the one pool ``"default"``; see ``pools`` for several.
    minimum, maximum
        Bounds on the number of workers, all pools together; a pool is also
        bounded by its backend's own ``maximum`` (``local``: the CPU count).
    policy
        When to scale: an entry-point name in ``dask_adaptive_plugin.policies``
        (``"adaptive"``, ``"fixed"``), a :class:`~dask_adaptive_plugin.Policy`
        class, or an instance.
    idle_timeout
        How long a worker must have been idle before it is retired (``"10s"``).
    backend_options
        Keyword arguments for the backend; keys may be kebab-case.
    start_timeout
        How long requested workers may take to connect before they are given
        up on; it also bounds each backend call.
    retire_timeout
        How long a retirement may take before it is given up and the workers
        are kept.
    pools
        Several pools of workers: pool name -> ``{backend, backend_options,
        minimum, maximum, resources, cost, start_timeout, idle_timeout}``
        (see :class:`~dask_adaptive_plugin.pools.Pool`).
    record_trace
        A file to append a trace of the workload to (work becoming runnable,
        task durations per prefix), which ``dask adaptive simulate`` replays.
    **policy_options
        Keyword arguments for the policy, such as ``target_duration="5s"``.

    Attributes
    ----------
    log
        The decisions, as ``(timestamp, dict)`` pairs: ``{"status": "up",
        "pool": "default", "n": 4, "reason": ...}`` and ``{"status": "down",
        "workers": [...], "reason": ...}``. Each is also a scheduler event on
        topic ``"adaptive"``.

    Examples
    --------
    >>> plugin = AdaptivePlugin(backend="local", minimum=0, maximum=4)
    >>> scheduler.add_plugin(plugin)  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: str | type[Backend] | Backend | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
        policy: str | type[Policy] | Policy | None = None,
        idle_timeout: str | float | None = None,
        backend_options: dict[str, Any] | None = None,
        start_timeout: str | float | None = None,
        retire_timeout: str | float | None = None,
        pools: dict[str, dict[str, Any]] | None = None,
        record_trace: str | None = None,
        **policy_options: Any,
    ) -> None:
        self._arguments = dict(
            backend=backend,
            minimum=minimum,
            maximum=maximum,
            policy=policy,
            idle_timeout=idle_timeout,
            backend_options=backend_options,
            start_timeout=start_timeout,
            retire_timeout=retire_timeout,
            pools=pools,
            record_trace=record_trace,
            **policy_options,
        )
        self.options = options = resolve_options(
            backend=backend,
            policy=policy,
            minimum=minimum,
            maximum=maximum,
            idle_timeout=idle_timeout,
            start_timeout=start_timeout,
            retire_timeout=retire_timeout,
            backend_options=backend_options,
            policy_options=policy_options,
            pools=pools,
            record_trace=record_trace,
        )
        self.pools: tuple[Pool, ...] = resolve_pools(
            options.pools,
            backend=options.backend,
            backend_options=options.backend_options,
            backend_given=backend is not None or backend_options is not None,
            idle_timeout=options.idle_timeout,
            start_timeout=options.start_timeout,
        )
        self._backend_specs = {
            pool.name: registry.resolve(registry.BACKENDS, pool.backend)
            for pool in self.pools
        }
        for pool in self.pools:
            check_backend_options(self._backend_specs[pool.name], pool)
        self.policy = make_policy(options)
        # what the backends' classes say of their bound already: fail now
        check_bounds(
            options,
            [
                pool_runtime(p, self._backend_specs[p.name], options.maximum)
                for p in self.pools
            ],
        )
        self.log: deque[tuple[float, dict[str, Any]]] = deque(
            maxlen=dask.config.get("distributed.admin.low-level-log-length")
        )
        self.scheduler: Scheduler | None = None
        self.backends: dict[str, Backend] = {}
        self.stats: ClusterStats | None = None
        self.planner: Planner | None = None
        self.controller: Controller | None = None
        self.trace: TraceRecorder | None = None
        self._tasks = BackgroundTasks("adaptive plugin")
        self._failed_hooks: set[str] = set()
        #: Decisions and errors so far, for metrics.
        self.counts = metrics.RecordCounts()
        self._stopping: asyncio.Future[None] | None = None
        self._starting: asyncio.Task[None] | None = None

    # -- pickling: only the arguments travel (client.register_plugin) -----------------

    def __getstate__(self) -> dict[str, Any]:
        return self._arguments

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def backend(self) -> Backend | None:
        """The backend of the one pool (``None`` with several pools, or before start)."""
        if len(self.backends) == 1:
            return next(iter(self.backends.values()))
        return None

    @property
    def ledger(self) -> Any:
        return self.planner.ledger if self.planner is not None else None

    # -- attaching -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``"adaptive"``: one adaptive plugin per scheduler.

        ``Scheduler.add_plugin`` reads the name and never calls :meth:`start`;
        reading it is the one moment the plugin learns it may have been added
        to a running scheduler, so it asks :func:`_compat.when_added` to start
        it there.
        """
        if self.scheduler is None and self._starting is None:
            _compat.when_added(self, self._start_in_background)
        return "adaptive"

    def _start_in_background(self, scheduler: Scheduler) -> None:
        if self.scheduler is None and self._starting is None:
            self._starting = self._tasks.spawn(
                self._start_or_report(scheduler), "starting the plugin"
            )

    async def _start_or_report(self, scheduler: Scheduler) -> None:
        """Start after ``add_plugin``; nobody awaits this, so a failure is
        logged, becomes an event, and the plugin removes itself."""
        try:
            await self.start(scheduler)
        except Exception as e:
            self._starting = None
            logger.error("adaptive: the plugin could not start: %s", e, exc_info=True)
            self._publish(
                {
                    "status": "error",
                    "action": "start",
                    "error": f"{type(e).__name__}: {e}",
                    "reason": "the adaptive plugin could not start and was removed",
                },
                scheduler,
            )
            if scheduler.plugins.get("adaptive") is self:
                scheduler.remove_plugin("adaptive")

    async def start(self, scheduler: Scheduler) -> None:
        """Begin acting on ``scheduler``: make the backends, seed the statistics.

        Called by the scheduler when it starts, by ``register_scheduler_plugin``,
        or by the plugin itself when it was added to a running scheduler. A
        previous adaptive plugin on the same scheduler is stopped first.
        """
        if self.scheduler is not None:
            return
        self.scheduler = scheduler
        try:
            previous = scheduler.plugins.get("adaptive")
            if isinstance(previous, AdaptivePlugin) and previous is not self:
                await previous.stop("replaced by a new adaptive plugin")
            self.backends = await self._make_backends(scheduler)
            self._attach(scheduler)
        except BaseException:
            self.scheduler = None
            await close_backends(self.backends, self.pools)
            self.backends = {}
            raise
        assert self.controller is not None
        await self.controller.refresh()  # workers its backends already run
        self.controller.start()
        metrics.attach(self)
        dashboard.attach(self)
        self._tasks.spawn(
            self._watch_membership(), "watching the plugin's registration"
        )
        logger.info(
            "adaptive: scaling pools %s with %s policy, %d to %s workers",
            ", ".join(self.backends),
            type(self.policy).__name__,
            self.options.minimum,
            self.options.maximum,
        )

    async def _make_backends(self, scheduler: Scheduler) -> dict[str, Backend]:
        backends: dict[str, Backend] = {}
        try:
            for pool in self.pools:
                backends[pool.name] = make_backend(
                    self._backend_specs[pool.name], scheduler, pool
                )
        except BaseException:
            await close_backends(backends, self.pools)
            raise
        return backends

    def _attach(self, scheduler: Scheduler) -> None:
        """Build the statistics, the planner and the controller."""
        runtimes = [
            pool_runtime(p, self.backends[p.name], self.options.maximum)
            for p in self.pools
        ]
        check_bounds(self.options, runtimes)
        loop = asyncio.get_running_loop()
        self.stats = ClusterStats(scheduler, loop.time)
        if self.options.record_trace is not None:
            self.trace = TraceRecorder(self.options.record_trace, loop.time)
        self.planner = Planner(
            runtimes,
            self.policy,
            self._record,
            minimum=self.options.minimum,
            maximum=self.options.maximum,
        )
        for name, backend in self.backends.items():
            context = PoolContext(
                name,
                log_event=functools.partial(self._record_backend_event, name),
                worker_name=self.planner.ledger.name_of,
            )
            try:
                backend.pool = context
            except AttributeError:  # a backend that takes no new attributes
                pass
        self.controller = Controller(
            scheduler,
            self.stats,
            self.planner,
            self.backends,
            self._record,
            self.options.retire_timeout,
        )
        for address in scheduler.workers:
            self.controller.worker_arrived(address)

    async def _watch_membership(self) -> None:
        """Stop once the scheduler no longer holds this plugin."""
        while self.controller is not None and self.scheduler is not None:
            await asyncio.sleep(MEMBERSHIP_CHECK)
            scheduler = self.scheduler
            if scheduler is None or self.controller is None:
                return
            if scheduler.plugins.get("adaptive") is not self:
                await self.stop("unregistered from the scheduler")
            elif scheduler.status in (Status.closing, Status.closed):
                return  # the scheduler closes the plugins it holds

    async def stop(self, reason: str = "stopped") -> None:
        """Stop acting and close the backends (which stops their workers)."""
        if self._stopping is not None:
            await asyncio.shield(self._stopping)
            return
        controller = self.controller
        if controller is None:
            return
        self._stopping = asyncio.get_running_loop().create_future()
        try:
            self.controller = None  # the hooks go quiet
            metrics.detach(self)
            dashboard.detach(self)
            await controller.close()
            self._record({"status": "stopped", "reason": reason})
            await close_backends(self.backends, self.pools)
            await self._tasks.cancel(keep=asyncio.current_task())
            if self.trace is not None:
                self.trace.close()
        finally:
            self._stopping.set_result(None)
            self._stopping = None

    async def close(self) -> None:
        await self.stop("scheduler closing")

    # -- hooks: O(1), synchronous, never raise -----------------------------------------

    def transition(
        self,
        key: Any,
        start: str,
        finish: str,
        *args: Any,
        stimulus_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            self.stats.transition(key, start, finish, kwargs.get("worker"))  # type: ignore[union-attr]
            if self.trace is not None:
                self._trace(key, start, finish, kwargs)
            controller.poke()
        except Exception:
            self._hook_failed("transition")

    def _trace(self, key: Any, start: str, finish: str, kwargs: dict[str, Any]) -> None:
        ts = self.scheduler.tasks.get(key)  # type: ignore[union-attr]
        if ts is not None:
            self.trace.transition(ts, start, finish, kwargs)  # type: ignore[union-attr]

    def update_graph(self, scheduler: Scheduler, **kwargs: Any) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            controller.planner.new_work()
            controller.poke()
        except Exception:
            self._hook_failed("update_graph")

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            self.stats.worker_added(worker)  # type: ignore[union-attr]
            controller.worker_arrived(worker)
            controller.poke()
        except Exception:
            self._hook_failed("add_worker")

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            self.stats.worker_removed(worker)  # type: ignore[union-attr]
            controller.worker_left(worker)
            controller.poke()
        except Exception:
            self._hook_failed("remove_worker")

    def restart(self, scheduler: Scheduler) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            controller.ledger.restarting()
            self.stats.needs_reseed = True  # type: ignore[union-attr]
            controller.poke()
        except Exception:
            self._hook_failed("restart")

    def log_event(self, topic: str, msg: Any) -> None:
        """Workers say when they are leaving on purpose (not crashes), and
        clients ask for workers they know they will need (``request_workers``)."""
        controller = self.controller
        if controller is None or not isinstance(msg, dict):
            return
        try:
            if topic == hints.TOPIC:
                self._request(controller, msg)
                return
            why = _expected_departure(msg)
            if why is not None:
                controller.ledger.expect_departure(topic, why)
        except Exception:
            self._hook_failed("log_event")

    def _request(self, controller: Controller, msg: dict[str, Any]) -> None:
        try:
            n, pool, duration = hints.parse_request(msg)
            controller.planner.request(n, pool, duration, controller.now())
        except ValueError as e:
            self._record(
                {
                    "status": "error",
                    "action": "request",
                    "error": str(e),
                    "reason": "a request for workers was refused",
                }
            )
            return
        controller.poke()

    def _hook_failed(self, hook: str) -> None:
        """Log once per hook; recount the statistics (rate-limited)."""
        if self.stats is not None:
            self.stats.needs_reseed = True
            if self.controller is not None:
                self.controller.poke()
        if hook not in self._failed_hooks:
            self._failed_hooks.add(hook)
            logger.exception("adaptive: the %s hook failed; statistics recounted", hook)

    # -- records ---------------------------------------------------------------------------

    def _record(self, entry: dict[str, Any]) -> None:
        """The one path of every decision and event: the log, the counts for
        metrics, then topic "adaptive"."""
        self._publish(entry, self.scheduler)

    def _publish(self, entry: dict[str, Any], scheduler: Scheduler | None) -> None:
        self.log.append((time(), entry))
        self.counts.count(entry)
        logger.info("adaptive: %s", entry)
        if scheduler is not None:
            scheduler.log_event("adaptive", entry)

    def _record_backend_event(self, pool: str, event: dict[str, Any]) -> None:
        self._record({**event, "pool": pool})


def _expected_departure(msg: dict[str, Any]) -> str | None:
    """Why a worker event announces a departure that is not a crash."""
    action = msg.get("action")
    if action == "worker-status-change" and msg.get("status") == "closing_gracefully":
        return "retirement"
    if action == "closing-worker" and "restart" in str(msg.get("reason", "")):
        return "restart"
    return None


# -- making the parts -------------------------------------------------------------------


def check_backend_options(spec: Any, pool: Pool) -> None:
    """Raise ``ValueError`` if the pool's backend cannot take its options."""
    options = dict(pool.backend_options)
    where = "" if pool.name == DEFAULT else f" (pool {pool.name})"
    if not inspect.isclass(spec):
        if options:
            raise ValueError(
                f"backend_options {sorted(options)} were given with a backend "
                f"instance ({spec!r}){where}; pass the class or name instead"
            )
        return
    check = getattr(spec, "check_options", None)
    if check is None:  # a backend that does not inherit from Backend
        check = functools.partial(Backend.check_options.__func__, spec)  # type: ignore[attr-defined]
    try:
        check(**options)
    except ValueError as e:
        if not where:
            raise
        raise ValueError(f"{e}{where}") from None


def backend_maximum(backend: Any, attribute: str = "maximum") -> int | None:
    """The backend's own bound on workers (or its ``default_maximum``);
    ``ValueError`` if it is not one."""
    maximum = getattr(backend, attribute, None)
    if maximum is not None and (
        isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 0
    ):
        raise ValueError(
            f"backend {backend!r} has {attribute}={maximum!r}; a backend's "
            f"{attribute} must be a whole number >= 0 or None"
        )
    return maximum


def make_backend(spec: Any, scheduler: Scheduler, pool: Pool) -> Backend:
    if not inspect.isclass(spec):
        return spec
    return spec(scheduler, **pool.backend_options)


def pool_runtime(
    pool: Pool, backend: Backend | type[Backend], maximum: int | None = None
) -> PoolRuntime:
    """A pool with its backend's bound (the lower of the two wins) and shape.

    ``backend`` may be the class, before an instance exists: its class
    attributes are checked early. Its ``default_maximum`` bounds the pool
    only when no maximum is given, neither the pool's nor the plugin's
    (``maximum``).
    """
    own = [pool.maximum, backend_maximum(backend)]
    if pool.maximum is None and maximum is None:
        own.append(backend_maximum(backend, "default_maximum"))
    bounds = [m for m in own if m is not None]
    threads = getattr(backend, "threads_per_worker", 1)
    if not isinstance(threads, (int, float)) or threads < 1:
        threads = 1
    cls = backend if inspect.isclass(backend) else type(backend)
    reports = getattr(cls, "report", Backend.report) is not Backend.report
    return PoolRuntime(pool, min(bounds) if bounds else None, threads, reports)


def check_bounds(options: Options, runtimes: list[PoolRuntime]) -> None:
    """The global minimum must be reachable with the pools' bounds."""
    bounds = [p.maximum for p in runtimes]
    if any(b is None for b in bounds):
        return
    most = sum(bounds)  # type: ignore[arg-type]
    if options.minimum > most:
        raise ValueError(
            f"invalid {describe('minimum')}: {options.minimum} is above the "
            f"backend's maximum {most} (the most workers the pools can run); "
            f"expected minimum <= {most}"
        )


def make_policy(options: Options) -> Policy:
    spec = registry.resolve(registry.POLICIES, options.policy)
    if not inspect.isclass(spec):
        return spec
    try:
        inspect.signature(spec).bind(**options.policy_options)
    except TypeError:
        raise ValueError(
            f"invalid policy options for policy {spec.__name__}: "
            f"{sorted(options.policy_options)}; it takes {_parameters(spec)}"
        ) from None
    return spec(**options.policy_options)


async def close_backends(backends: dict[str, Backend], pools: tuple[Pool, ...]) -> None:
    """Close every backend, each within its pool's ``start_timeout``; failures are
    logged as errors (a backend that cannot close may leave workers behind)."""
    timeouts = {p.name: p.start_timeout for p in pools}

    async def close_one(name: str, backend: Backend) -> None:
        close = getattr(backend, "close", None)
        if close is None:
            return
        try:
            await call_backend(close, timeout=timeouts.get(name, 60.0))
        except Exception as e:
            logger.error(
                "adaptive: pool %s: the backend's close failed; its workers may be "
                "left running: %r",
                name,
                e,
            )

    await asyncio.gather(*(close_one(n, b) for n, b in backends.items()))


def _parameters(cls: type) -> str:
    names = [
        p.name
        for p in list(inspect.signature(cls).parameters.values())
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return ", ".join(names) or "no options"
