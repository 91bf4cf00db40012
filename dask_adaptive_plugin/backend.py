"""The backend interface: *how* workers are started and stopped."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from distributed import Scheduler


class Backend:
    """Starts and stops workers for the adaptive plugin.

    This is the object of Dask's adaptive deployments: the plugin decides
    *when* to scale, a backend knows *how*. It is constructed as
    ``cls(scheduler, **options)`` and only has to offer two methods.

    To implement a backend:

    1. inherit from this class (optional: any object with the two methods works);
    2. accept the scheduler and your options in ``__init__`` and check the
       options there, raising ``ValueError`` that names the bad one (override
       :meth:`check_options` to run the same checks before the scheduler starts);
    3. implement :meth:`scale_up` and :meth:`scale_down`, as plain functions or
       coroutines;
    4. optionally implement :meth:`close`, :meth:`cancel_pending` and
       :meth:`stopped_together`, and
       set :attr:`maximum` and :attr:`threads_per_worker` when you know them;
    5. register the class in your package's ``setup.cfg``::

           [options.entry_points]
           dask_adaptive_plugin.backends =
               mysystem = my_package:MySystemBackend

    Event-loop semantics: every method is called on the scheduler's event loop,
    one call at a time (the plugin never overlaps two calls on one backend).
    A plain function blocks the scheduler while it runs, so anything that
    waits on I/O should be a coroutine. An exception is logged as an event on
    topic ``"adaptive"`` and the call is retried later with back-off; it never
    reaches the scheduler.

    Parameters
    ----------
    scheduler
        The scheduler the workers should connect to (``scheduler.address``).
    **options
        Backend options (``backend_options=``, ``--adaptive-option KEY=VALUE``,
        config ``adaptive-plugin.backend-options``), keys in snake_case.
    """

    #: The most workers this backend can run, or ``None`` for no bound of its
    #: own. Used when the plugin's ``maximum`` is not set.
    maximum: int | None = None

    #: Threads each new worker will have; the policy uses it to size a
    #: cluster before any worker has connected.
    threads_per_worker: int = 1

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
        """Bring the total number of workers up to ``n``.

        Parameters
        ----------
        n
            The total the cluster should have, counting workers already running
            and those this backend has started that have not connected yet.
        **kwargs
            What waiting tasks need that no worker has: for each resource, the
            largest amount one task asks for (tasks annotated
            ``resources={"memory": 8e9}`` give ``memory=8e9``).
        """
        raise NotImplementedError

    def scale_down(self, workers: list[str]) -> None | Awaitable[None]:
        """Stop the workers at these addresses.

        The plugin has already moved their data to other workers through
        ``Scheduler.retire_workers``, and they are still known to the scheduler
        (``scheduler.workers[address].name`` gives each one's name).
        """
        raise NotImplementedError

    def cancel_pending(self) -> None | Awaitable[None]:
        """Stop the workers requested that have not connected.

        Called when they are overdue (``start_timeout``); the plugin then asks
        for workers again, after a back-off. The default does nothing.
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
