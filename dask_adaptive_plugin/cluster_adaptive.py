"""``cluster.adapt(Adaptive=ClusterAdaptive)``: the plugin for users of ``cluster.adapt()``.

distributed's ``Cluster.adapt(Adaptive=..., **options)`` takes the class that
does the adapting and constructs it as ``Adaptive(cluster, **options)``.
:class:`ClusterAdaptive` is such a class: it attaches an
:class:`~dask_adaptive_plugin.AdaptivePlugin` to the cluster's own scheduler
(which must run in this process: ``LocalCluster``, dask-jobqueue's clusters, a
``SpecCluster`` with a local scheduler), with a :class:`ClusterBackend` that
scales through the cluster object's own methods::

    cluster = SLURMCluster(cores=8, memory="32GB")
    cluster.adapt(Adaptive=ClusterAdaptive, minimum=0, maximum=20)

What the cluster knows, the backend reads: its plan (``worker_spec``, one
entry per worker or per batch job), what it has started (``workers``), and
which workers share a job. The cluster's plan belongs to the plugin while
adaptivity is on; when it changes without the plugin (``cluster.scale(n)``
or ``cluster.scale_down(...)`` by hand), adaptivity turns off and the manual
plan stands.

Attributes of distributed's ``SpecCluster`` read here (checked against
distributed 2026.8.0 and dask-jobqueue 0.9.0): ``worker_spec`` (the plan,
which ``Cluster._scaling_status`` reads too), ``workers`` (what was started),
``new_spec`` (the shape of a new entry), public attributes that
``tests/test_compat.py`` checks; dask-jobqueue's private ``_dummy_job`` (the
worker processes of one job) is read in :mod:`dask_adaptive_plugin._compat`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import sys
from collections.abc import Callable, Coroutine, Generator, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import dask
from distributed import Scheduler
from distributed.core import Status
from distributed.deploy.spec import SpecCluster

from dask_adaptive_plugin._compat import jobqueue_job_shape
from dask_adaptive_plugin.backend import PENDING, RUNNING, Backend
from dask_adaptive_plugin.background import BackgroundTasks
from dask_adaptive_plugin.plugin import AdaptivePlugin

if TYPE_CHECKING:
    from distributed.deploy.cluster import Cluster

logger = logging.getLogger(__name__)

#: Seconds a ``stop()`` called outside the cluster's event loop waits for the
#: plugin to stop (it lets an action in progress finish, up to 10 s).
STOP_WAIT = 15.0

#: ``AdaptivePlugin`` options that make no sense here: the cluster is the one
#: pool, and it is its own backend.
REFUSED = ("backend", "backend_options", "pools")

State = Literal["starting", "running", "stopped"]


# -- the backend: the cluster object's own methods ----------------------------------------


class ClusterBackend(Backend):
    """Start and stop workers through a ``SpecCluster``'s own methods.

    ``scale_up(n)`` calls ``cluster.scale`` (dask-jobqueue's counts workers and
    rounds up to whole jobs; a plain ``SpecCluster``'s counts entries of its
    plan, each one worker or one group), ``scale_down(addresses)`` calls
    ``cluster.scale_down`` with the plan entries (jobs) of those workers, and
    :meth:`report` and :meth:`stopped_together` read the cluster's plan.

    Parameters
    ----------
    scheduler
        The cluster's scheduler, in this process.
    cluster
        The cluster whose workers are scaled.
    on_change
        Called with a reason, once, when the cluster's plan changed without
        this backend (``cluster.scale(n)`` by hand). From then on the
        backend changes nothing.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        cluster: SpecCluster,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(scheduler)
        self.cluster = cluster
        self.on_change = on_change
        #: False once adaptivity is off: every call then does nothing.
        self.active = True
        self.processes = job_processes(cluster)
        self.workers_per_entry = len(_group(cluster.new_spec)) or self.processes
        self.threads_per_worker = threads_per_worker(cluster)
        #: The plan entries this backend left the cluster with.
        self.plan: set[Hashable] = set(cluster.worker_spec)
        #: Every worker name the plan has held: SpecCluster gives a removed
        #: entry's name to the next new one, and a name the plugin has seen
        #: end must not come back for a different worker.
        self.used: set[str] = set(self.planned())
        self._renamed = 0

    # -- the two methods ------------------------------------------------------------

    async def scale_up(self, n: int, **kwargs: Any) -> None:
        """Bring the cluster's plan to ``n`` workers; never lower it.

        Waits for the cluster to start what it planned (a batch job is
        submitted, a local worker connected), so that a failure is this
        call's error. Task resources in ``kwargs`` cannot be passed to a
        cluster's workers and are ignored.
        """
        if not self._unchanged() or self._closing():
            return
        if n <= self.planned_workers():
            return
        before = set(self.cluster.worker_spec)
        result = self._scale(n)
        self._rename_reused(set(self.cluster.worker_spec) - before)
        self.plan = set(self.cluster.worker_spec)
        self.used.update(self.planned())
        if inspect.isawaitable(result):
            await result
        await self._correct_state()

    async def scale_down(self, workers: list[str]) -> None:
        """Remove the plan entries (whole jobs) of the workers at these
        addresses, and every entry still waiting to start.

        Workers are retired when the cluster has more than it needs, so a
        job still waiting in the queue is not needed either (as the
        ``slurm``, ``pbs``... backends do).
        """
        if not self._unchanged():
            return
        waiting = self.waiting()
        if waiting:
            self.log_event(
                {
                    "status": "cancelled",
                    "entries": [str(key) for key in waiting],
                    "reason": "workers are being retired, so plan entries still "
                    "waiting to start (queued jobs) are not needed",
                }
            )
        retired = self.entries_of(self.names(workers))
        await self._remove(waiting + [key for key in retired if key not in waiting])

    def report(self) -> dict[str, str] | None:
        """The cluster's plan, by worker name: started, or not yet.

        ``None`` once the plan has changed without this backend (adaptivity
        is then turning off).
        """
        return self.planned() if self._unchanged() else None

    # -- the cluster's plan ---------------------------------------------------------------

    def planned(self) -> dict[str, str]:
        """Worker name -> RUNNING (its entry was started) or PENDING, for the plan."""
        started = self.cluster.workers
        return {
            str(name): RUNNING if key in started else PENDING
            for key, spec in list(self.cluster.worker_spec.items())
            for name in self.worker_names(key, spec)
        }

    async def cancel_pending(self) -> None:
        """Remove the plan entries none of whose workers has connected (overdue)."""
        if self._unchanged():
            await self._remove(self.waiting())

    def stopped_together(self, address: str) -> list[str]:
        """The connected workers of this worker's plan entry (its batch job)."""
        names = self.names([address])
        entries = self.entries_of(names)
        if not entries:
            return [address]
        spec = self.cluster.worker_spec[entries[0]]
        aliases = self.scheduler.aliases
        return [
            aliases[name]
            for name in self.worker_names(entries[0], spec)
            if name in aliases
        ]

    async def close(self) -> None:
        """Leave the cluster's workers as they are.

        They belong to the cluster (``cluster.close()`` stops them), as with
        distributed's ``Adaptive.stop()``.
        """
        self.active = False

    def worker_names(self, key: Hashable, spec: Mapping[str, Any]) -> list[Hashable]:
        """The names the workers of one plan entry have in the scheduler.

        An entry with a ``group`` runs ``<name><suffix>`` for each suffix
        (SpecCluster's convention); a dask-jobqueue job of several processes
        without one (``processes`` from dask-jobqueue's config) runs
        ``<name>-0``, ``<name>-1``... (``dask worker --nworkers``); otherwise
        the entry is one worker named like the entry. LocalCluster's names
        are integers, as the scheduler knows them.
        """
        name = _options(spec).get("name", key)
        group = _group(spec)
        if group:
            return [f"{name}{suffix}" for suffix in group]
        if self.processes > 1:
            return [f"{name}-{i}" for i in range(self.processes)]
        return [name]

    def entries_of(self, names: list[str]) -> list[Hashable]:
        """The plan entries whose workers have these names (each entry once)."""
        wanted = set(names)
        return [
            key
            for key, spec in list(self.cluster.worker_spec.items())
            if wanted.intersection(map(str, self.worker_names(key, spec)))
        ]

    def waiting(self) -> list[Hashable]:
        """The plan entries none of whose workers has connected (queued jobs)."""
        aliases = self.scheduler.aliases
        return [
            key
            for key, spec in list(self.cluster.worker_spec.items())
            if not any(name in aliases for name in self.worker_names(key, spec))
        ]

    def planned_workers(self) -> int:
        """The workers the cluster's plan holds, started or not."""
        return sum(
            len(self.worker_names(key, spec))
            for key, spec in list(self.cluster.worker_spec.items())
        )

    def changed_by_hand(self) -> bool:
        """Whether the plan changed without this backend: O(1), for hooks.

        ``scale`` and ``scale_down`` by hand always change the number of
        entries (this backend updates its own record of the plan in the same
        step as each change it makes).
        """
        return self.active and len(self.cluster.worker_spec) != len(self.plan)

    def hand_over(self) -> None:
        """Say, once, that the plan is no longer this backend's."""
        if not self.active:
            return
        self.active = False
        before, after = len(self.plan), len(self.cluster.worker_spec)
        reason = (
            f"the cluster's plan went from {before} to {after} "
            f"{self._unit()} without the adaptive plugin (cluster.scale() or "
            "cluster.scale_down() by hand): adaptivity is off, the manual plan "
            "stands; cluster.adapt(Adaptive=ClusterAdaptive, ...) turns it on again"
        )
        logger.info("ClusterAdaptive: %s", reason)
        if self.on_change is not None:
            self.on_change(reason)

    def _unchanged(self) -> bool:
        """Active, and the plan is as this backend left it (else hand over)."""
        if not self.active:
            return False
        if set(self.cluster.worker_spec) != self.plan:
            self.hand_over()
            return False
        return True

    def _closing(self) -> bool:
        return self.cluster.status in (Status.closing, Status.closed)

    def _unit(self) -> str:
        return "jobs" if self.workers_per_entry > 1 else "workers"

    def _scale(self, n: int) -> Any:
        """``cluster.scale`` for ``n`` workers, in the count the cluster takes."""
        if is_jobqueue(self.cluster):
            return self.cluster.scale(n)  # workers; rounds up to whole jobs
        return self.cluster.scale(math.ceil(n / self.workers_per_entry))

    def _rename_reused(self, new: set[Hashable]) -> None:
        """Give each new entry whose name an earlier worker had a name of its own.

        SpecCluster names a new entry with the lowest free number, so a
        retired worker's name comes back at the next scale-up; to the plugin
        that name belongs to a worker that has ended. ``2`` becomes ``"2.1"``.
        Runs before the cluster starts the entries (in the same step as
        ``cluster.scale``), so the new workers start under the new name. An
        entry that names its worker in its options keeps it.
        """
        spec = self.cluster.worker_spec
        for key in new:
            names = {str(n) for n in self.worker_names(key, spec[key])}
            if names.isdisjoint(self.used) or "name" in _options(spec[key]):
                continue
            fresh = self._fresh_name(key, spec[key])
            spec[fresh] = spec.pop(key)

    def _fresh_name(self, key: Hashable, spec: Mapping[str, Any]) -> str:
        while True:
            self._renamed += 1
            name = f"{key}.{self._renamed}"
            names = {str(n) for n in self.worker_names(name, spec)}
            if name not in self.cluster.worker_spec and names.isdisjoint(self.used):
                return name

    async def _remove(self, entries: list[Hashable]) -> None:
        """``cluster.scale_down`` of these entries: their workers stop, their jobs end."""
        if not entries:
            return
        self.plan.difference_update(entries)  # before the cluster drops them
        await self.cluster.scale_down(entries)

    async def _correct_state(self) -> None:
        """Let the cluster start what its plan holds (``await cluster``).

        A worker or job that fails to start leaves the plan again, so that it
        is not counted as on its way, and the error is raised.
        """
        try:
            await self.cluster
        except Exception:
            await self._remove(self._failed_entries())
            raise

    def _failed_entries(self) -> list[Hashable]:
        started = self.cluster.workers
        return [
            key
            for key in list(self.cluster.worker_spec)
            if key in started and started[key].status != Status.running
        ]


