"""The Adaptive page in the scheduler's dashboard: pools, waiting work, decisions.

``http://scheduler:8787/adaptive``, listed in the dashboard's "More..." menu
(and, as ``/individual-adaptive``, in ``/individual-plots.json`` for
dask-labextension), shows live, per pool, the workers the last decision wanted
(*desired*), asked for and not connected yet (*requested*, launching
included), *running* and *idle*, beside the waiting work (tasks queued or
without a worker); and a table of the recent decisions.

It is read-only: plots, text and a table, with no tool, widget or Python
callback that the browser can reach. It reads counts of the plugin (the
ledger, the last plan, the task counters) in the page's own periodic callback,
only while a page is open; no hook does any work for it. One sample, taken at
most every :data:`INTERVAL_MS`, serves every open page, and the history of
samples is kept for the pages opened later.

distributed's dashboard machinery (its Bokeh application, menu, template and
``/individual-plots.json``) is reached only through :mod:`._compat`. Without
bokeh (the ``dashboard`` extra), or with the dashboard off, nothing is added.
"""

from __future__ import annotations

import html
import itertools
import logging
import math
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dask.utils import format_time

from dask_adaptive_plugin import _compat

if TYPE_CHECKING:
    from distributed import Scheduler

    from dask_adaptive_plugin.plugin import AdaptivePlugin

logger = logging.getLogger(__name__)

#: The page, with distributed's navbar; and the same without (for embedding).
PAGE = "/adaptive"
BARE_PAGE = "/individual-adaptive"
MENU_ENTRY = {"url": "adaptive", "name": "Adaptive"}
#: The name ``/individual-plots.json`` gives the bare page, as distributed names its own.
INDIVIDUAL_NAME = "Individual Adaptive"
#: How often an open page reads the plugin.
INTERVAL_MS = 500
#: Samples kept: 10 minutes at one every :data:`INTERVAL_MS`.
HISTORY = 1200
#: Decisions shown in the table, newest first.
DECISIONS_SHOWN = 50
#: Counting idle workers per pool passes over the idle workers; it is repeated
#: at most as often as keeps it below this share of the event loop's time.
IDLE_SHARE = 0.01
#: The lines of each pool's plot: colour, dash, width. Running is drawn wide
#: and pale, so that the lines that often equal it (desired, idle) show on it.
SERIES = {
    "desired": ("#555555", "dashed", 2),
    "requested": ("#ff7f0e", "solid", 2),
    "running": ("#9ecae1", "solid", 6),
    "idle": ("#2ca02c", "solid", 2),
}
WORK = {"waiting": ("#d62728", "solid", 2), "processing": ("#9467bd", "solid", 2)}


# -- what the page reads: one sample of counts ------------------------------------------


@dataclass(frozen=True)
class PoolSample:
    """One pool at one moment."""

    desired: float
    requested: float
    running: float
    idle: float
    available: bool = True
    startup_median: float | None = None
    startup_p90: float | None = None


@dataclass(frozen=True)
class Sample:
    """The plugin at one moment.

    Attributes
    ----------
    time
        Wall-clock milliseconds, for the plots' time axis.
    pools
        Pool name -> its counts, cheapest pool first.
    waiting
        Tasks queued or without a worker.
    processing
        Tasks on workers.
    unsatisfiable
        ``(what the tasks need, how many)`` that no pool provides.
    gap
        A break in the lines: nobody watched for a while before this sample.
    """

    time: float
    pools: dict[str, PoolSample]
    waiting: float
    processing: float
    unsatisfiable: tuple[tuple[str, int], ...] = ()
    gap: bool = False


class IdleByPool:
    """Idle workers per pool, recounted at most :data:`IDLE_SHARE` of the time.

    The statistics know which workers are idle but not per pool; counting
    them passes over the idle workers (O(idle), a dict lookup each), so a
    recount is not repeated sooner than its cost divided by
    :data:`IDLE_SHARE`: a few microseconds for tens of idle workers, every
    sample; at 10,000 idle workers (1-2 ms) still about every sample.
    """

    def __init__(self) -> None:
        self.counts: Counter[str | None] = Counter()
        self.next_at = -math.inf

    def read(
        self, idle: Iterable[str], pool_of: Any, now: float
    ) -> Counter[str | None]:
        if now >= self.next_at:
            started = time.perf_counter()
            self.counts = Counter(map(pool_of, idle))
            self.next_at = now + (time.perf_counter() - started) / IDLE_SHARE
        return self.counts


