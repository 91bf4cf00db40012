"""The distributed internals that ``_compat.py`` relies on still exist and
behave as it expects. When one of these fails after a distributed upgrade,
read the reason in ``_compat.py`` beside the use, and adapt that one place."""

from __future__ import annotations

import asyncio
import inspect
import json
import weakref

import dask
import pytest
from distributed import Client, Scheduler, Worker
from distributed.active_memory_manager import RetireWorker
from distributed.core import Status
from distributed.utils_test import BlockedGatherDep, gen_test, inc

from dask_adaptive_plugin import _compat
from helpers import until


def test_checked_against_is_the_installed_version_or_older():
    import distributed
    from packaging.version import Version

    assert Version(_compat.CHECKED_AGAINST) <= Version(distributed.__version__)


@gen_test()
async def test_schedulers_are_registered_in_instances():
    assert isinstance(Scheduler._instances, weakref.WeakSet)
    async with Scheduler(dashboard=False, host="127.0.0.1") as s:
        assert s in Scheduler._instances


@gen_test()
async def test_prefix_duration_is_the_schedulers_estimate():
    config = {"distributed.scheduler.default-task-durations": {"inc": 3}}
    with dask.config.set(config):
        async with Scheduler(dashboard=False, host="127.0.0.1") as s:
            async with Client(s.address, asynchronous=True) as c:
                future = c.submit(inc, 1, key="inc-1")  # no worker yet: it waits
                await until(lambda: "inc-1" in s.tasks)
                prefix = s.tasks["inc-1"].prefix
                assert _compat.prefix_duration(s, prefix) == 3
                async with Worker(s.address, nthreads=1):
                    assert await future == 2
                # once measured, the measurement: inc takes far less than 3 s
                assert _compat.prefix_duration(s, prefix) < 3


def test_add_plugin_reads_the_name_and_does_not_call_start():
    source = inspect.getsource(Scheduler.add_plugin)
    assert "_get_plugin_name(plugin)" in source
    assert ".start(" not in source


@gen_test()
async def test_a_retirement_can_be_undone_as_the_scheduler_does():
    """``undo_retirement`` relies on the AMM's ``policies`` set of
    ``RetireWorker`` policies with an ``address``, and on
    ``handle_worker_status_change`` and ``worker_send``."""
    with dask.config.set({"distributed.worker.memory.pause": False}):
        async with Scheduler(dashboard=False, host="127.0.0.1") as s:
            async with Worker(s.address, nthreads=1) as a, BlockedGatherDep(
                s.address, nthreads=1
            ) as b, Client(s.address, asynchronous=True) as c:
                x = c.submit(inc, 1, workers=[a.address], key="x")
                await x
                retiring = asyncio.ensure_future(
                    s.retire_workers(
                        workers=[a.address],
                        close_workers=False,
                        remove=False,
                        stimulus_id="test",
                    )
                )
                await b.in_gather_dep.wait()  # the data is on its way to b
                amm = s.extensions["amm"]
                assert any(
                    isinstance(p, RetireWorker) and p.address == a.address
                    for p in amm.policies
                )
                assert s.workers[a.address].status == Status.closing_gracefully
                retiring.cancel()
                _compat.undo_retirement(s, [a.address], "test-undo")
                assert not any(isinstance(p, RetireWorker) for p in amm.policies)
                assert s.workers[a.address].status == Status.running
                await until(lambda: a.status == Status.running)
                b.block_gather_dep.set()
                assert await x == 2


# -- the dashboard ------------------------------------------------------------------------


async def _get(url: str) -> tuple[int, str]:
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(url, raise_error=False)
    return response.code, (response.body or b"").decode(errors="replace")


