"""The ``kubernetes`` backend: each worker is a Pod made through the Kubernetes API.

All API calls go through kr8s's asyncio client, so none of them blocks the
scheduler's event loop, and each is bounded by ``api_timeout``.

Identity. Every Pod carries two labels: ``dask-adaptive-plugin/scheduler``, the
*cluster name*, and ``dask-adaptive-plugin/worker``, the Pod's (and worker's)
name. The cluster name is the option ``cluster_name``; by default it is derived
from the address the workers connect to, so that a scheduler restarted at the
same address (the usual case behind a Kubernetes Service) finds the Pods of its
earlier run: it adopts those whose worker is connected and deletes the others.

Credentials. kr8s's own auth object reads the kubeconfig (or the service
account) before the first request; the secrets it holds are replaced by
``***`` in every message, also in an error from connecting.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from time import time
from typing import TYPE_CHECKING, Any, TypeVar

import distributed
import yaml

from dask_adaptive_plugin.backend import PENDING, RUNNING, Backend
from dask_adaptive_plugin.backends.workers import (
    WorkerOptions,
    all_or_first_error,
    parse_cluster_name,
    parse_text,
    refuse_replaced,
)
from dask_adaptive_plugin.background import BackgroundTasks
from dask_adaptive_plugin.config import invalid, parse_duration
from dask_adaptive_plugin.pools import DEFAULT as DEFAULT_POOL

try:
    import kr8s
    import kr8s.asyncio
    from kr8s._auth import KubeAuth  # the class of kr8s.asyncio.api().auth
    from kr8s.asyncio.objects import Pod
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the kubernetes backend needs kr8s: "
        "pip install 'dask-adaptive-plugin[kubernetes]'"
    ) from e

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Label naming the scheduler (cluster name) a Pod belongs to.
SCHEDULER_LABEL = "dask-adaptive-plugin/scheduler"
#: Label naming the worker a Pod runs (the Pod's own name).
WORKER_LABEL = "dask-adaptive-plugin/worker"
#: The image when neither the template nor the ``image`` option names one:
#: the official Dask image of the scheduler's own version.
DEFAULT_IMAGE = f"ghcr.io/dask/dask:{distributed.__version__}"
#: Keys under a kubeconfig user whose values are secrets.
SECRET_KEY = re.compile(r"token|password|secret|key-data", re.IGNORECASE)
#: Credentials written out in text: an Authorization value, ``token=...``.
SECRET_TEXT = re.compile(r"(?i)\b(bearer\s+|basic\s+|token\s*[=:]\s*)[\w.~+/=-]{6,}")
#: ``user:password@`` in a URL.
URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
#: Pod phases after which the container will not run again.
FINISHED = ("Succeeded", "Failed")
#: A namespace name.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class KubernetesAPIError(RuntimeError):
    """A Kubernetes API call failed; the message never holds credentials."""


@dataclass
class PodRecord:
    """What the backend knows about one of its Pods."""

    name: str
    created: float
    phase: str = "Pending"


class KubernetesBackend(Backend):
    """Run each worker as a Kubernetes Pod.

    Parameters
    ----------
    scheduler
        The scheduler the workers connect to.
    pod_template
        A Pod manifest, as a mapping or the path of a YAML file. Its first
        container runs the worker: its ``args`` are set to
        ``dask worker <scheduler> --name <pod name> ...`` (so a ``command``
        in the template, such as an entry point wrapper, is kept). Default: a
        Pod with one container ``dask-worker``.
    image
        Container image; overrides the template's (default: the template's,
        else ``ghcr.io/dask/dask:<distributed version>``).
    namespace
        Namespace of the Pods (default: the kubeconfig context's, else
        ``default``).
    resources
        Container resources in Kubernetes' form, overriding the template's:
        ``{"limits": {"cpu": "1", "memory": "4Gi"}}``.
    env
        Environment variables for the worker container, a mapping of names to
        values (or Kubernetes' list of ``{"name", "value"}``), merged over
        the template's.
    nthreads
        Threads per worker (default 1).
    worker_args
        Further ``dask worker`` arguments, a list or one string.
    death_timeout
        A worker that loses its scheduler for this long exits, and its Pod
        finishes (``restartPolicy: Never`` unless the template says otherwise).
    cluster_name
        The scheduler's identity in the Pods' labels (default: derived from
        ``scheduler_address``, and the pool's name for a pool other than
        ``default``); see the module documentation.
    scheduler_address
        The address the workers connect to (default: the scheduler's own
        address), such as a Service: ``tcp://dask-scheduler.jobs:8786``.
    kubeconfig, context, api_url
        Where the API is and how to authenticate, as in kr8s (default: the
        ``KUBECONFIG`` environment variable or ``~/.kube/config``, else the
        Pod's service account).
    api_timeout
        The longest one API call may take (default ``"30s"``).
    """

    @classmethod
    def check_options(cls, **options: Any) -> None:
        refuse_replaced(options)
        super().check_options(**options)

    def __init__(
        self,
        scheduler: Scheduler,
        pod_template: Any = None,
        image: Any = None,
        namespace: Any = None,
        resources: Any = None,
        env: Any = None,
        nthreads: Any = 1,
        worker_args: Any = (),
        death_timeout: Any = "60s",
        cluster_name: Any = None,
        scheduler_address: Any = None,
        kubeconfig: Any = None,
        context: Any = None,
        api_url: Any = None,
        api_timeout: Any = "30s",
    ) -> None:
        self.scheduler = scheduler
        self.template = _apply_container_options(
            _load_pod_template(pod_template),
            image=parse_text("image", image),
            resources=_parse_resources(resources),
            env=_parse_env(env),
        )
        self.namespace_option = _parse_namespace(namespace)
        self.namespace = self.namespace_option or "default"
        self.worker = WorkerOptions.parse(nthreads, None, worker_args, death_timeout)
        self.threads_per_worker = self.worker.nthreads
        self.api_timeout = parse_duration("api_timeout", api_timeout, backend_option=True)
        self.scheduler_address = (
            parse_text("scheduler_address", scheduler_address) or scheduler.address
        )
        self._cluster_name = cluster_name
        parse_cluster_name(cluster_name, self.scheduler_address)  # checked now
        self.kubeconfig = parse_text("kubeconfig", kubeconfig)
        self.context = parse_text("context", context)
        self.api_url = parse_text("api_url", api_url)
        self.pods: dict[str, PodRecord] = {}
        self._api: Any = None
        #: kr8s's auth object, read before the first request.
        self._auth: KubeAuth | None = None
        self._tasks = BackgroundTasks("kubernetes backend", self._background_failed)
        self._setup: asyncio.Task[None] | None = None
        self._set_up = False
        self._start_setup_in_background()

    # -- the backend interface -----------------------------------------------------

    async def scale_up(self, n: int, **resources: Any) -> None:
        """Create Pods until ``n`` are running or starting (Pending ones count)."""
        await self._ensure_setup()
        await self._refresh()
        missing = n - len(self.pods)
        if missing > 0:
            await all_or_first_error(
                self._create_pod(self._new_pod_name(), resources)
                for _ in range(missing)
            )

    async def scale_down(self, workers: list[str]) -> None:
        """Delete the Pods of these (retired or crashed) workers."""
        await self._ensure_setup()
        names = self.names(workers)
        ours = [n for n in names if n in self.pods or n.startswith(self._prefix)]
        await all_or_first_error(self._delete_pod(name) for name in ours)

    async def cancel_pending(self) -> None:
        """Delete the Pods still ``Pending`` (their start is overdue), saying
        what Kubernetes says of each (``0/3 nodes are available: ...``)."""
        await self._ensure_setup()
        await self._refresh()
        pending = [name for name, record in self.pods.items() if record.phase == "Pending"]
        if not pending:
            return
        why = {name: await self._why_pending(name) for name in pending}
        await all_or_first_error(self._delete_pod(name) for name in pending)
        self._record(
            {
                "status": "pods-cancelled",
                "pods": pending,
                "why": {name: text for name, text in why.items() if text},
                "reason": "Pods still Pending after the pool's start_timeout were "
                "deleted; the plugin asks again, from the next pool that fits",
            }
        )

    async def _why_pending(self, name: str) -> str:
        """Kubernetes' reason a Pod is not scheduled; ``""`` if it cannot tell."""
        try:
            pod = await self._pod(name)
            await self._call(f"read Pod {name}", pod.refresh())
        except Exception as e:  # only an explanation is lost
            logger.debug("kubernetes backend: %s", e)
            return ""
        return _why_pending(pod.raw)

    def report(self) -> dict[str, str]:
        """This backend's Pods: Pending ones wait, the others run."""
        return {
            name: PENDING if record.phase == "Pending" else RUNNING
            for name, record in self.pods.items()
        }

    async def close(self) -> None:
        """Delete every Pod of this backend; failures are logged, not raised."""
        await self._tasks.cancel()
        if self._api is None and not self.pods:
            return  # never reached the API: nothing of ours to delete
        try:
            names = {pod["metadata"]["name"] for pod in await self._list_pods()}
            await all_or_first_error(
                self._delete_pod(name) for name in names | set(self.pods)
            )
        except Exception as e:
            message = self._scrub(f"{type(e).__name__}: {e}")
            logger.warning("kubernetes backend: Pods not deleted on close: %s", message)

    # -- the Pod ---------------------------------------------------------------------

    def pod_manifest(self, name: str, resources: Mapping[str, Any]) -> dict[str, Any]:
        """The Pod for worker ``name``: the template, named, labelled, with args."""
        pod = copy.deepcopy(self.template)
        metadata = pod.setdefault("metadata", {})
        metadata.pop("generateName", None)
        metadata.update(name=name, namespace=self.namespace)
        labels = metadata.setdefault("labels", {})
        labels.update({SCHEDULER_LABEL: self.cluster_name, WORKER_LABEL: name})
        pod["spec"].setdefault("restartPolicy", "Never")
        pod["spec"]["containers"][0]["args"] = self.worker.command(
            ["dask", "worker"], self.scheduler_address, name, resources
        )
        return pod

    # -- start: adopt or remove what an earlier run left -------------------------------

    def _start_setup_in_background(self) -> None:
        """Begin the start-up clean-up now if there is a loop (the plugin's case)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop: at the first call instead
            return
        self._setup = self._tasks.spawn(
            self._refresh(first=True), "looking for Pods of an earlier run"
        )

    async def _ensure_setup(self) -> None:
        """Wait for the start-up clean-up; run it again if it failed."""
        if self._setup is not None and not self._setup.done():
            await asyncio.shield(self._setup)
        if not self._set_up:
            await self._refresh(first=True)

    def _background_failed(self, what: str, error: BaseException) -> None:
        self._record(
            {
                "status": "error",
                "action": what,
                "error": self._scrub(f"{type(error).__name__}: {error}"),
                "reason": f"{what} failed; tried again at the next scale_up "
                "or scale_down",
            }
        )

    # -- Pods --------------------------------------------------------------------------

    @cached_property
    def cluster_name(self) -> str:
        """The label of this backend's Pods; read once the pool is known."""
        name = parse_cluster_name(self._cluster_name, self.scheduler_address)
        if self._cluster_name is None and self.pool.name != DEFAULT_POOL:
            name = parse_cluster_name(f"{name}-{self.pool.name}", "")
        return name

    @property
    def _prefix(self) -> str:
        """How the names of this cluster's Pods begin."""
        return f"{self.cluster_name}-"

    def _new_pod_name(self) -> str:
        return f"{self._prefix}{uuid.uuid4().hex[:8]}"

    async def _refresh(self, first: bool = False) -> None:
        """Bring :attr:`pods` up to date: phases, vanished and finished Pods.

        A Pod with this cluster's label that is not tracked (left by an
        earlier run) is adopted if its worker is connected; otherwise it is
        deleted if it finished, or if this is the ``first`` look.
        """
        connected = {str(ws.name) for ws in self.scheduler.workers.values()}
        listed, adopted, removed = {}, [], []
        for pod in await self._list_pods():
            name, phase = _name_and_phase(pod)
            if name not in self.pods and name in connected and phase not in FINISHED:
                self.pods[name] = PodRecord(name, _created_at(pod), phase)
                adopted.append(name)
            elif name not in self.pods and (first or phase in FINISHED):
                await self._delete_pod(name)
                removed.append(name)
            listed[name] = phase
        for name, record in list(self.pods.items()):
            if name not in listed:
                self._forget(name)
            elif listed[name] in FINISHED:
                logger.info("kubernetes backend: Pod %s %s", name, listed[name])
                await self._delete_pod(name)
            else:
                record.phase = listed[name]
        if first and (adopted or removed):
            self._record(
                {
                    "status": "recovered",
                    "adopted": sorted(adopted),
                    "removed": sorted(removed),
                    "reason": f"Pods labelled {SCHEDULER_LABEL}={self.cluster_name} "
                    "from an earlier run: kept those whose worker is connected",
                }
            )
        self._set_up = self._set_up or first

    async def _list_pods(self) -> list[dict[str, Any]]:
        """This cluster's Pods that are not being deleted, as raw manifests."""
        api = await self._connect()
        selector = {SCHEDULER_LABEL: self.cluster_name}
        pods = await self._call(
            "list Pods",
            _collect(
                Pod.list(api=api, namespace=self.namespace, label_selector=selector)
            ),
        )
        # The selector is checked here too: some API servers (and emulators)
        # ignore it.
        return [
            pod.raw.to_dict()
            for pod in pods
            if pod.labels.get(SCHEDULER_LABEL) == self.cluster_name
            and not pod.metadata.get("deletionTimestamp")
        ]

    async def _create_pod(self, name: str, resources: Mapping[str, Any]) -> None:
        api = await self._connect()
        pod = Pod(self.pod_manifest(name, resources), api=api)
        # Counted before the call: if the answer is lost, the Pod may exist; the
        # next refresh forgets it if it does not.
        self.pods[name] = PodRecord(name, time())
        await self._call(f"create Pod {name}", pod.create())
        logger.debug("kubernetes backend: created Pod %s", name)

    async def _pod(self, name: str) -> Pod:
        """A handle on the Pod ``name`` (nothing is read)."""
        api = await self._connect()
        return Pod({"metadata": {"name": name}}, namespace=self.namespace, api=api)

    async def _delete_pod(self, name: str) -> None:
        pod = await self._pod(name)
        try:
            await self._call(f"delete Pod {name}", pod.delete())
        except kr8s.NotFoundError:
            pass
        self._forget(name)
        logger.debug("kubernetes backend: deleted Pod %s", name)

    def _forget(self, name: str) -> None:
        self.pods.pop(name, None)

    # -- the API -----------------------------------------------------------------------

    async def _connect(self) -> Any:
        """The kr8s API client, made (and authenticated) on first use.

        The credentials are read first, by a kr8s auth object of their own, so
        that even an error from the first request is cleaned of them.
        """
        if self._api is None:
            where: dict[str, Any] = {
                "url": self.api_url, "kubeconfig": self.kubeconfig,
                "context": self.context, "namespace": self.namespace_option,
            }  # fmt: skip
            auth = KubeAuth(**where)
            await self._call("read the Kubernetes credentials", auth.reauthenticate())
            self._auth = auth
            api = await self._call(
                "connect to the Kubernetes API", kr8s.asyncio.api(**where)
            )
            api.timeout = self.api_timeout
            self.namespace = self.namespace_option or api.namespace
            self._api = api
        return self._api

    async def _call(self, what: str, awaitable: Awaitable[T]) -> T:
        """Await one API call within ``api_timeout``; errors say what, not secrets."""
        try:
            return await asyncio.wait_for(awaitable, self.api_timeout)
        except kr8s.NotFoundError:
            raise
        except asyncio.TimeoutError:
            message = f"no answer within {self.api_timeout:g}s"
        except Exception as e:
            message = _describe(e)
        server = getattr(self._auth, "server", None) or self.api_url
        where = f" (API server {server})" if server else ""
        raise KubernetesAPIError(
            self._scrub(f"Kubernetes API: {what} failed{where}: {message}")
        ) from None

    def _scrub(self, text: str) -> str:
        """``text`` with every known credential and credential-shaped word hidden.

        The credentials are read from kr8s's auth objects each time: kr8s
        authenticates again when a token expires.
        """
        auths = [self._auth, getattr(self._api, "auth", None)]
        secrets = {s for auth in auths if auth is not None for s in _credentials(auth)}
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        text = SECRET_TEXT.sub(lambda m: f"{m.group(1)}***", text)
        return URL_USERINFO.sub("***@", text)

    def _record(self, event: dict[str, Any]) -> None:
        self.log_event({**event, "backend": "kubernetes"})


# -- helpers ---------------------------------------------------------------------------


async def _collect(items: Any) -> list[Any]:
    """The items of an async iterator, as a list."""
    return [item async for item in items]


def _name_and_phase(pod: Mapping[str, Any]) -> tuple[str, str]:
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    return pod["metadata"]["name"], phase


def _created_at(pod: Mapping[str, Any]) -> float:
    """A Pod's creation time as a timestamp (now, if the API did not say)."""
    stamp = pod["metadata"].get("creationTimestamp")
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return time()


def _why_pending(pod: Mapping[str, Any]) -> str:
    """The scheduler's message on an unscheduled Pod (``Insufficient cpu``...)."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
        ):
            return str(condition.get("message") or condition.get("reason") or "")
    return ""


def _describe(error: BaseException) -> str:
    """An API error in words: the HTTP status and message where there is one."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    text = str(error) or type(error).__name__
    return f"HTTP {status}: {text}" if status else f"{type(error).__name__}: {text}"


def _credentials(auth: KubeAuth) -> set[str]:
    """The secrets a kr8s auth object authenticates with: its token (from the
    kubeconfig, an exec plugin or the service account) and the secret values
    of the kubeconfig's user (key data, passwords...)."""
    found = [auth.token or "", *_secret_values(auth._user)]
    return {secret.strip() for secret in found if len(secret.strip()) >= 4}


def _secret_values(node: Any, secret: bool = False) -> Iterable[str]:
    """String values under keys that name secrets, at any depth."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _secret_values(
                value, secret or bool(SECRET_KEY.search(str(key)))
            )
    elif isinstance(node, list):
        for value in node:
            yield from _secret_values(value, secret)
    elif secret and isinstance(node, str):
        yield node


def _load_pod_template(value: Any) -> dict[str, Any]:
    """The template Pod, from a mapping or a YAML file, checked."""
    if value is None:
        return {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{}]}}
    accepted = "a Pod manifest with spec.containers (a mapping or a YAML file path)"
    if isinstance(value, (str, os.PathLike)):
        try:
            with open(os.path.expanduser(value)) as f:
                value = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            raise invalid(
                "pod_template", str(value), f"{accepted} ({e})", backend_option=True
            ) from None
    spec = value.get("spec") if isinstance(value, Mapping) else None
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if (
        not isinstance(containers, list)
        or not containers
        or not all(isinstance(c, Mapping) for c in containers)
        or value.get("kind", "Pod") != "Pod"
    ):
        raise invalid("pod_template", value, accepted, backend_option=True)
    return {**copy.deepcopy(dict(value)), "apiVersion": "v1", "kind": "Pod"}


def _apply_container_options(
    pod: dict[str, Any],
    image: str | None,
    resources: dict[str, Any] | None,
    env: list[dict[str, Any]],
) -> dict[str, Any]:
    """The template with the image, resources and env options in its container."""
    container = pod["spec"]["containers"][0]
    container.setdefault("name", "dask-worker")
    if image or not container.get("image"):
        container["image"] = image or DEFAULT_IMAGE
    if resources is not None:
        container["resources"] = resources
    if env:
        names = {item["name"] for item in env}
        kept = [
            item for item in container.get("env") or [] if item.get("name") not in names
        ]
        container["env"] = kept + env
    return pod


def _parse_namespace(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not DNS_LABEL.fullmatch(value):
        raise invalid(
            "namespace",
            value,
            "a Kubernetes namespace name (lower-case letters, digits and '-')",
            backend_option=True,
        )
    return value


def _parse_resources(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    accepted = "a mapping such as {'limits': {'cpu': '1', 'memory': '4Gi'}}"
    if (
        not isinstance(value, Mapping)
        or not set(value) <= {"limits", "requests", "claims"}
        or not all(isinstance(v, (Mapping, list)) for v in value.values())
    ):
        raise invalid("resources", value, accepted, backend_option=True)
    return copy.deepcopy(dict(value))


def _parse_env(value: Any) -> list[dict[str, Any]]:
    """Environment variables as Kubernetes' list of ``{"name", "value"}``."""
    if value is None:
        return []
    if isinstance(value, Mapping) and all(isinstance(k, str) and k for k in value):
        return [{"name": k, "value": str(v)} for k, v in value.items()]
    if isinstance(value, list) and all(
        isinstance(item, Mapping) and isinstance(item.get("name"), str)
        for item in value
    ):
        return [dict(item) for item in value]
    raise invalid(
        "env",
        value,
        "a mapping of variable names to values, or a list of {name, value}",
        backend_option=True,
    )
