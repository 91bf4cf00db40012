"""The backend interface: *how* workers are started and stopped."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from distributed import Scheduler

logger = logging.getLogger(__name__)

#: What :meth:`Backend.report` says of a worker it launched: waiting (a queued
#: job, a Pending Pod) or started (its worker may still be connecting).
PENDING = "pending"
RUNNING = "running"


@dataclass(frozen=True)
class PoolContext:
    """What the plugin tells a backend about the pool it serves.

    Set as :attr:`Backend.pool` before the plugin's first call. A backend used
    on its own (in a test) keeps the default, which names workers through the
    scheduler and logs events on topic ``"adaptive"`` directly.

    Attributes
    ----------
    name
        The pool's name.
    log_event
        Records an event (a dict with ``status`` and ``reason``) through the
        plugin: it reaches ``plugin.log`` and topic ``"adaptive"``, with the
        pool's name.
    worker_name
        The name of a worker from its address, also for a worker that has
        already left the scheduler (a crashed one).
    """

    name: str = "default"
    log_event: Callable[[dict[str, Any]], None] | None = None
    worker_name: Callable[[str], str | None] | None = None


class Backend:
    """Starts and stops the workers of one pool for the adaptive plugin.

    This is the object of Dask's adaptive deployments: the plugin decides
    *when* to scale, a backend knows *how*. It is constructed as
    ``cls(scheduler, **options)`` and only has to offer two methods.

    To implement a backend:

    1. inherit from this class (optional: any object with the two methods works);
    2. accept the scheduler and your options in ``__init__`` and check the
       options there, raising ``ValueError`` that names the bad one (override
       :meth:`check_options` to run the same checks before the scheduler starts);
    3. implement :meth:`scale_up` and :meth:`scale_down`, as plain functions or
       coroutines; ``n`` counts only the workers of this backend;
    4. optionally implement :meth:`report` (what you launched, by worker
       name), :meth:`close`, :meth:`cancel_pending` and
       :meth:`stopped_together`, and set :attr:`maximum` (or
       :attr:`default_maximum`) and :attr:`threads_per_worker` when you know
       them (in ``__init__`` is fine);
    5. register the class in your package's ``setup.cfg``::

           [options.entry_points]
           dask_adaptive_plugin.backends =
               mysystem = my_package:MySystemBackend

    Event-loop semantics: every method is called on the scheduler's event loop,
    one call at a time per backend, each bounded by the pool's
    ``start_timeout``. A plain function blocks the scheduler while it runs, so
    anything that waits on I/O should be a coroutine. An exception is logged as
    an event on topic ``"adaptive"`` and the call is retried later with
    back-off; it never reaches the scheduler.

    Parameters
    ----------
    scheduler
        The scheduler the workers should connect to (``scheduler.address``).
    **options
        Backend options (``backend_options=``, ``--adaptive-option KEY=VALUE``,
        config ``adaptive-plugin.backend-options``), keys in snake_case.
    """

    #: The most workers this backend can run, or ``None`` for no bound of its
    #: own. The pool's ``maximum`` is the lower of this and its own.
    maximum: int | None = None

    #: A sensible bound for when the user gives no ``maximum`` at all (neither
    #: the pool's nor the plugin's), or ``None``. Unlike :attr:`maximum`, a
    #: given ``maximum`` may go above it: ``local`` runs one worker per core
    #: unless told otherwise.
    default_maximum: int | None = None

    #: Threads each new worker will have; the policy uses it to size a
    #: cluster before any worker has connected.
    threads_per_worker: int = 1

    #: The pool this backend serves; set by the plugin before its first call.
    pool: PoolContext = PoolContext()

    def __init__(self, scheduler: Scheduler, **options: Any) -> None:
        if options:
            raise ValueError(
                f"{type(self).__name__} takes no options; got {sorted(options)}"
            )
        self.scheduler = scheduler

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Raise ``ValueError`` for options this backend cannot take.

        Called when the plugin is created, before any scheduler exists, so that
        bad input fails at once (``AdaptivePlugin(...)`` raises, ``dask
        scheduler`` exits at start-up). The default checks the names against
        ``__init__``; override it to check values too, without side effects.
        """
        try:
            inspect.signature(cls).bind(None, **options)
        except TypeError:
            accepted = [
                p.name
                for p in list(inspect.signature(cls).parameters.values())[1:]
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            raise ValueError(
                f"invalid backend_options for backend {cls.__name__}: "
                f"{sorted(options)}; it takes {', '.join(accepted) or 'no options'}"
            ) from None

    def scale_up(self, n: int, **kwargs: Any) -> None | Awaitable[None]:
        """Bring this backend's workers up to ``n`` in total.

        Parameters
        ----------
        n
            The total this backend should have: its workers running and those
            it has launched that have not connected yet. Workers of other
            pools, or started by hand, are not counted. Asked again with the
            same ``n``, start nothing; asked for less, stop nobody.
        **kwargs
            The resources each new worker must provide (``dask worker
            --resources``): the pool's declared ``resources``, or for a pool
            that declares none, for each resource the largest amount one
            waiting task asks for (tasks annotated ``resources={"GPU": 1}``
            give ``GPU=1``).
        """
        raise NotImplementedError

    def scale_down(self, workers: list[str]) -> None | Awaitable[None]:
        """Stop the workers at these addresses, and forget them.

        Usually the plugin has already moved their data to other workers
        through ``Scheduler.retire_workers``. It also names workers that
        crashed and have left the scheduler, so that their slots are freed:
        :meth:`names` gives the name of either kind.
        """
        raise NotImplementedError

    def report(self) -> Mapping[str, str] | None | Awaitable[Mapping[str, str] | None]:
        """What this backend has launched and not stopped, by worker name.

        Each name maps to :data:`PENDING` (waiting: a queued job, a Pending
        Pod) or :data:`RUNNING` (started; its worker may still be connecting).
        A name missing from it has ended. The plugin calls it after each call
        to the backend and reconciles its ledger with it, so a waiting job
        cancelled in ``scale_down`` leaves the count at once, and a worker the
        backend adopted from an earlier run is counted. Answer from what you
        know; do no slow I/O here. The default, ``None``: this backend cannot
        tell, and the plugin counts from what it asked for and what connects.
        """
        return None

    def cancel_pending(self) -> None | Awaitable[None]:
        """Stop the workers launched that have not connected.

        Called when they are overdue (the pool's ``start_timeout``); the
        plugin then asks for workers again, after a cool-down, from this pool
        or the next that fits. The default does nothing.
        """

    def stopped_together(self, address: str) -> list[str]:
        """The workers that stop with this one (itself included).

        A batch job that runs several worker processes is started and stopped
        as one unit; the plugin then retires a job's workers all at once or
        not at all. The default: each worker is its own unit.
        """
        return [address]

    async def close(self) -> None:
        """Stop every worker this backend started and release its resources."""

    # -- helpers for implementations ---------------------------------------------------

    def names(self, addresses: Iterable[str]) -> list[str]:
        """The worker names of these addresses (connected, or recently gone)."""
        lookup = self.pool.worker_name
        known = self.scheduler.workers
        names = []
        for address in addresses:
            name = lookup(address) if lookup is not None else None
            if name is None and address in known:
                name = str(known[address].name)
            if name is not None:
                names.append(name)
        return names

    def log_event(self, event: dict[str, Any]) -> None:
        """Record an event (``status`` and ``reason`` at least) through the plugin."""
        if self.pool.log_event is not None:
            self.pool.log_event(event)
        else:
            logger.info("%s: %s", type(self).__name__, event)
            self.scheduler.log_event("adaptive", event)