def test_the_dashboard_internals_have_the_shapes_used():
    """``BokehApplication(applications, server, prefix, template_variables)``,
    the memoized ``template_variables`` with its ``plots``, the ``simple.html``
    template and ``BOKEH_THEME``, and ``IndividualPlots`` writing one dict."""
    pytest.importorskip("bokeh")
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env
    from distributed.dashboard.core import BokehApplication
    from distributed.http.routing import RoutingApplication
    from distributed.http.scheduler.info import IndividualPlots

    assert list(inspect.signature(BokehApplication).parameters) == [
        "applications",
        "server",
        "prefix",
        "template_variables",
    ]
    import distributed.dashboard.scheduler as dashboard_scheduler

    source = inspect.getsource(dashboard_scheduler)
    assert "@memoize\ndef template_variables(scheduler)" in source
    assert '"plots"' in source
    base_html = env.loader.get_source(env, "base.html")[0]
    assert "{% for plot in plots %}" in base_html
    assert env.get_template("simple.html") is not None
    assert BOKEH_THEME is not None
    assert "self.write(result)" in inspect.getsource(IndividualPlots.get)
    assert "self.applications = []" in inspect.getsource(RoutingApplication.__init__)


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_second_bokeh_application_serves_pages_in_the_menu():
    pytest.importorskip("bokeh")

    def page(scheduler, extra, doc):
        from bokeh.models import Div

        doc.add_root(Div(text="compat-check-page"))
        _compat.dress_dashboard_page(doc, extra)

    async with Scheduler(
        host="127.0.0.1", dashboard_address="127.0.0.1:0", http_prefix="/p"
    ) as s:
        base = f"http://127.0.0.1:{s.http_server.port}/p"
        own = _compat.dashboard_application(s)
        assert own is not None and "/status" in own.app_paths
        app = _compat.start_dashboard_pages(s, {"/compat-check": page})
        entry = {"url": "compat-check", "name": "Compat Check"}
        _compat.dashboard_menu(s).append(entry)
        rules = _compat.add_individual_plots(s, lambda: {"Compat": "/compat-check"})
        code, body = await _get(base + "/compat-check")
        assert code == 200 and "More..." in body  # distributed's navbar page
        code, body = await _get(base + "/status")  # the menu of the other pages
        assert '<a href="compat-check">Compat Check</a>' in body
        plots = json.loads((await _get(base + "/individual-plots.json"))[1])
        assert plots["Compat"] == "/compat-check"
        assert plots["Individual Task Stream"] == "/individual-task-stream"

        _compat.remove_routes(s, rules)
        _compat.dashboard_menu(s).remove(entry)
        _compat.stop_dashboard_pages(s, app)
        assert (await _get(base + "/compat-check"))[0] == 404
        assert "Compat" not in json.loads((await _get(base + "/individual-plots.json"))[1])
        assert "compat-check" not in (await _get(base + "/status"))[1]


@gen_test()
async def test_no_dashboard_no_bokeh_application():
    async with Scheduler(dashboard=False, host="127.0.0.1") as s:
        assert _compat.dashboard_application(s) is None


def test_spec_cluster_attributes_and_the_jobqueue_template_job():
    """What ``ClusterAdaptive`` reads of a cluster: ``SpecCluster``'s
    ``worker_spec``, ``workers`` and ``new_spec``, and dask-jobqueue's
    template job with its processes and threads per process."""
    pytest.importorskip("dask_jobqueue")
    import dask_jobqueue
    import dask_jobqueue.config

    # an earlier gen_test may have reset dask's config to before
    # dask-jobqueue added its defaults
    dask_jobqueue.config.reconfigure()
    with dask_jobqueue.SLURMCluster(
        cores=6, processes=2, memory="1GB",
        scheduler_options={"dashboard_address": ":0", "host": "127.0.0.1"},
    ) as cluster:  # fmt: skip
        assert cluster.worker_spec == {} and cluster.workers == {}
        assert "cls" in cluster.new_spec and "options" in cluster.new_spec
        assert _compat.jobqueue_job_shape(cluster) == (2, 3)
