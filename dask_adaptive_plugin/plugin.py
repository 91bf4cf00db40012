"""The scheduler plugin: hooks feed the statistics and poke the controller."""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections import deque
from functools import partial
from time import time
from typing import TYPE_CHECKING, Any

import dask
from distributed import Scheduler
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_adaptive_plugin import registry
from dask_adaptive_plugin.backend import Backend
from dask_adaptive_plugin.config import Options, resolve_options
from dask_adaptive_plugin.controller import Controller
from dask_adaptive_plugin.stats import ClusterStats

if TYPE_CHECKING:
    from dask_adaptive_plugin.policy import Policy

logger = logging.getLogger(__name__)

#: The adaptive plugin acting on each scheduler: one at a time.
_acting: weakref.WeakKeyDictionary[Scheduler, AdaptivePlugin] = (
    weakref.WeakKeyDictionary()
)


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
        :class:`~dask_adaptive_plugin.Backend` class, or an instance.
    minimum, maximum
        Bounds on the number of workers; ``maximum=None`` takes the backend's
        own bound (``local``: the CPU count).
    policy
        When to scale: an entry-point name in ``dask_adaptive_plugin.policies``
        (``"adaptive"``, ``"fixed"``), a :class:`~dask_adaptive_plugin.Policy`
        class, or an instance.
    idle_timeout
        How long a worker must have been idle before it is retired (``"10s"``).
    backend_options
        Keyword arguments for the backend; keys may be kebab-case.
    start_timeout
        How long requested workers may take to connect before they are asked
        for again; it also bounds each backend call.
    retire_timeout
        How long a retirement may take before it is given up and the workers
        are kept.
    **policy_options
        Keyword arguments for the policy, such as ``target_duration="5s"``.

    Attributes
    ----------
    log
        The decisions, as ``(timestamp, dict)`` pairs: ``{"status": "up",
        "n": 4, "reason": ...}`` and ``{"status": "down", "workers": [...],
        "reason": ...}``. Each is also a scheduler event on topic ``"adaptive"``.

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
            **policy_options,
        )
        self.options = resolve_options(
            backend=backend,
            policy=policy,
            minimum=minimum,
            maximum=maximum,
            idle_timeout=idle_timeout,
            start_timeout=start_timeout,
            retire_timeout=retire_timeout,
            backend_options=backend_options,
            policy_options=policy_options,
        )
        self._backend_spec = registry.resolve(registry.BACKENDS, self.options.backend)
        check_backend_options(self._backend_spec, self.options.backend_options)
        self.policy = make_policy(self.options, self._backend_spec)
        self.log: deque[tuple[float, dict[str, Any]]] = deque(
            maxlen=dask.config.get("distributed.admin.low-level-log-length")
        )
        self.scheduler: Scheduler | None = None
        self.backend: Backend | None = None
        self.stats: ClusterStats | None = None
        self.controller: Controller | None = None
        self._attach_scheduled = False
        self._failed_hooks: set[str] = set()

    # -- pickling: only the arguments travel (client.register_plugin) -----------------

    def __getstate__(self) -> dict[str, Any]:
        return self._arguments

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- attaching -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``"adaptive"``: one adaptive plugin per scheduler.

        ``Scheduler.add_plugin`` reads this and does not call :meth:`start`;
        reading it on a running event loop therefore schedules a check that
        starts this plugin if it was added to a scheduler that is running.
        """
        self._attach_soon()
        return "adaptive"

    def _attach_soon(self) -> None:
        if self.scheduler is not None or self._attach_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._attach_scheduled = True
        loop.call_soon(self._attach_if_added)

    def _attach_if_added(self) -> None:
        self._attach_scheduled = False
        for scheduler in list(Scheduler._instances):
            if (
                scheduler.plugins.get("adaptive") is self
                and scheduler.status == Status.running
            ):
                asyncio.ensure_future(self.start(scheduler))

    async def start(self, scheduler: Scheduler) -> None:
        """Begin acting on ``scheduler``: seed the statistics, create the backend.

        Called by the scheduler when it starts, or at once when the plugin is
        added to (or registered with) a scheduler that is already running.
        A previous adaptive plugin on the same scheduler is stopped first.
        """
        if self.scheduler is not None:
            return
        self.scheduler = scheduler
        previous = _acting.get(scheduler)
        _acting[scheduler] = self
        if previous is not None and previous is not self:
            await previous.stop("replaced by a new adaptive plugin")
        try:
            self.backend = make_backend(self._backend_spec, scheduler, self.options)
        except Exception:
            self.scheduler = None
            _acting.pop(scheduler, None)
            raise
        if self.options.maximum is None:
            self.policy.maximum = backend_maximum(self.backend)
        self.stats = ClusterStats(scheduler, time())
        self.controller = Controller(
            scheduler,
            self.stats,
            self.policy,
            self.backend,
            self._record,
            self.options.start_timeout,
            self.options.retire_timeout,
        )
        self.controller.start()
        logger.info(
            "adaptive: scaling with %s backend and %s policy, %d to %s workers",
            type(self.backend).__name__,
            type(self.policy).__name__,
            self.policy.minimum,
            self.policy.maximum,
        )

    async def stop(self, reason: str = "stopped") -> None:
        """Stop acting and close the backend (which stops its workers)."""
        controller, backend = self.controller, self.backend
        self.controller = self.stats = None
        if controller is None:
            return
        await controller.close()
        self._record({"status": "stopped", "reason": reason})
        if self.scheduler is not None and _acting.get(self.scheduler) is self:
            del _acting[self.scheduler]
        close = getattr(backend, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result

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
        stats, controller = self.stats, self.controller
        if controller is None:
            return
        try:
            stats.transition(key, start, finish, kwargs.get("worker"))  # type: ignore[union-attr]
            controller.poke()
        except Exception:
            self._hook_failed("transition")

    def update_graph(self, scheduler: Scheduler, **kwargs: Any) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            controller.new_work()
            controller.poke()
        except Exception:
            self._hook_failed("update_graph")

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        stats, controller = self.stats, self.controller
        if controller is None:
            return
        try:
            now = time()
            stats.worker_added(worker, now)  # type: ignore[union-attr]
            controller.worker_arrived(worker, now)
            controller.poke()
        except Exception:
            self._hook_failed("add_worker")

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        stats, controller = self.stats, self.controller
        if controller is None:
            return
        try:
            stats.worker_removed(worker)  # type: ignore[union-attr]
            controller.worker_left(worker, time())
            controller.poke()
        except Exception:
            self._hook_failed("remove_worker")

    def restart(self, scheduler: Scheduler) -> None:
        if self.stats is not None:
            self.stats.needs_reseed = True
        self._poke("restart")

    def _poke(self, hook: str) -> None:
        controller = self.controller
        if controller is None:
            return
        try:
            controller.poke()
        except Exception:
            self._hook_failed(hook)

    def _hook_failed(self, hook: str) -> None:
        """Log once per hook; recount the statistics at the next evaluation."""
        if self.stats is not None:
            self.stats.needs_reseed = True
        if hook not in self._failed_hooks:
            self._failed_hooks.add(hook)
            logger.exception("adaptive: the %s hook failed; statistics recounted", hook)

    # -- decisions ---------------------------------------------------------------------------

    def _record(self, entry: dict[str, Any]) -> None:
        self.log.append((time(), entry))
        logger.info("adaptive: %s", entry)
        if self.scheduler is not None:
            self.scheduler.log_event("adaptive", entry)


def check_backend_options(spec: Any, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` if the backend cannot take these options."""
    if not inspect.isclass(spec):
        if options:
            raise ValueError(
                f"backend_options {sorted(options)} were given with a backend "
                f"instance ({spec!r}); pass the class or name instead"
            )
        return
    check = getattr(spec, "check_options", None)
    if check is None:  # a backend that does not inherit from Backend
        check = partial(Backend.check_options.__func__, spec)  # type: ignore[attr-defined]
    check(**options)