def take_sample(plugin: AdaptivePlugin, idle: IdleByPool, now: float) -> Sample:
    """Read the plugin's counts: O(pools + unsatisfiable needs + idle workers,
    the last at most :data:`IDLE_SHARE` of the time)."""
    planner, stats = plugin.planner, plugin.stats
    assert planner is not None and stats is not None
    ledger = planner.ledger
    idle_counts = idle.read(stats.idle, ledger.pool_of, now)
    desired = planner.last_plan.desired
    pools = {}
    for p in planner.pools:
        name, latency = p.name, ledger.latency[p.name]
        pools[name] = PoolSample(
            desired=desired.get(name, 0),
            requested=ledger.count(name, "requested", "launching"),
            running=ledger.count(name, "running"),
            idle=idle_counts.get(name, 0),
            available=planner.available(name, now),
            startup_median=latency.median,
            startup_p90=latency.p90,
        )
    counts = stats.counts
    return Sample(
        time=time.time() * 1000,
        pools=pools,
        waiting=counts["queued"] + counts["no-worker"],
        processing=counts["processing"],
        unsatisfiable=tuple(
            (_resources(need.resources), need.tasks)
            for need in planner.unsatisfiable.values()
        ),
    )


def gap_before(sample: Sample, pools: Iterable[str]) -> Sample:
    """A sample of NaNs just before ``sample``: Bokeh breaks its lines there."""
    nan = math.nan
    return Sample(
        time=sample.time - 1,
        pools={name: PoolSample(nan, nan, nan, nan) for name in pools},
        waiting=nan,
        processing=nan,
        gap=True,
    )


# -- the decisions table ----------------------------------------------------------------

COLUMNS = ("time", "pool", "action", "detail", "reason")


def decision_rows(log: Iterable[tuple[float, dict[str, Any]]]) -> dict[str, list[str]]:
    """Table columns for the log's records (newest first, as given)."""
    rows: dict[str, list[str]] = {column: [] for column in COLUMNS}
    for timestamp, record in log:
        rows["time"].append(time.strftime("%H:%M:%S", time.localtime(timestamp)))
        rows["pool"].append(str(record.get("pool") or "all pools"))
        rows["action"].append(str(record.get("status", "")))
        rows["detail"].append(detail(record))
        rows["reason"].append(str(record.get("reason", "")))
    return rows


def detail(record: dict[str, Any]) -> str:
    """What a record did, in a few words beside its action."""
    status = record.get("status")
    if status == "up":
        n = record.get("n")
        return f"to {n} worker{'' if n == 1 else 's'}"
    if status in ("down", "kept"):
        workers = list(record.get("workers") or ())
        plural = "" if len(workers) == 1 else "s"
        return f"{len(workers)} worker{plural}: " + ", ".join(map(str, workers))
    if status == "error":
        return f"{record.get('action', '')}: {record.get('error', '')}".strip(": ")
    if status == "fallback":
        return f"to pool {record.get('to')}"
    if status == "unsatisfiable":
        return (
            f"{record.get('tasks')} tasks need {_resources(record.get('needs') or {})}"
        )
    return ""


