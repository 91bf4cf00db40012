"""The ``kubernetes`` backend against the kmock Kubernetes API emulator.

No real Kubernetes runs here: kmock serves the Kubernetes API over real HTTP
on loopback, and :class:`kubelet.Kubelet` runs each Pod it stores as a real
``dask worker`` process. The scheduler, the plugin, kr8s and the workers are
the real thing. Every test authenticates with a token from a kubeconfig file
and checks that the token shows in no event and no log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import LIVE_REQUIRED
from distributed import Client, Scheduler
from distributed.core import Status
from helpers import assert_no_secret, events, free_port, scheduler_with, until

from dask_adaptive_plugin import AdaptivePlugin

# Without the packages the tests skip, except in CI (DASK_ADAPTIVE_LIVE=1),
# where the import fails.
kmock = (
    importlib.import_module("kmock") if LIVE_REQUIRED else pytest.importorskip("kmock")
)
kr8s = importlib.import_module("kr8s") if LIVE_REQUIRED else pytest.importorskip("kr8s")

from kubelet import Kubelet  # noqa: E402

from dask_adaptive_plugin.backends.kubernetes import (  # noqa: E402
    SCHEDULER_LABEL,
    WORKER_LABEL,
    KubernetesBackend,
)
from dask_adaptive_plugin.backends.workers import default_cluster_name  # noqa: E402

pytestmark = pytest.mark.kubernetes

NAMESPACE = "dask"
TOKEN = f"test-token-{uuid.uuid4().hex}"
#: kr8s asks for /version/ and warns below Kubernetes 1.28; kmock says 1.26.
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0"}


# -- helpers ---------------------------------------------------------------------------


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 90) -> None:
    """Run one async scenario on a fresh event loop, bounded in time."""
    asyncio.run(asyncio.wait_for(scenario(), timeout))


@contextlib.asynccontextmanager
async def kubernetes_api() -> AsyncIterator[tuple[Any, str]]:
    """The emulator on loopback, knowing Pods: ``(emulator, url)``."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator["get", re.compile(r"/version/?")] << VERSION
        emulator.resources["v1/pods"] = kmock.ResourceInfo(
            kind="Pod", singular="pod", namespaced=True
        )
        yield emulator, str(server.url).rstrip("/")


