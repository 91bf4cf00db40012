"""A stand-in Marathon: the parts of Marathon's HTTP API that a backend uses.

Marathon (on Mesos) cannot be installed here, so this tornado application
speaks its REST API on 127.0.0.1 and runs each instance of an app as a local
process: ``/bin/sh -c <cmd>`` with ``MESOS_TASK_ID`` (and ``MARATHON_APP_ID``,
``HOST``) in its environment, as a Mesos agent would. Like Marathon it keeps
each app at its number of instances: a task whose process exits is replaced
after the app's back-off.

Endpoints (Marathon's REST API, v2):

- ``POST /v2/apps``: create an app (409 if it exists);
- ``GET /v2/apps/{app_id}``: the app, with its tasks;
- ``PUT /v2/apps/{app_id}``: update an app (``instances`` scales it) or create it;
- ``DELETE /v2/apps/{app_id}``: destroy an app and its tasks;
- ``GET /v2/apps/{app_id}/tasks``: the app's tasks;
- ``DELETE /v2/apps/{app_id}/tasks/{task_id}?scale=true``: kill one task;
- ``POST /v2/tasks/delete?scale=true`` with ``{"ids": [...]}``: kill tasks.

With ``scale=true`` a killed task is not replaced (the app's instances go
down by one); without it, it is. Errors are JSON ``{"message": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

#: Seconds a task's process gets after SIGTERM before SIGKILL.
KILL_GRACE = 10.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def normalise_app_id(app_id: str) -> str:
    """Marathon's absolute app id: ``dask/workers`` -> ``/dask/workers``."""
    return "/" + app_id.strip("/")


@dataclass
class Task:
    """One running instance of an app."""

    id: str
    app_id: str
    process: asyncio.subprocess.Process
    staged_at: str = field(default_factory=_now)
    started_at: str = field(default_factory=_now)
    state: str = "TASK_RUNNING"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "appId": self.app_id,
            "host": "127.0.0.1",
            "ports": [],
            "stagedAt": self.staged_at,
            "startedAt": self.started_at,
            "state": self.state,
        }


@dataclass
class App:
    """An app: its definition and its tasks."""

    definition: dict[str, Any]
    tasks: dict[str, Task] = field(default_factory=dict)
    version: str = field(default_factory=_now)

    @property
    def id(self) -> str:
        return self.definition["id"]

    @property
    def instances(self) -> int:
        return int(self.definition.get("instances", 1))

    def to_json(self) -> dict[str, Any]:
        return {
            **self.definition,
            "version": self.version,
            "tasksRunning": len(self.tasks),
            "tasksStaged": 0,
            "tasks": [task.to_json() for task in self.tasks.values()],
            "deployments": [],
        }


class MarathonStandIn:
    """The stand-in server; use as ``async with MarathonStandIn() as marathon``.

    Parameters
    ----------
    token
        If given, every request must carry ``Authorization: token=<token>``
        (DC/OS's form), or gets 401.

    Attributes
    ----------
    url
        Where it listens, ``http://127.0.0.1:<port>``.
    apps
        The apps, by id.
    killed
        Ids of the tasks killed through the API, in order.
    requests
        ``(method, path)`` of every request.
    fail
        ``(status, message)`` to answer every request with, or ``None``. The
        message may contain ``{auth}``, replaced by the request's
        Authorization header (as careless proxies echo it).
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.apps: dict[str, App] = {}
        self.killed: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.fail: tuple[int, str] | None = None
        self.url = ""
        self._server: HTTPServer | None = None
        self._watchers: set[asyncio.Task] = set()

    async def __aenter__(self) -> MarathonStandIn:
        routes = [
            (r"/v2/apps", AppsHandler),
            (r"/v2/apps/(.+)/tasks/([^/]+)", AppTaskHandler),
            (r"/v2/apps/(.+)/tasks", AppTasksHandler),
            (r"/v2/apps/(.+)", AppHandler),
            (r"/v2/tasks/delete", TasksDeleteHandler),
        ]
        application = Application(routes, marathon=self)
        sockets = bind_sockets(0, "127.0.0.1")
        self._server = HTTPServer(application)
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.stop()
        await self._server.close_all_connections()
        for app_id in list(self.apps):
            await self.destroy(app_id)
        for watcher in list(self._watchers):
            watcher.cancel()

    # -- what the API does -------------------------------------------------------------

    def running_tasks(self) -> list[str]:
        """Ids of all tasks whose process is running."""
        return sorted(
            task.id
            for app in self.apps.values()
            for task in app.tasks.values()
            if task.process.returncode is None
        )

    async def create(self, definition: dict[str, Any]) -> App:
        app = self.apps[definition["id"]] = App(definition)
        await self.reconcile(app)
        return app

    async def update(self, app: App, changes: dict[str, Any]) -> None:
        app.definition.update(changes)
        app.version = _now()
        await self.reconcile(app)

    async def destroy(self, app_id: str) -> None:
        app = self.apps.pop(app_id)
        await asyncio.gather(*(self.kill(app, task_id) for task_id in list(app.tasks)))

    async def reconcile(self, app: App) -> None:
        """Launch or kill tasks until the app has its number of instances."""
        while len(app.tasks) < app.instances:
            await self.launch(app)
        surplus = list(app.tasks)[app.instances :]
        await asyncio.gather(*(self.kill(app, task_id) for task_id in surplus))

    async def launch(self, app: App) -> Task:
        task_id = f"{app.id.strip('/').replace('/', '_')}.{uuid.uuid4()}"
        env = {
            **os.environ,
            **{k: str(v) for k, v in (app.definition.get("env") or {}).items()},
            "MESOS_TASK_ID": task_id,
            "MARATHON_APP_ID": app.id,
            "HOST": "127.0.0.1",
        }
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", app.definition["cmd"],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        task = app.tasks[task_id] = Task(task_id, app.id, process)
        watcher = asyncio.ensure_future(self._replace_when_exited(app, task))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return task

    async def kill(self, app: App, task_id: str) -> Task:
        """Kill a task's process (SIGTERM, then SIGKILL); it is not replaced here."""
        task = app.tasks.pop(task_id)
        task.state = "TASK_KILLED"
        if task.process.returncode is None:
            _signal_group(task.process, signal.SIGTERM)
            try:
                await asyncio.wait_for(task.process.wait(), KILL_GRACE)
            except asyncio.TimeoutError:
                _signal_group(task.process, signal.SIGKILL)
                await task.process.wait()
        return task

    def find_task(self, task_id: str) -> tuple[App, str] | None:
        for app in self.apps.values():
            if task_id in app.tasks:
                return app, task_id
        return None

    async def _replace_when_exited(self, app: App, task: Task) -> None:
        await task.process.wait()
        if app.tasks.get(task.id) is not task:
            return  # killed on purpose
        del app.tasks[task.id]
        task.state = "TASK_FAILED" if task.process.returncode else "TASK_FINISHED"
        await asyncio.sleep(float(app.definition.get("backoffSeconds", 1)))
        if self.apps.get(app.id) is app:
            await self.reconcile(app)


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


