"""The ``marathon`` backend of the example package, against a stand-in Marathon.

No real Marathon or Mesos runs here: :mod:`marathon_standin` speaks Marathon's
HTTP API on loopback and runs each app instance's ``cmd`` as a real local
process with ``MESOS_TASK_ID`` set. The backend comes from its own package,
``docs/examples/dask-adaptive-marathon``, found by name through its entry
point. The test command installs it::

    pip install -e ".[test,all]" -e docs/examples/dask-adaptive-marathon
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from importlib.metadata import entry_points
from typing import Any

import pytest
from conftest import require_live
from distributed import Client
from distributed.core import Status
from helpers import assert_no_secret, events, free_port, scheduler_with, until
from marathon_standin import MarathonStandIn

from dask_adaptive_plugin import registry

pytestmark = pytest.mark.marathon

TOKEN = f"marathon-token-{uuid.uuid4().hex}"
APP_ID = "/dask/test-workers"
#: How the stand-in's tasks run a worker: ``dask worker`` from this Python.
WORKER_CMD = f"{sys.executable} -m distributed.cli.dask_worker"


def _example_installed() -> bool:
    return any(ep.name == "marathon" for ep in entry_points(group=registry.BACKENDS))


@pytest.fixture(autouse=True)
def marathon_package() -> None:
    """The example package must be installed (the test command does it)."""
    require_live(
        "dask-adaptive-marathon package",
        _example_installed(),
        "pip install -e docs/examples/dask-adaptive-marathon",
    )


@pytest.fixture(autouse=True)
def capture_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


# -- helpers ---------------------------------------------------------------------------


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 90) -> None:
    """Run one async scenario on a fresh event loop, bounded in time."""
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def backend_options(url: str, **more: Any) -> dict[str, Any]:
    return {
        "marathon_url": url,
        "app_id": APP_ID,
        "cmd": WORKER_CMD,
        "mem": 1000,
        "token": TOKEN,
        **more,
    }


# -- tests -----------------------------------------------------------------------------


def test_found_by_name_in_its_own_package() -> None:
    cls = registry.load(registry.BACKENDS, "marathon")
    assert cls.__module__.startswith("dask_adaptive_marathon")
    [ep] = [ep for ep in entry_points(group=registry.BACKENDS) if ep.name == "marathon"]
    assert ep.dist is not None and ep.dist.name == "dask-adaptive-marathon"


@pytest.mark.parametrize(
    "options, match",
    [
        ({}, "backend option marathon_url"),
        ({"marathon_url": "marathon:8080"}, "backend option marathon_url"),
        (
            {"marathon_url": "http://m:8080", "app_id": "Bad_App"},
            "backend option app_id",
        ),
        ({"marathon_url": "http://m:8080", "cpus": 0}, "backend option cpus"),
        ({"marathon_url": "http://m:8080", "token": ""}, "backend option token"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], match: str) -> None:
    cls = registry.load(registry.BACKENDS, "marathon")

    class NoScheduler:
        address = "tcp://10.0.0.5:8786"

    with pytest.raises(ValueError, match=match):
        cls(NoScheduler(), **options)


def test_scale_up_from_zero_and_retire_exactly_the_idle_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with MarathonStandIn(token=TOKEN) as marathon:
            async with scheduler_with(
                "marathon",
                minimum=1,
                maximum=2,
                idle_timeout="2s",
                target_duration="1s",  # 4s of work: two workers
                backend_options=backend_options(marathon.url),
            ) as (scheduler, _):
                await until(lambda: scheduler.workers, what="the first worker")
                app = marathon.apps[APP_ID]
                assert '--name "$MESOS_TASK_ID"' in app.definition["cmd"]
                assert app.definition["mem"] == 1000

                async with Client(scheduler.address, asynchronous=True) as client:
                    futures = client.map(time.sleep, [0.5 + i / 1000 for i in range(8)])
                    await until(lambda: len(scheduler.workers) == 2, what="2 workers")
                    await client.gather(futures)
                names = {a: str(ws.name) for a, ws in scheduler.workers.items()}
                # Worker names are the Mesos task ids.
                assert set(names.values()) == set(app.tasks)
                assert marathon.killed == []

                await until(lambda: events(scheduler, "down"), what="a retirement")
                [down] = events(scheduler, "down")
                await until(lambda: marathon.killed, what="a task kill")
                assert marathon.killed == [names[a] for a in down["workers"]]
                assert len(marathon.killed) == 1 and app.instances == 1
                [kept] = set(names.values()) - set(marathon.killed)
                assert marathon.running_tasks() == [kept]
                assert events(scheduler, "error") == []
                assert scheduler.status == Status.running
                assert_no_secret(scheduler, caplog, TOKEN, "marathon")
            # Closing the scheduler destroys the app and so its tasks.
            assert marathon.apps == {} and marathon.running_tasks() == []
            assert ("DELETE", f"/v2/apps{APP_ID}") in marathon.requests

    run(scenario)


def test_api_errors_are_events_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with MarathonStandIn(token=TOKEN) as marathon:
            # A server that echoes the credentials it was sent.
            marathon.fail = (
                500,
                "internal error; request carried Authorization: {auth}",
            )
            options = backend_options(marathon.url)
            async with scheduler_with(
                "marathon", minimum=1, backend_options=options
            ) as (
                scheduler,
                _,
            ):
                await until(lambda: events(scheduler, "error"), what="an error event")
                error = events(scheduler, "error")[0]["error"]
                assert error.startswith("MarathonAPIError: Marathon API PUT")
                assert "HTTP 500" in error and "Authorization: token=***" in error
                assert scheduler.status == Status.running
                async with Client(scheduler.address, asynchronous=True) as client:
                    assert (await client.scheduler.identity())["type"] == "Scheduler"

                # Once the API answers again, the back-off retry succeeds.
                marathon.fail = None
                await until(lambda: scheduler.workers, what="a worker after recovery")
                assert_no_secret(scheduler, caplog, TOKEN, "marathon")

    run(scenario)


def test_wrong_token_and_unreachable_api_are_clear_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with MarathonStandIn(token="another-token") as marathon:
            options = backend_options(marathon.url)
            async with scheduler_with(
                "marathon", minimum=1, backend_options=options
            ) as (
                scheduler,
                _,
            ):
                await until(lambda: events(scheduler, "error"), what="an error event")
                assert "HTTP 401" in events(scheduler, "error")[0]["error"]
                assert_no_secret(scheduler, caplog, TOKEN, "marathon")

        options = backend_options(f"http://127.0.0.1:{free_port()}")
        async with scheduler_with("marathon", minimum=1, backend_options=options) as (
            scheduler,
            _,
        ):
            await until(lambda: events(scheduler, "error"), what="an error event")
            error = events(scheduler, "error")[0]["error"]
            assert "failed: ConnectionRefusedError" in error
            assert scheduler.status == Status.running
            assert_no_secret(scheduler, caplog, TOKEN, "marathon")

    run(scenario)