def write_kubeconfig(directory: Path, server: str) -> str:
    """A kubeconfig that authenticates with :data:`TOKEN`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": TOKEN}}],
        "contexts": [
            {
                "name": "test",
                "context": {
                    "cluster": "emulator",
                    "user": "tester",
                    "namespace": NAMESPACE,
                },
            }
        ],
        "current-context": "test",
    }
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def alive_pods(emulator: Any, cluster: str | None = None) -> dict[str, dict[str, Any]]:
    """The Pods the emulator holds (not deleted), by name."""
    pods = {}
    for (resource, _, name), obj in list(emulator.objects.items()):
        if resource.plural != "pods" or obj.deleted:
            continue
        labels = obj.raw.get("metadata", {}).get("labels", {})
        if cluster is None or labels.get(SCHEDULER_LABEL) == cluster:
            pods[name] = obj.raw
    return pods


def pod_creations(emulator: Any) -> int:
    return sum(
        1
        for request in emulator._requests
        if request.method == "POST" and request.url.path.endswith("/pods")
    )


@pytest.fixture(autouse=True)
def capture_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


# -- options, without a cluster --------------------------------------------------------


class FakeScheduler:
    """Just enough of a scheduler for option checks: an address, no workers."""

    address = "tcp://10.0.0.5:8786"

    def __init__(self) -> None:
        self.workers: dict[str, Any] = {}

    def log_event(self, topic: str, msg: Any) -> None:
        pass


def test_pod_manifest_from_template_and_options(tmp_path: Path) -> None:
    template = tmp_path / "pod.yaml"
    template.write_text(
        yaml.safe_dump(
            {
                "kind": "Pod",
                "metadata": {"labels": {"team": "data"}},
                "spec": {
                    "containers": [
                        {
                            "name": "w",
                            "image": "old",
                            "env": [{"name": "A", "value": "1"}],
                        }
                    ],
                    "tolerations": [{"key": "spot"}],
                },
            }
        )
    )
    backend = KubernetesBackend(
        FakeScheduler(),  # type: ignore[arg-type]
        pod_template=str(template),
        image="ghcr.io/dask/dask:test",
        env={"A": 2, "B": "x"},
        resources={"limits": {"cpu": "1"}},
        nthreads=2,
        namespace="jobs",
    )
    pod = backend.pod_manifest("dask-10-0-0-5-8786-abc", {"GPU": 1})
    container = pod["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/dask/dask:test"
    assert container["env"] == [
        {"name": "A", "value": "2"},
        {"name": "B", "value": "x"},
    ]
    assert container["resources"] == {"limits": {"cpu": "1"}}
    assert container["args"][:5] == [
        "dask", "worker", "tcp://10.0.0.5:8786", "--name", "dask-10-0-0-5-8786-abc"
    ]  # fmt: skip
    assert "--resources" in container["args"] and "GPU=1" in container["args"]
    assert pod["metadata"]["labels"] == {
        "team": "data",
        SCHEDULER_LABEL: "dask-10-0-0-5-8786",
        WORKER_LABEL: "dask-10-0-0-5-8786-abc",
    }
    assert pod["metadata"]["namespace"] == "jobs"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["tolerations"] == [{"key": "spot"}]
    assert backend.threads_per_worker == 2


def test_default_cluster_name_is_stable_and_label_safe() -> None:
    assert default_cluster_name("tcp://10.0.0.5:8786") == "dask-10-0-0-5-8786"
    long = default_cluster_name("tcp://" + "a" * 100 + ".example.org:8786")
    assert len(long) <= 54 and long == default_cluster_name(
        "tcp://" + "a" * 100 + ".example.org:8786"
    )
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"api_timeout": "soon"}, "backend option api_timeout"),
        ({"pod_template": "/nonexistent/pod.yaml"}, "backend option pod_template"),
        ({"pod_template": {"spec": {}}}, "spec.containers"),
        ({"namespace": "Not_A_Namespace"}, "backend option namespace"),
        ({"resources": {"cpu": 1}}, "backend option resources"),
        ({"env": ["A=1"]}, "backend option env"),
        ({"nthreads": 0}, "backend option nthreads"),
        ({"cluster_name": "---"}, "backend option cluster_name"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KubernetesBackend(FakeScheduler(), **options)  # type: ignore[arg-type]


def test_an_option_the_pools_start_timeout_replaced_is_refused_with_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"backend option pending_timeout .*replaced by the pool's start_timeout"
    ):
        AdaptivePlugin(backend="kubernetes", backend_options={"pending_timeout": "60s"})


# -- against the emulator, with real workers -------------------------------------------


def test_scale_up_from_zero_and_idle_pods_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with kubernetes_api() as (emulator, url), Kubelet(url) as kubelet:
            options = {"kubeconfig": write_kubeconfig(tmp_path, url)}
            async with scheduler_with(
                "kubernetes", maximum=2, idle_timeout="2s", backend_options=options
            ) as (scheduler, plugin):
                cluster = plugin.backend.cluster_name  # type: ignore[union-attr]
                assert alive_pods(emulator) == {}
                async with Client(scheduler.address, asynchronous=True) as client:
                    assert await client.submit(sum, [1, 2]) == 3
                [(name, pod)] = alive_pods(emulator, cluster).items()
                assert pod["metadata"]["namespace"] == NAMESPACE
                assert pod["metadata"]["labels"][WORKER_LABEL] == name
                assert [ws.name for ws in scheduler.workers.values()] == [name]
                assert kubelet.started == [name]

                await until(lambda: not alive_pods(emulator), what="Pod deletion")
                await until(lambda: not kubelet.running, what="the worker to stop")
                await until(lambda: not scheduler.workers, what="the worker to leave")
                assert events(scheduler, "down")
                assert events(scheduler, "error") == []
                assert scheduler.status == Status.running
                assert_no_secret(scheduler, caplog, TOKEN, "kubernetes")

    run(scenario)


def test_a_pending_pod_counts_and_is_cancelled_when_overdue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Pod the cluster cannot run stays Pending: it counts as a worker on
    its way (never doubled), is deleted once the pool's start_timeout passes,
    and a new one is asked for after the cool-down."""

    async def scenario() -> None:
        async with kubernetes_api() as (emulator, url), Kubelet(url) as kubelet:
            kubelet.hold = True
            options = {"kubeconfig": write_kubeconfig(tmp_path, url)}
            async with scheduler_with(
                "kubernetes", maximum=1, start_timeout="2s", backend_options=options
            ) as (scheduler, plugin):
                async with Client(scheduler.address, asynchronous=True) as client:
                    future = client.submit(sum, [1, 2])
                    await until(lambda: alive_pods(emulator), what="a Pod")
                    [first] = alive_pods(emulator)
                    await until(lambda: plugin.ledger.entry(first), what="in the ledger")
                    assert plugin.backend.report() == {first: "pending"}  # type: ignore[union-attr]
                    assert plugin.ledger.entry(first).state == "launching"
                    most_alive = []

                    def replaced() -> bool:
                        most_alive.append(len(alive_pods(emulator)))
                        return pod_creations(emulator) == 2 and first not in alive_pods(emulator)

                    await until(replaced, what="the overdue Pod deleted and asked again")
                    assert max(most_alive) == 1  # never two Pods for one worker
                    [cancelled] = events(scheduler, "pods-cancelled")
                    assert cancelled["pods"] == [first]
                    assert "did not connect within 2s" in overdue(scheduler)[0]["error"]
                    kubelet.hold = False
                    assert await future == 3
                    assert pod_creations(emulator) == 2
                assert_no_secret(scheduler, caplog, TOKEN, "kubernetes")

    run(scenario)


