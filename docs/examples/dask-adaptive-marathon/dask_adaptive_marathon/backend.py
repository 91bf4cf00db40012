"""Dask workers as the instances of one Marathon app.

The design is the one of Dask's original adaptive-deployment example: the
backend creates one Marathon app whose ``cmd`` runs ``dask worker``; scaling up
sets the app's number of instances; scaling down kills exactly the retired
workers' tasks with ``scale=true``, so that Marathon does not replace them.
Each worker is named after its Mesos task id (``--name $MESOS_TASK_ID``), which
is how a worker address is traced back to the task to kill.

All HTTP goes through tornado's non-blocking ``AsyncHTTPClient``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from dask_adaptive_plugin import Backend
from dask_adaptive_plugin.backends.workers import parse_worker_args
from dask_adaptive_plugin.config import invalid, parse_count, parse_duration

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger(__name__)

#: Share of the app's ``mem`` given to the worker as ``--memory-limit``; the
#: rest is head room for the process itself (Mesos kills a task over ``mem``).
MEMORY_FRACTION = 0.6
#: A Marathon app id: ``/``-separated segments of lower-case letters, digits,
#: ``-`` and ``.``.
APP_ID = re.compile(r"(/[a-z0-9]([a-z0-9.-]*[a-z0-9])?)+")
#: Credentials written out in text: an Authorization value, ``token=...``.
SECRET_TEXT = re.compile(r"(?i)\b(bearer\s+|basic\s+|token\s*[=:]\s*)[\w.~+/=-]{6,}")
#: ``user:password@`` in a URL.
URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class MarathonAPIError(RuntimeError):
    """A Marathon API call failed; the message never holds the token."""


class MarathonBackend(Backend):
    """Run Dask workers as the instances of one Marathon app.

    Parameters
    ----------
    scheduler
        The scheduler the workers connect to.
    marathon_url
        Marathon's HTTP API, such as ``http://marathon.mesos:8080`` (required).
    app_id
        The app's id (default: ``/dask-`` and the scheduler's address, such as
        ``/dask-10-0-0-5-8786``, so a restarted scheduler takes over its app).
    cpus, mem
        CPUs and memory (MiB) of each instance (default 1 and 4000).
    image
        A Docker image to run the workers in (default: none, the agent's host).
    cmd
        The worker program, to which the scheduler address and options are
        appended (default ``"dask worker"``).
    nthreads
        Threads per worker (default: ``cpus``, at least 1).
    worker_args
        Further ``dask worker`` arguments, a list or one string.
    resources
        What every worker provides (``dask worker --resources``), a mapping
        such as ``{"GPU": 1}``. All instances of an app are alike, so
        ``scale_up`` asked for resources they lack raises.
    env
        Environment variables of the app, a mapping.
    token
        Sent as ``Authorization: token=<token>`` (DC/OS's form); never logged.
    request_timeout
        The longest one API call may take (default ``"30s"``).
    scheduler_address
        The address the workers connect to (default: the scheduler's).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        marathon_url: Any = None,
        app_id: Any = None,
        cpus: Any = 1,
        mem: Any = 4000,
        image: Any = None,
        cmd: Any = "dask worker",
        nthreads: Any = None,
        worker_args: Any = (),
        resources: Any = None,
        env: Any = None,
        token: Any = None,
        request_timeout: Any = "30s",
        scheduler_address: Any = None,
    ) -> None:
        self.scheduler = scheduler
        self.marathon_url = _parse_url(marathon_url)
        self.scheduler_address = (
            _optional_text("scheduler_address", scheduler_address) or scheduler.address
        )
        self.app_id = _parse_app_id(app_id, self.scheduler_address)
        self.cpus = _positive_number("cpus", cpus)
        self.mem = _positive_number("mem", mem)
        self.image = _optional_text("image", image)
        self.cmd = _optional_text("cmd", cmd) or "dask worker"
        self.nthreads = self.threads_per_worker = _parse_nthreads(nthreads, self.cpus)
        self.worker_args = parse_worker_args(worker_args)
        self.resources = _parse_resources(resources)
        self.env = _parse_env(env)
        self.token = _optional_text("token", token)
        self.request_timeout = parse_duration(
            "request_timeout", request_timeout, positive=True, backend_option=True
        )
        self._client: AsyncHTTPClient | None = None
        self._creating: asyncio.Task | None = None
        self._start_creating_app()

    # -- the backend interface -----------------------------------------------------

    async def scale_up(self, n: int, **kwargs: Any) -> None:
        """Raise the app's instances to ``n`` (staging tasks count).

        Raises
        ------
        ValueError
            if asked for resources (``kwargs``) that the app's workers do not
            provide: its instances are all alike (the option ``resources``).
        """
        self._check_resources(kwargs)
        await self._ensure_app()
        app = (await self._request("GET", self._app_path()))["app"]
        if n > app["instances"]:
            await self._request("PUT", self._app_path(), {"instances": n}, force="true")

    async def scale_down(self, workers: list[str]) -> None:
        """Kill exactly these workers' tasks, shrinking the app by as many."""
        await self._ensure_app()
        ids = self.task_ids(workers)
        if ids:
            body = {"ids": ids}
            await self._request(
                "POST", "/v2/tasks/delete", body, scale="true", force="true"
            )

    async def close(self) -> None:
        """Destroy the app, which kills its tasks; failures are logged."""
        creating, self._creating = self._creating, None
        if creating is not None and not creating.done():
            creating.cancel()
        if creating is not None and _succeeded(creating):
            try:
                await self._request("DELETE", self._app_path(), force="true")
            except MarathonAPIError as e:
                logger.warning(
                    "marathon backend: app %s not destroyed: %s", self.app_id, e
                )
        if self._client is not None:
            self._client.close()

    def _check_resources(self, wanted: dict[str, Any]) -> None:
        lacking = {k: v for k, v in wanted.items() if self.resources.get(k, 0) < v}
        if lacking:
            raise ValueError(
                f"marathon backend: workers asked to provide {lacking}, but every "
                f"instance of app {self.app_id} provides {self.resources or 'none'} "
                "(an app's instances are alike): give the pool these resources "
                "with the backend option resources"
            )

    # -- the app -----------------------------------------------------------------------

    def worker_command(self) -> str:
        """The app's ``cmd``: ``dask worker`` named after its Mesos task."""
        args = [
            *shlex.split(self.cmd),
            self.scheduler_address,
            "--nthreads", str(self.nthreads),
            "--memory-limit", f"{int(self.mem * MEMORY_FRACTION)}MiB",
            *_resources_args(self.resources),
            *self.worker_args,
        ]  # fmt: skip
        return shlex.join(args) + ' --name "$MESOS_TASK_ID"'

    def app_definition(self) -> dict[str, Any]:
        """The Marathon app, with no instances yet."""
        app: dict[str, Any] = {
            "id": self.app_id,
            "cmd": self.worker_command(),
            "cpus": self.cpus,
            "mem": self.mem,
            "instances": 0,
            "env": self.env,
        }
        if self.image:
            app["container"] = {"type": "DOCKER", "docker": {"image": self.image}}
        return app

    def task_ids(self, workers: list[str]) -> list[str]:
        """The Mesos task ids (worker names) of these workers of this app."""
        prefix = self.app_id.strip("/").replace("/", "_") + "."
        known = self.scheduler.workers
        names = [str(known[a].name) for a in workers if a in known]
        return [name for name in names if name.startswith(prefix)]

    def _app_path(self) -> str:
        return f"/v2/apps{self.app_id}"

    def _start_creating_app(self) -> None:
        """Create the app now if there is an event loop (the plugin's case)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._creating = asyncio.ensure_future(self._create_app())
        self._creating.add_done_callback(_log_failure)

    async def _ensure_app(self) -> None:
        """Wait for the app to exist; try again to create it if that failed."""
        creating = self._creating
        if creating is None or (creating.done() and not _succeeded(creating)):
            creating = self._creating = asyncio.ensure_future(self._create_app())
        await asyncio.shield(creating)

    async def _create_app(self) -> None:
        """Create the app, or reset one of an earlier run to this definition.

        ``PUT`` creates or replaces; with ``instances: 0`` the tasks of an
        earlier run of this scheduler are stopped, so none leaks.
        """
        await self._request(
            "PUT", self._app_path(), self.app_definition(), force="true"
        )
        logger.info(
            "marathon backend: app %s ready at %s", self.app_id, self.marathon_url
        )

    # -- HTTP --------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, body: Any = None, **query: str
    ) -> dict[str, Any]:
        """One call to the API; errors become :class:`MarathonAPIError`."""
        url = self.marathon_url + path + (f"?{urlencode(query)}" if query else "")
        request = HTTPRequest(
            url,
            method=method,
            headers=self._headers(),
            body=None if body is None else json.dumps(body),
            connect_timeout=self.request_timeout,
            request_timeout=self.request_timeout,
        )
        what = f"Marathon API {method} {path}"
        try:
            response = await self._http().fetch(request, raise_error=False)
        except Exception as e:  # no answer: refused, timed out, TLS...
            message = f"{what} failed: {type(e).__name__}: {e}"
            raise MarathonAPIError(self._scrub(message)) from None
        if response.code >= 400:
            message = f"{what} answered HTTP {response.code}: {_message_of(response)}"
            raise MarathonAPIError(self._scrub(message))
        try:
            return json.loads(response.body) if response.body else {}
        except ValueError:
            raise MarathonAPIError(
                f"{what} answered HTTP {response.code}, not JSON"
            ) from None

    def _http(self) -> AsyncHTTPClient:
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True)
        return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"token={self.token}"
        return headers

    def _scrub(self, text: str) -> str:
        """``text`` without the token or anything shaped like a credential."""
        if self.token:
            text = text.replace(self.token, "***")
        text = SECRET_TEXT.sub(lambda m: f"{m.group(1)}***", text)
        return URL_USERINFO.sub("***@", text)


# -- helpers ---------------------------------------------------------------------------


def _succeeded(task: asyncio.Task) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("marathon backend: app not created yet: %s", task.exception())


def _message_of(response: HTTPResponse) -> str:
    """Marathon's ``{"message": ...}``, else the start of the body."""
    text = (response.body or b"").decode(errors="replace")
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or text[:500] or response.reason)


def default_app_id(address: str) -> str:
    """The app id derived from the scheduler's address.

    Examples
    --------
    >>> default_app_id("tcp://10.0.0.5:8786")
    '/dask-10-0-0-5-8786'
    """
    location = address.partition("://")[2] or address
    return "/" + re.sub(r"[^a-z0-9]+", "-", f"dask-{location}".lower()).strip("-")


def _parse_app_id(value: Any, address: str) -> str:
    if value is None:
        return default_app_id(address)
    app_id = "/" + value.strip().strip("/") if isinstance(value, str) else ""
    if not APP_ID.fullmatch(app_id):
        raise invalid(
            "app_id",
            value,
            "a Marathon app id such as /dask/workers (lower-case letters, "
            "digits, '-' and '.', separated by '/')",
            backend_option=True,
        )
    return app_id


def _parse_url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^/\s]+", value.strip()):
        raise invalid(
            "marathon_url",
            URL_USERINFO.sub("***@", str(value)),
            "the URL of Marathon's API, such as http://marathon.mesos:8080",
            backend_option=True,
        )
    return value.strip().rstrip("/")


