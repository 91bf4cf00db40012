"""Metrics: cheap counts kept as things happen, read by Prometheus when scraped.

distributed serves ``/metrics`` on the scheduler's dashboard port from
``prometheus_client``'s global registry. While a plugin runs, one collector
for the process is registered there; it reads the plugin's ledger, planner and
counts when scraped, so no hook does any work for it. Without
``prometheus_client`` (the ``metrics`` extra) nothing is registered and nothing
fails.

The counts (:class:`Histogram`, :class:`RecordCounts`) are kept where the
events happen: a decision on the plugin's one record path, a start-up latency
in the ledger, an evaluation's duration in the controller; each costs O(1).
"""

from __future__ import annotations

import bisect
import logging
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dask_adaptive_plugin.plugin import AdaptivePlugin

logger = logging.getLogger(__name__)

PREFIX = "dask_adaptive"
#: Request to connect, 0.5 s to an hour (a batch queue).
STARTUP_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: One evaluation of the planner: tens of microseconds, up to 100 ms.
EVALUATION_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1)
#: Ledger states shown as the ``state`` label.
STATES = ("requested", "launching", "running", "retiring")
#: Record statuses counted as decisions, the ``action`` label.
DECISIONS = ("up", "down", "kept", "fallback", "unsatisfiable")


class Histogram:
    """Counts of observations per bucket, their sum and count: O(log buckets)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        total, result = 0, []
        for bound, count in zip(self.buckets, self.counts):
            total += count
            result.append((_float(bound), total))
        result.append(("+Inf", self.count))
        return result


class RecordCounts:
    """Decisions and errors, counted from the plugin's records."""

    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str, str]] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()

    def count(self, record: dict[str, Any]) -> None:
        status = record.get("status")
        pool = str(record.get("pool") or "")
        if status in DECISIONS:
            self.decisions[pool, status, str(record.get("cause", ""))] += 1
        elif status == "error":
            self.errors[pool, str(record.get("action", ""))] += 1


# -- the collector ------------------------------------------------------------------------


class AdaptiveCollector:
    """Reads the running adaptive plugin of this process when scraped.

    distributed's ``/metrics`` serves the whole process's registry, as it
    does for the scheduler's own metrics; with several schedulers in one
    process (tests), the plugin started last is shown.
    """

    def __init__(self) -> None:
        self.plugins: weakref.WeakSet[AdaptivePlugin] = weakref.WeakSet()
        self._order: list[weakref.ref[AdaptivePlugin]] = []

    def add(self, plugin: AdaptivePlugin) -> None:
        self.plugins.add(plugin)
        self._order.append(weakref.ref(plugin))

    def discard(self, plugin: AdaptivePlugin) -> None:
        self.plugins.discard(plugin)
        self._order = [r for r in self._order if r() is not None and r() is not plugin]

    def current(self) -> AdaptivePlugin | None:
        for ref in reversed(self._order):
            plugin = ref()
            if plugin is not None and plugin in self.plugins:
                return plugin
        return None

    def describe(self) -> Iterator[Any]:
        # without describe(), registering would call collect() at once
        yield from self._families().values()

    def collect(self) -> Iterator[Any]:
        families = self._families()
        plugin = self.current()
        if plugin is not None and plugin.planner is not None:
            try:
                _fill(families, plugin)
            except Exception:  # a scrape must never break; say so once per scrape
                logger.exception("adaptive: reading metrics failed")
        yield from families.values()

    def _families(self) -> dict[str, Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        return {
            "workers": GaugeMetricFamily(
                f"{PREFIX}_workers",
                "Workers of each pool by ledger state",
                labels=["pool", "state"],
            ),
            "desired": GaugeMetricFamily(
                f"{PREFIX}_desired_workers",
                "Workers of each pool that the last decision wanted",
                labels=["pool"],
            ),
            "decisions": CounterMetricFamily(
                f"{PREFIX}_decisions",
                "Decisions taken, by pool, action and cause",
                labels=["pool", "action", "cause"],
            ),
            "errors": CounterMetricFamily(
                f"{PREFIX}_errors",
                "Failures (retried after back-off), by pool and action",
                labels=["pool", "action"],
            ),
            "startup": HistogramMetricFamily(
                f"{PREFIX}_worker_startup_seconds",
                "Seconds from asking for a worker to its connecting, by pool",
                labels=["pool"],
            ),
            "evaluation": HistogramMetricFamily(
                f"{PREFIX}_evaluation_seconds",
                "Seconds one evaluation of the planner takes",
            ),
            "available": GaugeMetricFamily(
                f"{PREFIX}_pool_available",
                "1 if the pool may be asked for workers, 0 during its fallback "
                "cool-down or back-off",
                labels=["pool"],
            ),
            "unsatisfiable": GaugeMetricFamily(
                f"{PREFIX}_unsatisfiable_tasks",
                "Tasks that need a resource no pool provides, by resource",
                labels=["resource"],
            ),
        }


def _fill(families: dict[str, Any], plugin: AdaptivePlugin) -> None:
    planner, controller = plugin.planner, plugin.controller
    assert planner is not None
    ledger = planner.ledger
    now = controller.now() if controller is not None else 0.0
    desired = planner.last_plan.desired
    for p in planner.pools:
        name = p.name
        for state in STATES:
            families["workers"].add_metric([name, state], ledger.count(name, state))
        families["desired"].add_metric([name], desired.get(name, 0))
        available = controller is not None and planner.available(name, now)
        families["available"].add_metric([name], 1.0 if available else 0.0)
        startup = ledger.startup[name]
        families["startup"].add_metric(
            [name], startup.cumulative(), sum_value=startup.sum
        )
    for (pool, action, cause), n in plugin.counts.decisions.items():
        families["decisions"].add_metric([pool, action, cause], n)
    for (pool, action), n in plugin.counts.errors.items():
        families["errors"].add_metric([pool, action], n)
    if controller is not None:
        evaluation = controller.evaluation_seconds
        families["evaluation"].add_metric(
            [], evaluation.cumulative(), sum_value=evaluation.sum
        )
    tasks: Counter[str] = Counter()
    for need in planner.unsatisfiable.values():
        for resource in need.resources:
            tasks[resource] += need.tasks
    for resource, n in tasks.items():
        families["unsatisfiable"].add_metric([resource], n)


_collector: AdaptiveCollector | None = None


def attach(plugin: AdaptivePlugin) -> None:
    """Show this plugin on ``/metrics`` (if ``prometheus_client`` is installed)."""
    global _collector
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        return
    if _collector is None:
        collector = AdaptiveCollector()
        try:
            REGISTRY.register(collector)
        except ValueError as e:  # names taken by another collector of this process
            logger.error("adaptive: no metrics on /metrics: %s", e)
            return
        _collector = collector
    _collector.add(plugin)


def detach(plugin: AdaptivePlugin) -> None:
    """Stop showing it; the collector leaves the registry with the last plugin."""
    global _collector
    if _collector is None:
        return
    _collector.discard(plugin)
    if not _collector.plugins:
        from prometheus_client import REGISTRY

        REGISTRY.unregister(_collector)
        _collector = None


def _float(value: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(value)