def overdue(scheduler: Scheduler) -> list[dict[str, Any]]:
    """The controller's give-up on requested workers that did not connect."""
    return [e for e in events(scheduler, "error") if e["action"] == "start"]


def test_pods_of_an_earlier_run_adopted_or_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with kubernetes_api() as (emulator, url), Kubelet(url) as kubelet:
            options = {
                "kubeconfig": write_kubeconfig(tmp_path, url),
                "cluster_name": "restarted",
            }
            async with Scheduler(
                host="127.0.0.1", port=0, dashboard=False
            ) as scheduler:
                # The earlier run: one Pod whose worker connects, one stuck
                # Pending; it ends without clean-up (a crash).
                earlier = KubernetesBackend(scheduler, **options)
                await earlier.scale_up(1)
                await until(lambda: scheduler.workers, what="the earlier worker")
                kubelet.hold = True
                await earlier.scale_up(2)
                [connected] = [str(ws.name) for ws in scheduler.workers.values()]
                [stuck] = set(alive_pods(emulator)) - {connected}
                # Another scheduler's Pod in the same namespace: not ours.
                other = KubernetesBackend(
                    scheduler, **{**options, "cluster_name": "other"}
                )
                await other.scale_up(1)
                [others] = alive_pods(emulator, "other")

                plugin = AdaptivePlugin(
                    backend="kubernetes", idle_timeout="2s", backend_options=options
                )
                scheduler.add_plugin(plugin)
                await until(lambda: events(scheduler, "recovered"), what="recovery")
                [recovered] = events(scheduler, "recovered")
                assert recovered["adopted"] == [connected]
                assert recovered["removed"] == [stuck]
                assert set(alive_pods(emulator)) == {connected, others}

                # The adopted worker is managed like any: retired when idle.
                await until(
                    lambda: connected not in alive_pods(emulator), what="retire"
                )
                assert set(alive_pods(emulator)) == {others}
                assert events(scheduler, "error") == []
                assert_no_secret(scheduler, caplog, TOKEN, "kubernetes")
                await other.close()

    run(scenario)


def test_unreachable_api_is_an_event_and_the_scheduler_lives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        server = f"http://127.0.0.1:{free_port()}"
        options = {
            "kubeconfig": write_kubeconfig(tmp_path, server),
            "api_timeout": "5s",
        }
        async with scheduler_with("kubernetes", minimum=1, backend_options=options) as (
            scheduler,
            _,
        ):
            await until(lambda: events(scheduler, "error"), what="an error event")
            errors = " ".join(e["error"] for e in events(scheduler, "error"))
            assert "KubernetesAPIError" in errors
            assert "connect to the Kubernetes API failed" in errors
            async with Client(scheduler.address, asynchronous=True) as client:
                assert (await client.scheduler.identity())["type"] == "Scheduler"
            assert scheduler.status == Status.running
            assert_no_secret(scheduler, caplog, TOKEN, "kubernetes")

    run(scenario)


def test_error_answers_never_show_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with kubernetes_api() as (emulator, url):
            # An API server (or proxy) that echoes the credentials it refused.
            refusal = {
                "kind": "Status",
                "code": 403,
                "message": f"refused Authorization: Bearer {TOKEN}; raw {TOKEN}",
            }
            (
                emulator["post", re.compile(r"/api/v1/namespaces/.*/pods")]
                << 422
                << refusal
            )
            options = {"kubeconfig": write_kubeconfig(tmp_path, url)}
            async with scheduler_with(
                "kubernetes", minimum=1, backend_options=options
            ) as (
                scheduler,
                _,
            ):
                await until(lambda: events(scheduler, "error"), what="an error event")
                [error] = [e["error"] for e in events(scheduler, "error")][:1]
                assert "create Pod" in error and "HTTP 422" in error
                assert "refused Authorization: Bearer ***; raw ***" in error
                assert scheduler.status == Status.running
                assert_no_secret(scheduler, caplog, TOKEN, "kubernetes")

    run(scenario)


def test_an_error_from_connecting_never_shows_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The credentials are known before the first request: a refusal of that
    request (kr8s asks for /version/) that echoes the token shows it as ***."""

    async def scenario() -> None:
        refusal = {"kind": "Status", "code": 422, "message": f"refused {TOKEN}"}
        async with (
            kmock.KubernetesEmulator() as emulator,
            kmock.Server(emulator) as server,
        ):
            emulator["get", re.compile(r"/version/?")] << 422 << refusal
            url = str(server.url).rstrip("/")
            options = {"kubeconfig": write_kubeconfig(tmp_path, url)}
            async with scheduler_with(
                "kubernetes", minimum=1, backend_options=options
            ) as (scheduler, _):
                await until(lambda: events(scheduler, "error"), what="an error event")
                error = events(scheduler, "error")[0]["error"]
                assert "connect to the Kubernetes API failed" in error
                assert "HTTP 422: refused ***" in error
                assert_no_secret(scheduler, caplog, TOKEN, "kubernetes")

    run(scenario)