def _optional_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        shown = "***" if name == "token" else value
        raise invalid(name, shown, "a non-empty string", backend_option=True)
    return value.strip()


def _positive_number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if isinstance(value, bool) or not number > 0:
        raise invalid(name, value, "a number > 0", backend_option=True)
    return number


def _parse_nthreads(value: Any, cpus: float) -> int:
    if value is None:
        return max(1, int(cpus))
    return parse_count("nthreads", value, low=1, backend_option=True)  # type: ignore[return-value]


def _parse_resources(value: Any) -> dict[str, float]:
    accepted = "a mapping of resource names to numbers >= 0, such as {'GPU': 1}"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid("resources", value, accepted, backend_option=True)
    resources = {}
    for key, amount in value.items():
        if (
            not isinstance(key, str)
            or not key
            or isinstance(amount, bool)
            or not isinstance(amount, (int, float))
            or amount < 0
        ):
            raise invalid("resources", value, accepted, backend_option=True)
        resources[key] = float(amount)
    return resources


def _resources_args(resources: dict[str, float]) -> list[str]:
    if not resources:
        return []
    return ["--resources", ",".join(f"{k}={v:g}" for k, v in resources.items())]


def _parse_env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Mapping) and all(isinstance(k, str) and k for k in value):
        return {k: str(v) for k, v in value.items()}
    raise invalid(
        "env", value, "a mapping of variable names to values", backend_option=True
    )