def backend_maximum(backend: Any) -> int | None:
    """The backend's own bound on workers; ``ValueError`` if it is not one."""
    maximum = getattr(backend, "maximum", None)
    if maximum is not None and (
        isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 0
    ):
        raise ValueError(
            f"backend {backend!r} has maximum={maximum!r}; a backend's maximum "
            "must be a whole number >= 0 or None"
        )
    return maximum


def make_backend(spec: Any, scheduler: Scheduler, options: Options) -> Backend:
    if not inspect.isclass(spec):
        return spec
    return spec(scheduler, **options.backend_options)


def make_policy(options: Options, backend: Any) -> Policy:
    spec = registry.resolve(registry.POLICIES, options.policy)
    if not inspect.isclass(spec):
        return spec
    maximum = options.maximum
    if maximum is None:
        maximum = backend_maximum(backend)
    common = dict(
        minimum=options.minimum, maximum=maximum, idle_timeout=options.idle_timeout
    )
    try:
        inspect.signature(spec).bind(**common, **options.policy_options)
    except TypeError:
        raise ValueError(
            f"invalid policy options for policy {spec.__name__}: "
            f"{sorted(options.policy_options)}; it takes {_parameters(spec)}"
        ) from None
    if maximum is not None and options.minimum > maximum:
        raise ValueError(
            f"invalid minimum (--adaptive-minimum, config adaptive-plugin.minimum): "
            f"{options.minimum} is above the backend's maximum {maximum}; "
            f"expected minimum <= maximum"
        )
    return spec(**common, **options.policy_options)


def _parameters(cls: type) -> str:
    names = [
        p.name
        for p in list(inspect.signature(cls).parameters.values())
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in ("scheduler", "minimum", "maximum", "idle_timeout")
    ]
    return ", ".join(names) or "no options"
