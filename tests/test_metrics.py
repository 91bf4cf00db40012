"""Prometheus metrics on the scheduler's own ``/metrics``, scraped over HTTP
from a real ``dask scheduler --preload dask_adaptive_plugin`` and read with
``prometheus_client``'s own parser."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from distributed import Client, Scheduler
from distributed.utils_test import gen_test, inc

from dask_adaptive_plugin import AdaptivePlugin
from inprocess import InProcessBackend
from test_cli import scheduler_process, wait_for

parser = pytest.importorskip("prometheus_client.parser")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ours on /metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("dask_adaptive_")
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.mark.timeout(180)
def test_metrics_after_a_scale_up_and_a_scale_down(tmp_path: Path) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            adaptive-plugin:
              idle-timeout: 1s
              pools:
                cpu:
                  backend: local
                  backend-options: {nthreads: 1, memory-limit: 1GiB}
                  maximum: 1
            """
        )
    )
    with scheduler_process(tmp_path, "--adaptive-config", str(config)) as (proc, address):
        port = json.loads((tmp_path / "scheduler.json").read_text())["services"]["dashboard"]
        with Client(address, timeout=30) as client:
            assert client.submit(pow, 3, 2).result() == 9
            fpga = client.submit(pow, 2, 2, resources={"FPGA": 1}, pure=False)
            wait_for(
                lambda: value(scrape(port), "dask_adaptive_unsatisfiable_tasks", resource="FPGA"),
                30,
                "the unsatisfiable need",
            )
            up = scrape(port)
            assert value(up, "dask_adaptive_decisions_total", pool="cpu", action="up", cause="queued-work") == 1
            assert value(up, "dask_adaptive_workers", pool="cpu", state="running") == 1
            assert value(up, "dask_adaptive_workers", pool="cpu", state="requested") == 0
            assert value(up, "dask_adaptive_worker_startup_seconds_count", pool="cpu") == 1
            assert value(up, "dask_adaptive_worker_startup_seconds_bucket", pool="cpu", le="+Inf") == 1
            assert value(up, "dask_adaptive_worker_startup_seconds_sum", pool="cpu") > 0
            assert value(up, "dask_adaptive_evaluation_seconds_count") >= 1
            assert value(up, "dask_adaptive_unsatisfiable_tasks", resource="FPGA") == 1
            assert value(up, "dask_adaptive_decisions_total", pool="", action="unsatisfiable", cause="unsatisfiable") == 1
            assert value(up, "dask_adaptive_pool_available", pool="cpu") == 1
            del fpga
            wait_for(lambda: not client.scheduler_info()["workers"], 60, "scaled down")
            wait_for(
                lambda: value(scrape(port), "dask_adaptive_workers", pool="cpu", state="running") == 0,
                30,
                "the metrics to follow",
            )
            down = scrape(port)
            assert value(down, "dask_adaptive_decisions_total", pool="cpu", action="down", cause="idle") == 1
            assert value(down, "dask_adaptive_desired_workers", pool="cpu") == 0
            assert value(down, "dask_adaptive_unsatisfiable_tasks", resource="FPGA") is None
            assert value(down, "dask_adaptive_errors_total", pool="cpu", action="scale_up") is None


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_the_collector_is_registered_while_the_plugin_runs():
    from prometheus_client import REGISTRY

    from dask_adaptive_plugin import metrics

    def ours() -> list:
        return [c for c in REGISTRY._collector_to_names if isinstance(c, metrics.AdaptiveCollector)]

    assert ours() == []
    plugin = AdaptivePlugin(backend=InProcessBackend, maximum=1)
    async with Scheduler(dashboard=False, host="127.0.0.1", plugins=[plugin]) as s:
        assert len(ours()) == 1
        async with Client(s.address, asynchronous=True) as c:
            assert await c.submit(inc, 1) == 2
        [collector] = ours()
        families = {f.name: f for f in collector.collect()}
        running = [s for s in families["dask_adaptive_workers"].samples if s.labels["state"] == "running"]
        assert [s.value for s in running] == [1.0]
    assert ours() == []


def test_without_prometheus_client_nothing_fails(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["prometheus_client"] = None  # as if it were not installed
        from distributed import Scheduler
        from dask_adaptive_plugin import AdaptivePlugin, metrics

        async def main():
            plugin = AdaptivePlugin(backend="local", maximum=1)
            async with Scheduler(dashboard=False, host="127.0.0.1", plugins=[plugin]):
                assert plugin.controller is not None
            assert metrics._collector is None
            print("ok")

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "ok", proc.stderr
