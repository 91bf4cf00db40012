"""The plugin's state as plain data, for ``dask adaptive status``.

:func:`status` reads the planner, the ledger and the idle workers of a running
plugin and returns a dict of plain values (JSON as it is). It does no I/O and
costs O(pools + idle workers + unsatisfiable needs), once per call: nothing is
added to any hook.

A client reaches it through a channel the scheduler already has,
``client.run_on_scheduler(on_scheduler)``, which runs :func:`on_scheduler` on
the scheduler's event loop, where the plugin's state is consistent;
:func:`log_on_scheduler` likewise reads the decisions (the events of topic
``"adaptive"``).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from dask_adaptive_plugin.planner import CRASH_LIMIT

if TYPE_CHECKING:
    from distributed import Scheduler

    from dask_adaptive_plugin.planner import Planner, PoolRuntime
    from dask_adaptive_plugin.plugin import AdaptivePlugin

#: The plugin's name in ``scheduler.plugins``.
PLUGIN_NAME = "adaptive"
#: The scheduler event topic of its decisions.
TOPIC = "adaptive"
#: Ledger states shown per pool, in the order of a worker's life.
STATES = ("requested", "launching", "running", "retiring")


def find_plugin(scheduler: Scheduler) -> AdaptivePlugin | None:
    """The scheduler's adaptive plugin, or ``None`` if it has none."""
    from dask_adaptive_plugin.plugin import AdaptivePlugin

    plugin = scheduler.plugins.get(PLUGIN_NAME)
    return plugin if isinstance(plugin, AdaptivePlugin) else None


def on_scheduler(dask_scheduler: Scheduler) -> dict[str, Any] | None:
    """Run by ``client.run_on_scheduler``: the status, or ``None`` without a plugin.

    The argument's name is the one distributed fills with the scheduler.
    """
    plugin = find_plugin(dask_scheduler)
    return status(plugin) if plugin is not None else None


def has_plugin(dask_scheduler: Scheduler) -> bool:
    """Run by ``client.run_on_scheduler``: whether an adaptive plugin is there."""
    return find_plugin(dask_scheduler) is not None


def log_on_scheduler(
    dask_scheduler: Scheduler, subscriber: str | None = None
) -> dict[str, Any]:
    """Run by ``client.run_on_scheduler``: the decisions so far, and whether
    an adaptive plugin is there (``plugin``, ``events``).

    With ``subscriber`` (a client's id) and a plugin, that client is
    subscribed to topic ``"adaptive"`` in the same step of the scheduler's
    event loop as the decisions are read, so that each later decision reaches
    it as an event and none is missed or repeated. (A client's
    ``subscribe_topic`` message and its ``get_events`` call travel on
    different connections, in no guaranteed order.)
    """
    present = find_plugin(dask_scheduler) is not None
    if present and subscriber is not None:
        dask_scheduler.subscribe_topic(TOPIC, subscriber)
    return {"plugin": present, "events": list(dask_scheduler.get_events(TOPIC))}


def status(plugin: AdaptivePlugin, now: float | None = None) -> dict[str, Any]:
    """What the plugin knows now, per pool, as plain data.

    Parameters
    ----------
    plugin
        The adaptive plugin, started or not.
    now
        The controller's monotonic time; read from the controller if ``None``.

    Returns
    -------
    dict
        ``running`` (whether it is scaling), ``scheduler``, ``policy``,
        ``minimum`` and ``maximum`` over all pools, ``workers`` and
        ``unmanaged`` (connected workers, and those no pool claims),
        ``pools`` (one dict per pool, cheapest first: see :func:`pool_status`),
        ``unsatisfiable`` (needs no pool provides: ``resources``, ``tasks``)
        and ``demand`` (the last evaluation's summary of the work).
    """
    planner, controller = plugin.planner, plugin.controller
    scheduler = plugin.scheduler
    result: dict[str, Any] = {
        "running": planner is not None and controller is not None,
        "scheduler": scheduler.address if scheduler is not None else None,
        "policy": type(plugin.policy).__name__,
        "minimum": plugin.options.minimum,
        "maximum": plugin.options.maximum,
        "workers": len(scheduler.workers) if scheduler is not None else 0,
        "unmanaged": 0,
        "pools": [],
        "unsatisfiable": [],
        "demand": "",
    }
    if planner is None or controller is None:
        return result
    if now is None:
        now = controller.now()
    idle = idle_per_pool(plugin)
    result["unmanaged"] = planner.ledger.count(None, "running", "retiring")
    result["pools"] = [
        pool_status(planner, p, idle[p.name], now) for p in planner.pools
    ]
    result["unsatisfiable"] = [
        {"resources": dict(need.resources), "tasks": need.tasks}
        for need in planner.unsatisfiable.values()
    ]
    result["demand"] = planner.last_plan.reason
    return result


def idle_per_pool(plugin: AdaptivePlugin) -> Counter[str | None]:
    """How many idle workers each pool has (``None``: workers no pool claims)."""
    idle = plugin.stats.idle if plugin.stats is not None else {}
    return Counter(plugin.ledger.pool_of(address) for address in idle)


def pool_status(
    planner: Planner, p: PoolRuntime, idle: int, now: float
) -> dict[str, Any]:
    """One pool: its declaration, what was wanted, its workers by state.

    ``maximum`` is the effective bound (the lowest of the pool's, its
    backend's and the one over all pools; ``None``: none); ``startup`` the
    measured seconds from request to connection (``None`` until a worker has
    connected); ``unavailable`` says why the pool is not asked for workers
    now, or is ``None``.
    """
    ledger, name = planner.ledger, p.name
    latency = ledger.latency[name]
    available, why = availability(planner, name, now)
    return {
        "name": name,
        "backend": backend_name(p.pool.backend),
        "minimum": p.pool.minimum,
        "maximum": lowest(p.maximum, planner.maximum),
        "resources": dict(p.pool.resources) if p.pool.resources is not None else None,
        "cost": p.pool.cost,
        "desired": planner.last_plan.desired.get(name, 0),
        **{state: ledger.count(name, state) for state in STATES},
        "idle": idle,
        "startup": {
            "median": latency.median,
            "p90": latency.p90,
            "samples": latency.count,
        },
        "available": available,
        "unavailable": why,
    }


def availability(planner: Planner, pool: str, now: float) -> tuple[bool, str | None]:
    """Whether ``pool`` may be asked for workers now, and if not, why."""
    if planner.available(pool, now):
        return True, None
    state = planner.state[pool]
    if state.crashes >= CRASH_LIMIT:
        return False, (
            f"{state.crashes} workers in a row exited soon after starting; "
            "waits for new work"
        )
    if now < state.cooldown_until:
        return False, f"fallback cool-down, {state.cooldown_until - now:.0f}s left"
    return False, (
        f"back-off after {state.failures} failures, {state.not_before - now:.0f}s left"
    )


def lowest(*bounds: int | None) -> int | None:
    """The lowest bound; ``None`` is no bound."""
    given = [b for b in bounds if b is not None]
    return min(given) if given else None


def backend_name(backend: Any) -> str:
    """An entry-point name as it is; a class or an instance by its class's path."""
    if isinstance(backend, str):
        return backend
    cls = backend if isinstance(backend, type) else type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"
