"""The only module that touches distributed's internals.

Each use says why no public API serves, and was checked against distributed
2026.8.0. ``tests/test_compat.py`` fails when distributed changes one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from distributed import Scheduler
from distributed.core import Status

if TYPE_CHECKING:
    from distributed.scheduler import TaskPrefix

#: The distributed release these internals were checked against.
CHECKED_AGAINST = "2026.8.0"


def prefix_duration(scheduler: Scheduler, prefix: TaskPrefix) -> float:
    """How long one task of ``prefix`` is expected to take, in seconds.

    The scheduler's own estimate (the measured average, else
    ``distributed.scheduler.default-task-durations``, else the unknown-task
    duration), which it uses for its occupancy. It is only offered as the
    private ``Scheduler._get_prefix_duration``; re-implementing it would drift
    from what the scheduler believes.
    """
    return scheduler._get_prefix_duration(prefix)


def when_added(plugin: object, start: Callable[[Scheduler], None]) -> None:
    """Call ``start(scheduler)`` soon if ``plugin`` was just added to a running
    scheduler with ``Scheduler.add_plugin``.

    ``add_plugin`` reads the plugin's ``name`` and stores it, but neither calls
    ``start`` nor tells the plugin which scheduler it joined. So the plugin calls
    this when its name is read: on the next turn of the event loop, the running
    scheduler that now holds it under that name is found among
    ``Scheduler._instances`` (private: there is no public registry of the
    schedulers of a process). A scheduler that is not running yet starts the
    plugin itself; ``register_scheduler_plugin`` has started it already.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no event loop: no running scheduler to have been added to
    loop.call_soon(_start_if_added, plugin, start)


def _start_if_added(plugin: object, start: Callable[[Scheduler], None]) -> None:
    for scheduler in list(Scheduler._instances):
        if scheduler.status == Status.running and any(
            p is plugin for p in scheduler.plugins.values()
        ):
            start(scheduler)


def undo_retirement(scheduler: Scheduler, workers: list[str], stimulus_id: str) -> None:
    """Return workers whose retirement was given up on to the running state.

    ``Scheduler.retire_workers`` has no timeout and no way to abort it from
    outside, so this does what it does itself when a retirement fails: drop
    the retirement policies it gave the Active Memory Manager (its private
    ``policies`` set of ``RetireWorker`` objects, each with an ``address``),
    and change the workers' status back on the scheduler and on the workers.
    """
    amm = scheduler.extensions.get("amm")
    for policy in list(getattr(amm, "policies", ())):
        if getattr(policy, "address", None) in workers:
            amm.policies.discard(policy)  # type: ignore[union-attr]
    for address in workers:
        ws = scheduler.workers.get(address)
        if ws is None or ws.status != Status.closing_gracefully:
            continue
        scheduler.handle_worker_status_change(Status.running, ws, stimulus_id)
        scheduler.worker_send(
            address,
            {
                "op": "worker-status-change",
                "status": Status.running.name,
                "stimulus_id": stimulus_id,
            },
        )


# -- the dashboard: bokeh is optional, so everything of it is imported inside --------------

#: A Bokeh page as distributed builds them: ``page(scheduler, extra, doc)``, with
#: ``extra`` the template variables (prefix, navbar pages, "More..." menu).
PageBuilder = Callable[[Scheduler, dict[str, Any], Any], None]


def dashboard_application(scheduler: Scheduler) -> Any | None:
    """distributed's own Bokeh application on the scheduler's HTTP server.

    ``None`` when there is no dashboard: ``dashboard=False``, or bokeh missing
    (or too old for distributed, which then starts no dashboard). The
    scheduler's ``http_application`` is distributed's ``RoutingApplication``,
    which offers paths it does not route itself to the tornado applications in
    its undocumented ``applications`` list, in order; no public API finds the
    dashboard's Bokeh application or adds a page to it.
    """
    applications = bokeh_applications(scheduler)
    return applications[0] if applications else None


def bokeh_applications(scheduler: Scheduler) -> list[Any]:
    """The Bokeh applications on the scheduler's HTTP server, distributed's first.

    Read from ``RoutingApplication.applications``, as
    :func:`dashboard_application` does; empty without a dashboard.
    """
    try:
        from bokeh.server.server import BokehTornado
    except ImportError:
        return []
    http = getattr(scheduler, "http_application", None)
    return [a for a in getattr(http, "applications", ()) if isinstance(a, BokehTornado)]