# -- HTTP ------------------------------------------------------------------------------


class APIError(HTTPError):
    """An error answer: the HTTP status and Marathon's ``{"message": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status)
        self.message = message


class MarathonHandler(RequestHandler):
    """Common parts: authentication, injected failures, JSON in and out."""

    @property
    def marathon(self) -> MarathonStandIn:
        return self.settings["marathon"]

    def prepare(self) -> None:
        self.marathon.requests.append((self.request.method or "", self.request.path))
        auth = self.request.headers.get("Authorization", "")
        if self.marathon.fail is not None:
            status, message = self.marathon.fail
            raise APIError(status, message.format(auth=auth))
        if self.marathon.token is not None and auth != f"token={self.marathon.token}":
            raise APIError(401, "Unauthorized: missing or wrong token")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        self.finish({"message": getattr(error, "message", self._reason)})

    def body_json(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError:
            raise APIError(400, "Invalid JSON") from None

    def scaled(self) -> bool:
        return self.get_query_argument("scale", "false").lower() == "true"

    def app(self, app_id: str) -> App:
        app = self.marathon.apps.get(normalise_app_id(app_id))
        if app is None:
            raise APIError(404, f"App '{normalise_app_id(app_id)}' does not exist")
        return app

    def deployment(self, app: App | None = None) -> None:
        version = app.version if app is not None else _now()
        self.finish({"deploymentId": str(uuid.uuid4()), "version": version})


class AppsHandler(MarathonHandler):
    async def post(self) -> None:
        definition = self.body_json()
        if not definition.get("id") or not definition.get("cmd"):
            raise APIError(422, "Object is not valid: id and cmd are required")
        definition["id"] = normalise_app_id(definition["id"])
        if definition["id"] in self.marathon.apps:
            raise APIError(409, f"An app with id [{definition['id']}] already exists.")
        app = await self.marathon.create(definition)
        self.set_status(201)
        self.finish(app.to_json())


class AppHandler(MarathonHandler):
    def get(self, app_id: str) -> None:
        self.finish({"app": self.app(app_id).to_json()})

    async def put(self, app_id: str) -> None:
        changes = self.body_json()
        changes.pop("id", None)
        app = self.marathon.apps.get(normalise_app_id(app_id))
        if app is None:
            if not changes.get("cmd"):
                raise APIError(422, "Object is not valid: cmd is required")
            app = await self.marathon.create(
                {"id": normalise_app_id(app_id), **changes}
            )
            self.set_status(201)
        else:
            await self.marathon.update(app, changes)
        self.deployment(app)

    async def delete(self, app_id: str) -> None:
        app = self.app(app_id)
        await self.marathon.destroy(app.id)
        self.deployment()


class AppTasksHandler(MarathonHandler):
    def get(self, app_id: str) -> None:
        tasks = self.app(app_id).tasks.values()
        self.finish({"tasks": [task.to_json() for task in tasks]})


class AppTaskHandler(MarathonHandler):
    async def delete(self, app_id: str, task_id: str) -> None:
        app = self.app(app_id)
        if task_id not in app.tasks:
            raise APIError(404, f"Task '{task_id}' does not exist")
        task = await _kill(self.marathon, app, task_id, self.scaled())
        if self.scaled():
            self.deployment(app)
        else:
            self.finish({"task": task.to_json()})


class TasksDeleteHandler(MarathonHandler):
    async def post(self) -> None:
        ids = self.body_json().get("ids")
        if not isinstance(ids, list):
            raise APIError(422, "Object is not valid: ids must be a list")
        found = [f for f in map(self.marathon.find_task, ids) if f is not None]
        scale = self.scaled()
        tasks = await asyncio.gather(
            *(_kill(self.marathon, a, t, scale) for a, t in found)
        )
        if scale:
            self.deployment()
        else:
            self.finish({"tasks": [task.to_json() for task in tasks]})


async def _kill(marathon: MarathonStandIn, app: App, task_id: str, scale: bool) -> Task:
    """Kill one task; with ``scale`` the app shrinks, else the task is replaced."""
    if scale:
        app.definition["instances"] = max(0, app.instances - 1)
    marathon.killed.append(task_id)
    task = await marathon.kill(app, task_id)
    if not scale:
        await marathon.reconcile(app)
    return task