def _group(spec: Mapping[str, Any] | None) -> list[str]:
    return list((spec or {}).get("group", []))


def _options(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return spec.get("options") or {}


def is_jobqueue(cluster: Any) -> bool:
    """Whether ``cluster`` is one of dask-jobqueue's (without importing it)."""
    jobqueue = sys.modules.get("dask_jobqueue")
    return jobqueue is not None and isinstance(cluster, jobqueue.JobQueueCluster)


def job_processes(cluster: Any) -> int:
    """Worker processes per dask-jobqueue job (1 for other clusters).

    dask-jobqueue only writes a ``group`` into the plan when ``processes`` is
    passed explicitly; with the default (from its config, about
    ``sqrt(cores)``) each job still runs that many workers.
    """
    if not is_jobqueue(cluster):
        return 1
    processes, _ = jobqueue_job_shape(cluster)
    return processes


def threads_per_worker(cluster: Any) -> int:
    """Threads of each new worker, to size the pool before any connects."""
    if is_jobqueue(cluster):
        _, threads = jobqueue_job_shape(cluster)
        return threads
    options = (cluster.new_spec or {}).get("options", {})
    for key in ("nthreads", "ncores", "threads"):
        value = options.get(key)
        if isinstance(value, int) and value >= 1:
            return value
    return 1


# -- what cluster.adapt() constructs ---------------------------------------------------------


class ClusterAdaptive:
    """Adaptive scaling of a Dask cluster object, from inside its scheduler.

    The drop-in for distributed's ``Adaptive``: construct it through the
    cluster, ``cluster.adapt(Adaptive=ClusterAdaptive, minimum=0,
    maximum=20)``. It adds an :class:`~dask_adaptive_plugin.AdaptivePlugin`
    to ``cluster.scheduler`` whose one pool is the cluster: the plugin decides
    when, reacting to the scheduler's events; the cluster's ``scale`` and
    ``scale_down`` start and stop workers (for dask-jobqueue, whole jobs).

    - ``cluster.adapt(...)`` called again replaces this object and its
      plugin with new settings (distributed keeps the earlier keywords and
      updates them with the new ones).
    - ``cluster.scale(n)`` or ``cluster.scale_down(...)`` by hand turns
      adaptivity off: the plugin notices the cluster's plan changed without
      it (at the next worker that comes or goes, or its next action, never
      acting on the changed plan) and stops; the manual plan stands.
      ``stop()`` does it explicitly (the Jupyter widget's Scale button does).
    - ``cluster.close()`` stops it first, like distributed's ``Adaptive``.

    Parameters
    ----------
    cluster
        A ``SpecCluster`` (``LocalCluster``, dask-jobqueue's ``SLURMCluster``,
        ``PBSCluster``...) whose scheduler runs in this process and has
        started. A cluster whose scheduler runs elsewhere (dask-gateway, the
        Kubernetes operator, ``SSHCluster``) raises ``ValueError`` showing how
        to load the plugin there with ``--preload``.
    minimum, maximum
        Bounds on the number of workers (dask-jobqueue: workers, not jobs;
        its ``minimum_jobs``/``maximum_jobs`` are converted by the cluster).
        ``maximum=math.inf`` (SpecCluster's default) means no bound.
    policy, idle_timeout, start_timeout, retire_timeout, record_trace
        As for :class:`~dask_adaptive_plugin.AdaptivePlugin`; ``None`` comes
        from dask config ``adaptive-plugin.*``.
    interval, wait_count
        distributed's ``Adaptive`` polls every ``interval`` and retires a
        worker after ``wait_count`` polls. This plugin does not poll: it
        reacts to events, and retires a worker idle for ``idle_timeout``.
        They are accepted (distributed passes the keywords of an earlier
        ``cluster.adapt()`` call again) and ignored, with a log line.
    worker_key
        distributed's grouping of workers to retire together. Refused unless
        ``None``: this plugin retires a cluster's groups (a job's workers)
        together by itself, and another grouping would be silently lost.
    **policy_options
        For the policy, such as ``target_duration="5s"`` (distributed's
        ``Adaptive`` takes the same keyword).

    Attributes
    ----------
    plugin
        The :class:`~dask_adaptive_plugin.AdaptivePlugin` on the scheduler.
    backend
        Its :class:`ClusterBackend`.
    log
        The plugin's decisions, ``(timestamp, dict)`` pairs.
    state
        ``"starting"``, ``"running"`` or ``"stopped"``, as distributed's.

    Examples
    --------
    >>> cluster = LocalCluster(n_workers=0)  # doctest: +SKIP
    >>> cluster.adapt(Adaptive=ClusterAdaptive, minimum=0, maximum=4)  # doctest: +SKIP
    >>> async with SLURMCluster(cores=8, memory="32GB", asynchronous=True) as cluster:
    ...     await cluster.adapt(Adaptive=ClusterAdaptive, maximum=20)  # doctest: +SKIP
    """

    #: distributed's ``Adaptive`` polls at this interval; this one does not poll.
    interval: float | None = None

    def __init__(
        self,
        cluster: Cluster,
        minimum: int | None = None,
        maximum: float | None = None,
        *,
        policy: Any = None,
        idle_timeout: str | float | None = None,
        start_timeout: str | float | None = None,
        retire_timeout: str | float | None = None,
        record_trace: str | None = None,
        interval: Any = None,
        wait_count: Any = None,
        worker_key: Any = None,
        **policy_options: Any,
    ) -> None:
        scheduler = local_scheduler(cluster)
        check_options(policy_options, worker_key)
        note_ignored(interval=interval, wait_count=wait_count)
        self.cluster: SpecCluster = cast(SpecCluster, cluster)
        self.backend = ClusterBackend(
            scheduler, self.cluster, on_change=self._hand_over
        )
        self.plugin = make_plugin(
            self.backend,
            minimum=minimum,
            maximum=None if maximum is not None and math.isinf(maximum) else maximum,
            policy=policy,
            idle_timeout=idle_timeout,
            start_timeout=start_timeout,
            retire_timeout=retire_timeout,
            record_trace=record_trace,
            **policy_options,
        )
        self._stopped = False
        self._attached = False
        self._tasks = BackgroundTasks("ClusterAdaptive")
        self._attaching = self._start()

    # -- what distributed and its widget read ------------------------------------------

    @property
    def state(self) -> State:
        """``"running"`` while the plugin acts on the cluster."""
        if self._stopped:
            return "stopped"
        if not self._attached:
            return "starting"
        # the scheduler closed, or another adaptive plugin replaced this one
        return "running" if self.plugin.controller is not None else "stopped"

    @property
    def periodic_callback(self) -> Literal[True] | None:
        """Truthy while adaptivity is on, ``None`` once it is off.

        There is no periodic callback: the plugin is event-driven. distributed's
        ``Cluster._scaling_status`` (the widget's "Scaling mode: Adaptive")
        reads this attribute of ``cluster._adaptive``.
        """
        return True if self.state != "stopped" else None

    @property
    def minimum(self) -> int:
        return self.plugin.options.minimum

    @property
    def maximum(self) -> float:
        maximum = self.plugin.options.maximum
        return math.inf if maximum is None else maximum

    @property
    def log(self) -> Any:
        return self.plugin.log

    @property
    def loop(self) -> Any:
        return self.cluster.loop

    def __repr__(self) -> str:
        return (
            f"<ClusterAdaptive {self.state}: minimum={self.minimum}, "
            f"maximum={self.maximum}, cluster={type(self.cluster).__name__}>"
        )

    def __await__(self) -> Generator[Any, None, ClusterAdaptive]:
        """``await cluster.adapt(...)`` (asynchronous clusters): until attached."""
        return self._wait_attached().__await__()

    async def _wait_attached(self) -> ClusterAdaptive:
        if self._attaching is not None:
            await self._attaching
        return self

    # -- attaching and detaching --------------------------------------------------------

    def _start(self) -> asyncio.Task[None] | None:
        """Attach now (blocking) from outside the loop, or in a task on it."""
        if self.cluster.called_from_running_loop:
            return self._tasks.spawn(self._attach(), "attaching the plugin")
        self.cluster.sync(self._attach)
        return None

    async def _attach(self) -> None:
        scheduler = self.cluster.scheduler
        if self._stopped:
            return
        await replace_previous(scheduler)
        await scheduler.register_scheduler_plugin(self.plugin, idempotent=False)
        self._attached = True
        if self._stopped:  # stop() came while attaching
            await self._detach("stopped while starting")

    def stop(self, reason: str = "unknown") -> None:
        """Turn adaptivity off; the workers stay (``cluster.close()`` stops them).

        Called by distributed (``cluster.adapt()`` again, ``cluster.close()``,
        the widget's Scale button) from its event loop or another thread.
        Outside the loop it waits, up to :data:`STOP_WAIT` seconds, until the
        plugin has stopped.
        """
        if self._stopped:
            return
        self._stopped = True
        self.backend.active = False
        self._on_loop(self._detach(f"ClusterAdaptive.stop(): {reason}"))

    def _hand_over(self, reason: str) -> None:
        """The cluster's plan changed by hand (called on the loop)."""
        if self._stopped:
            return
        self._stopped = True
        self._on_loop(self._detach(reason))

    async def _detach(self, reason: str) -> None:
        # stopped first, then removed: a scheduler closing meanwhile waits
        # for this stop in the plugin's close()
        await self.plugin.stop(reason)
        scheduler = self.cluster.scheduler
        if scheduler.plugins.get("adaptive") is self.plugin:
            scheduler.remove_plugin("adaptive")

    def _on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the cluster's loop: a task from the loop itself,
        else submitted to it and waited for."""
        loop = cluster_loop(self.cluster)
        if _running_loop() is loop:
            self._tasks.spawn(coro, "stopping the plugin")
        elif loop is None or loop.is_closed() or not loop.is_running():
            coro.close()
        else:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            try:
                future.result(STOP_WAIT)
            except concurrent.futures.TimeoutError:
                logger.warning("ClusterAdaptive: the plugin did not stop in time")


def cluster_loop(cluster: Any) -> asyncio.AbstractEventLoop | None:
    """The asyncio loop of the cluster's IOLoop."""
    return getattr(getattr(cluster, "loop", None), "asyncio_loop", None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# -- checks and parts ------------------------------------------------------------------------


def local_scheduler(cluster: Any) -> Scheduler:
    """The cluster's ``Scheduler``, if it runs in this process on the cluster's
    loop; ``ValueError`` showing the ``--preload`` way otherwise."""
    scheduler = getattr(cluster, "scheduler", None)
    if scheduler is None and isinstance(cluster, SpecCluster):
        raise ValueError(
            f"cluster.adapt(Adaptive=ClusterAdaptive): the {type(cluster).__name__} "
            "has not started yet; start it first (`await cluster`, or "
            "`async with ...(asynchronous=True) as cluster:`), then call adapt"
        )
    if not isinstance(scheduler, Scheduler) or not _same_loop(scheduler, cluster):
        raise ValueError(remote_scheduler_message(cluster))
    if not isinstance(cluster, SpecCluster):
        raise TypeError(
            f"cluster.adapt(Adaptive=ClusterAdaptive) needs a SpecCluster "
            f"(LocalCluster, dask-jobqueue's clusters), whose plan of workers it "
            f"reads; {type(cluster).__name__} is not one. Write a backend for "
            "it instead (docs/writing-a-backend.md) and use "
            "AdaptivePlugin(backend=...)"
        )
    return scheduler


def _same_loop(scheduler: Scheduler, cluster: Any) -> bool:
    own = cluster_loop(cluster)
    return own is not None and getattr(scheduler.loop, "asyncio_loop", None) is own


def remote_scheduler_message(cluster: Any) -> str:
    """Why a cluster whose scheduler runs elsewhere cannot be driven, and the fix."""
    try:
        where = f" ({cluster.scheduler_address})"
    except (AttributeError, OSError):  # not connected
        where = ""
    return (
        "cluster.adapt(Adaptive=ClusterAdaptive) adds the adaptive plugin to the "
        "cluster's scheduler in this process, but the scheduler of this "
        f"{type(cluster).__name__} runs elsewhere{where}. Load the plugin in that "
        "scheduler instead, with a backend of its own, for example\n"
        "    dask scheduler --preload dask_adaptive_plugin "
        "--adaptive-backend kubernetes --adaptive-maximum 20\n"
        "(dask-gateway: add the --preload options to the scheduler's command; "
        "the Kubernetes operator: to the scheduler container's args), and do "
        "not call cluster.adapt(). See docs/backends.md, 'ClusterAdaptive'."
    )


def check_options(policy_options: Mapping[str, Any], worker_key: Any) -> None:
    """Refuse what cannot mean anything here, naming it and the alternative."""
    refused = sorted(set(policy_options) & set(REFUSED))
    if refused:
        raise ValueError(
            f"cluster.adapt(Adaptive=ClusterAdaptive, {refused[0]}=...): the "
            "cluster is the one pool and its own backend; for other backends or "
            "several pools, use AdaptivePlugin(...) or dask scheduler --preload "
            "dask_adaptive_plugin"
        )
    if worker_key is not None:
        raise ValueError(
            f"cluster.adapt(Adaptive=ClusterAdaptive, worker_key={worker_key!r}): "
            "ClusterAdaptive retires the workers of one job (one plan entry) "
            "together by itself and takes no other grouping; pass worker_key=None "
            "(distributed keeps the keywords of an earlier cluster.adapt() call)"
        )


def note_ignored(**options: Any) -> None:
    given = {k: v for k, v in options.items() if v is not None}
    if given:
        logger.info(
            "ClusterAdaptive ignores %s: it does not poll, it reacts to the "
            "scheduler's events; idle_timeout says how long a worker must be "
            "idle before it is retired",
            ", ".join(f"{k}={v!r}" for k, v in given.items()),
        )


def make_plugin(backend: ClusterBackend, **options: Any) -> AdaptivePlugin:
    """The plugin with the cluster as its one pool; bad options raise ``ValueError``.

    Pools and backend options in dask config (for ``--preload`` deployments)
    do not apply to a cluster's own adaptivity.
    """
    config = {"adaptive-plugin.pools": None}
    try:
        with dask.config.set(config):
            return _ClusterPlugin(backend, backend_options={}, **options)
    except ValueError as e:
        raise ValueError(f"cluster.adapt(Adaptive=ClusterAdaptive, ...): {e}") from None


async def replace_previous(scheduler: Scheduler) -> None:
    """Stop and remove an adaptive plugin already on the scheduler (an earlier
    ``cluster.adapt()``), so that the new one does not overwrite it unstopped."""
    previous = scheduler.plugins.get("adaptive")
    if previous is None:
        return
    scheduler.remove_plugin("adaptive")
    if isinstance(previous, AdaptivePlugin):
        await previous.stop("replaced by cluster.adapt(Adaptive=ClusterAdaptive)")


class _ClusterPlugin(AdaptivePlugin):
    """The adaptive plugin, which first checks whether the cluster's plan
    changed by hand when a worker comes or goes.

    The check is O(1) and runs before the plugin reacts to the worker, so a
    worker started by hand is never taken for one the plugin does not need.
    """

    def __init__(self, backend: ClusterBackend, **options: Any) -> None:
        super().__init__(backend=backend, **options)
        self.cluster_backend = backend

    def _plan_changed(self) -> bool:
        try:
            if self.cluster_backend.changed_by_hand():
                self.cluster_backend.hand_over()
                return True
        except Exception:
            logger.exception("ClusterAdaptive: checking the cluster's plan failed")
        return False

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        if not self._plan_changed():
            super().add_worker(scheduler, worker)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        if not self._plan_changed():
            super().remove_worker(scheduler, worker, **kwargs)