def start_dashboard_pages(
    scheduler: Scheduler, pages: Mapping[str, PageBuilder]
) -> Any:
    """Serve Bokeh ``pages`` (path -> builder) beside distributed's own.

    A second Bokeh application, made by distributed's own ``BokehApplication``
    (so that it has the dashboard's prefix, allowed websocket origins and
    template variables), appended to the scheduler's ``RoutingApplication``
    and started as distributed starts its own (``distributed.dashboard.scheduler.connect``).
    distributed's application cannot take pages once started. Works on a
    running scheduler; call :func:`dashboard_application` first.
    """
    from distributed.dashboard.core import BokehApplication
    from distributed.dashboard.scheduler import template_variables
    from tornado.ioloop import IOLoop

    own = dashboard_application(scheduler)
    assert own is not None, "the scheduler has no dashboard"
    application = BokehApplication(
        dict(pages),
        scheduler,
        prefix=own.prefix,
        template_variables=template_variables(scheduler),
    )
    scheduler.http_application.add_application(application)
    application.initialize(IOLoop.current())
    application.start()
    return application


def stop_dashboard_pages(scheduler: Scheduler, application: Any) -> None:
    """Undo :func:`start_dashboard_pages`: its paths answer 404 again.

    ``RoutingApplication`` has ``add_application`` but no way to remove one:
    it is taken out of the ``applications`` list.
    """
    applications = scheduler.http_application.applications
    if application in applications:
        applications.remove(application)
    application.stop()


def dashboard_menu(scheduler: Scheduler) -> list[dict[str, str]]:
    """The dashboard's "More..." menu: ``{"url": ..., "name": ...}`` entries.

    Every dashboard page renders it from
    ``distributed.dashboard.scheduler.template_variables(scheduler)["plots"]``,
    which is memoized per scheduler, so all pages share this one list: an
    entry added to it (in place) is in the menu of every page loaded after.
    There is no public way to add to the menu.
    """
    from distributed.dashboard.scheduler import template_variables

    return template_variables(scheduler)["plots"]


def dress_dashboard_page(doc: Any, extra: dict[str, Any] | None) -> None:
    """Give a Bokeh document the dashboard's theme and, with ``extra`` (the
    template variables), its navbar page, as distributed's own full pages do.

    distributed's templates (``simple.html`` in the Jinja environment ``env``)
    and theme (``BOKEH_THEME``) are module attributes of
    ``distributed.dashboard.components.scheduler``, not a public API.
    """
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    doc.theme = BOKEH_THEME
    if extra is not None:
        doc.template = env.get_template("simple.html")
        doc.template_variables.update(extra)


def add_individual_plots(
    scheduler: Scheduler, extra: Callable[[], Mapping[str, str]]
) -> list[Any]:
    """List ``extra()`` (name -> path) in ``/individual-plots.json`` too.

    That route (read by dask-labextension) lists the ``individual-*`` pages of
    the *first* Bokeh application only. A subclass of distributed's handler,
    ``IndividualPlots``, adds ``extra()`` to the dict its ``get`` writes; it is
    routed in front of the original, since tornado's ``add_handlers`` inserts
    new rules before the application's own. Returns the routing rules added,
    for :func:`remove_routes`.
    """
    from distributed.http.scheduler.info import IndividualPlots

    class IndividualPlotsAndOurs(IndividualPlots):
        def write(self, chunk: Any) -> None:
            if isinstance(chunk, dict):
                chunk = {**chunk, **extra()}
            super().write(chunk)

    own = dashboard_application(scheduler)
    prefix = own.prefix if own is not None else ""
    http = scheduler.http_application
    routers = (http.default_router, http.wildcard_router)
    before = [list(router.rules) for router in routers]
    http.add_handlers(
        r".*",
        [
            (
                prefix + "/individual-plots.json",
                IndividualPlotsAndOurs,
                {"dask_server": scheduler},
            )
        ],
    )
    return [
        rule
        for router, old in zip(routers, before)
        for rule in router.rules
        if rule not in old
    ]


def remove_routes(scheduler: Scheduler, rules: list[Any]) -> None:
    """Remove routing rules that :func:`add_individual_plots` added.

    tornado's ``Application.add_handlers`` has no inverse; its routers keep
    their rules in a plain ``rules`` list, from which they are removed.
    """
    http = scheduler.http_application
    for router in (http.default_router, http.wildcard_router):
        for rule in rules:
            if rule in router.rules:
                router.rules.remove(rule)


def jobqueue_job_shape(cluster: Any) -> tuple[int, int]:
    """Worker processes per job and threads per worker process of a
    dask-jobqueue cluster, before any job is submitted.

    dask-jobqueue computes both in its ``Job`` from ``cores`` and
    ``processes`` (with defaults from its config) and offers them only on the
    private template job ``JobQueueCluster._dummy_job``, which its own
    ``scale`` and ``adapt`` read too. Checked against dask-jobqueue 0.9.0.
    """
    job = cluster._dummy_job
    return max(1, int(job.worker_processes)), max(1, int(job.worker_process_threads))