def _resources(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{r}={a:g}" for r, a in resources.items()) or "nothing"


# -- the page of one plugin -------------------------------------------------------------


class AdaptivePage:
    """The Adaptive page of one running plugin, on its scheduler's dashboard.

    Parameters
    ----------
    plugin
        The plugin shown; read only in the pages' periodic callbacks.
    scheduler
        Its scheduler, which must have a dashboard.
    """

    def __init__(self, plugin: AdaptivePlugin, scheduler: Scheduler) -> None:
        self.plugin: AdaptivePlugin | None = plugin
        self.scheduler = scheduler
        self.application: Any = None
        self.routes: list[Any] = []
        self.history: deque[Sample] = deque(maxlen=HISTORY)
        self._idle = IdleByPool()
        self._sampled_at = -math.inf
        self._rows: dict[str, list[str]] = {}
        self._rows_of: object = None

    @property
    def attached(self) -> bool:
        return self.plugin is not None and self.plugin.controller is not None

    def install(self) -> None:
        """Serve the pages, add the menu entry and the labextension listing."""
        self.application = _compat.start_dashboard_pages(
            self.scheduler, {PAGE: self.full_doc, BARE_PAGE: self.bare_doc}
        )
        self.application.adaptive_page = self  # how pages_on finds it
        menu = _compat.dashboard_menu(self.scheduler)
        if MENU_ENTRY not in menu:
            menu.append(dict(MENU_ENTRY))
            menu.sort(key=lambda entry: entry["name"])
        self.routes = _compat.add_individual_plots(self.scheduler, self.individual)

    def remove(self, keep_menu: bool = False) -> None:
        """Take away what :meth:`install` added (the menu entry too, unless
        another plugin's page on this scheduler still needs it); open pages
        go quiet."""
        self.plugin = None
        _compat.remove_routes(self.scheduler, self.routes)
        self.routes = []
        menu = _compat.dashboard_menu(self.scheduler)
        if MENU_ENTRY in menu and not keep_menu:
            menu.remove(MENU_ENTRY)
        application, self.application = self.application, None
        if application is not None:
            _compat.stop_dashboard_pages(self.scheduler, application)

    def pool_names(self) -> list[str]:
        """The plugin's pools, cheapest first (fixed while it runs)."""
        planner = self.plugin.planner if self.plugin is not None else None
        return [p.name for p in planner.pools] if planner is not None else []

    def individual(self) -> dict[str, str]:
        """This page's entry in ``/individual-plots.json``."""
        return {INDIVIDUAL_NAME: BARE_PAGE} if self.application is not None else {}

    # -- reading, shared by every open page ----------------------------------------------

    def sample(self) -> Sample | None:
        """The newest sample; a new one if the newest is older than half an interval."""
        plugin = self.plugin
        controller = plugin.controller if plugin is not None else None
        if controller is None or plugin is None:
            return self.history[-1] if self.history else None
        now = controller.now()
        if now - self._sampled_at >= INTERVAL_MS / 2000:
            sample = take_sample(plugin, self._idle, now)
            if self.history and now - self._sampled_at > 3 * INTERVAL_MS / 1000:
                self.history.append(gap_before(sample, sample.pools))
            self.history.append(sample)
            self._sampled_at = now
        return self.history[-1]

    def since(self, t: float) -> list[Sample]:
        """The samples kept that are newer than ``t``, oldest first."""
        newer = itertools.takewhile(lambda s: s.time > t, reversed(self.history))
        return list(newer)[::-1]

    def decisions(self) -> dict[str, list[str]]:
        """The table's columns, rebuilt only when the log has a new record."""
        log = self.plugin.log if self.plugin is not None else ()
        newest = log[-1] if log else None
        if newest is not self._rows_of:
            recent = itertools.islice(reversed(log), DECISIONS_SHOWN)
            self._rows = decision_rows(recent)
            self._rows_of = newest
        return self._rows

    # -- the documents --------------------------------------------------------------------

    def full_doc(self, scheduler: Scheduler, extra: dict[str, Any], doc: Any) -> None:
        """``/adaptive``: the page inside distributed's navbar."""
        self._build(doc, extra)

    def bare_doc(self, scheduler: Scheduler, extra: dict[str, Any], doc: Any) -> None:
        """``/individual-adaptive``: the page alone, for dask-labextension."""
        self._build(doc, None)

    def _build(self, doc: Any, extra: dict[str, Any] | None) -> None:
        view = PageView(self, self.pool_names())
        doc.title = "Dask: Adaptive"
        doc.add_root(view.root)
        _compat.dress_dashboard_page(doc, extra)
        view.doc = weakref.ref(doc)
        view.callback = doc.add_periodic_callback(view.update, INTERVAL_MS)
        view.update()


class PageView:
    """What one open page shows: its Bokeh models and its update."""

    def __init__(self, page: AdaptivePage, pools: list[str]) -> None:
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource
        from bokeh.models.widgets import Div

        self.page = page
        self.shown = -math.inf  # the time of the newest sample streamed
        self.callback: Any = None
        self.doc: weakref.ref[Any] | None = None
        self.failed = False
        self._rows_shown: object = None
        self.summary = Div(
            text="", name="adaptive-summary", sizing_mode="stretch_width"
        )
        self.sources = {
            name: ColumnDataSource(
                {"time": [], **{s: [] for s in SERIES}}, name=f"adaptive-source-{name}"
            )
            for name in pools
        }
        self.work = ColumnDataSource(
            {"time": [], **{s: [] for s in WORK}}, name="adaptive-source-work"
        )
        self.table = ColumnDataSource({c: [] for c in COLUMNS})
        figures = [self._pool_figure(name) for name in pools]
        work = self._work_figure(figures[0].x_range if figures else None)
        self.root = column(
            self.summary,
            row(
                column(*figures, sizing_mode="stretch_width"),
                work,
                sizing_mode="stretch_width",
            ),
            self._decisions_table(),
            sizing_mode="stretch_width",
        )

    # -- the models -----------------------------------------------------------------------

    def _pool_figure(self, name: str) -> Any:
        fig = _figure(f"Pool {name}: workers", name=f"adaptive-pool-{name}")
        _lines(fig, self.sources[name], SERIES)
        return fig

    def _work_figure(self, x_range: Any) -> Any:
        fig = _figure("Waiting work: tasks", name="adaptive-work", x_range=x_range)
        _lines(fig, self.work, WORK)
        return fig

    def _decisions_table(self) -> Any:
        from bokeh.models.widgets import DataTable, TableColumn

        widths = {"time": 70, "pool": 90, "action": 90, "detail": 220, "reason": 600}
        return DataTable(
            source=self.table,
            columns=[
                TableColumn(field=c, title=c.capitalize(), width=widths[c])
                for c in COLUMNS
            ],
            name="adaptive-decisions",
            height=320,
            sizing_mode="stretch_width",
            index_position=None,
            # read-only: no selection, sorting or reordering to send back
            editable=False,
            selectable=False,
            sortable=False,
            reorderable=False,
        )

    # -- updating ---------------------------------------------------------------------------

    def update(self) -> None:
        """Show the newest counts and decisions; stop once the plugin has."""
        if self.failed:
            return
        try:
            if not self.page.attached:
                self._stop(
                    "The adaptive plugin has stopped; nothing more is shown here."
                )
                return
            sample = self.page.sample()
            if sample is not None:
                self._stream(self.page.since(self.shown))
                self.summary.text = summary(sample)
            rows = self.page.decisions()
            if rows is not self._rows_shown:
                self.table.data = rows
                self._rows_shown = rows
        except Exception:
            self.failed = True  # one log line, not one every INTERVAL_MS
            logger.exception("adaptive: updating the dashboard page failed")
            self._stop("Updating this page failed; see the scheduler's log.")

    def _stream(self, samples: list[Sample]) -> None:
        if not samples:
            return
        times = [s.time for s in samples]
        for name, source in self.sources.items():
            # a list of its own: Bokeh sends one list met twice as one JS array,
            # and streaming into one source then moves the other's times too
            columns: dict[str, Any] = {"time": list(times)}
            for series in SERIES:
                columns[series] = [_value(s, name, series) for s in samples]
            source.stream(columns, rollover=HISTORY)
        self.work.stream(
            {
                "time": times,
                "waiting": [s.waiting for s in samples],
                "processing": [s.processing for s in samples],
            },
            rollover=HISTORY,
        )
        self.shown = times[-1]

    def _stop(self, message: str) -> None:
        self.summary.text = f"<p><b>{html.escape(message)}</b></p>"
        doc = self.doc() if self.doc is not None else None
        if doc is not None and self.callback is not None:
            doc.remove_periodic_callback(self.callback)
        self.callback = None


def _value(sample: Sample, pool: str, series: str) -> float:
    counts = sample.pools.get(pool)
    return getattr(counts, series) if counts is not None else math.nan


def _figure(title: str, name: str, x_range: Any = None) -> Any:
    """A plot over time with no tools: nothing to click but the page itself."""
    from bokeh.models import BasicTicker, DataRange1d
    from bokeh.plotting import figure

    if x_range is None:
        # follow the newest samples, as wide as the history kept
        x_range = DataRange1d(
            follow="end", follow_interval=HISTORY * INTERVAL_MS, range_padding=0
        )
    fig = figure(
        title=title,
        name=name,
        x_axis_type="datetime",
        x_range=x_range,
        y_range=DataRange1d(start=0, range_padding=0.15, min_interval=1),
        height=260,
        sizing_mode="stretch_width",
        tools="",
        toolbar_location=None,
    )
    fig.yaxis.ticker = BasicTicker(min_interval=1)  # counts: whole numbers
    fig.yaxis.minor_tick_line_color = None
    return fig


def _lines(fig: Any, source: Any, series: Mapping[str, tuple[str, str, int]]) -> None:
    """One step line per series, with a legend above the plot (not over it)."""
    from bokeh.models.annotations import Legend, LegendItem

    lines = {
        column: fig.step(
            "time",
            column,
            source=source,
            mode="after",
            name=f"{source.name}-{column}",
            color=color,
            line_dash=dash,
            line_width=width,
        )
        for column, (color, dash, width) in series.items()
    }
    # the wide line first, under the others
    for renderer in sorted(lines.values(), key=lambda r: -r.glyph.line_width):
        fig.renderers.remove(renderer)
        fig.renderers.append(renderer)
    legend = Legend(
        items=[LegendItem(label=c, renderers=[r]) for c, r in lines.items()],
        orientation="horizontal",
        location="top_left",
        margin=0,
        padding=4,  # type: ignore[arg-type]  # bokeh's hints refuse the int it takes
        border_line_alpha=0,
        background_fill_alpha=0,
    )
    fig.add_layout(legend, "above")


def summary(sample: Sample) -> str:
    """The line of text above the plots: each pool's counts now, the waiting
    work, and the needs no pool serves."""
    parts = []
    for name, p in sample.pools.items():
        text = (
            f"<b>{html.escape(name)}</b>: {p.running:g} running, {p.idle:g} idle, "
            f"{p.requested:g} requested, {p.desired:g} desired"
        )
        if p.startup_median is not None and p.startup_p90 is not None:
            text += (
                f"; start-up {format_time(p.startup_median)}"
                f" (p90 {format_time(p.startup_p90)})"
            )
        if not p.available:
            text += "; <i>paused (back-off, fallback or crash loop)</i>"
        parts.append(text)
    parts.append(f"<b>waiting tasks</b>: {sample.waiting:g}")
    for needs, tasks in sample.unsatisfiable:
        parts.append(f"<b>unsatisfiable</b>: {tasks} tasks need {html.escape(needs)}")
    return "<p>" + " &nbsp;|&nbsp; ".join(parts) + "</p>"


# -- attaching to a plugin --------------------------------------------------------------


def attach(plugin: AdaptivePlugin) -> None:
    """Add the Adaptive page to the dashboard of the plugin's scheduler.

    Nothing happens without a dashboard or without bokeh. A failure is
    logged and scaling goes on without the page.
    """
    scheduler = plugin.scheduler
    if scheduler is None or page_of(plugin) is not None:
        return
    if _compat.dashboard_application(scheduler) is None:
        return
    page = AdaptivePage(plugin, scheduler)
    try:
        page.install()
    except Exception:
        logger.exception("adaptive: the dashboard page could not be added")
        _remove(page)


def detach(plugin: AdaptivePlugin) -> None:
    """Remove the plugin's page: its paths answer 404, the menu entry goes."""
    page = page_of(plugin)
    if page is not None:
        _remove(page)


def page_of(plugin: AdaptivePlugin) -> AdaptivePage | None:
    """The plugin's page, kept where it is served: on its scheduler's HTTP
    server (the package keeps no state of schedulers of its own)."""
    scheduler = plugin.scheduler
    if scheduler is None:
        return None
    return next((p for p in pages_on(scheduler) if p.plugin is plugin), None)


def pages_on(scheduler: Scheduler) -> list[AdaptivePage]:
    """The Adaptive pages the scheduler serves (two while a replaced plugin stops)."""
    return [
        page
        for application in _compat.bokeh_applications(scheduler)
        if isinstance(page := getattr(application, "adaptive_page", None), AdaptivePage)
    ]


def _remove(page: AdaptivePage) -> None:
    # a plugin replaced by ``add_plugin`` stops after its successor started
    others = any(p is not page for p in pages_on(page.scheduler))
    try:
        page.remove(keep_menu=others)
    except Exception:  # the scheduler may be closing; never fail the plugin's stop
        logger.exception("adaptive: removing the dashboard page failed")
