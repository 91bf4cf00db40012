"""A stand-in kubelet: runs the Pods of a Kubernetes API emulator as processes.

The kmock emulator stores Pods but nothing runs them. :class:`Kubelet` polls
its API over HTTP, as a node's kubelet watches the real one: for each Pod it
sees it starts the container's command line as a local process (``dask
worker`` becomes ``python -m distributed.cli.dask_worker``), reports the Pod
``Running``, and stops the process when the Pod is deleted. A process that
exits on its own turns its Pod ``Succeeded`` or ``Failed``. Pods can be left
``Pending``, as on a cluster without room for them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections import deque
from datetime import datetime, timezone
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

#: Seconds a process gets after SIGTERM before SIGKILL.
STOP_GRACE = 10.0


class Kubelet:
    """Run the Pods of the API at ``api_url`` as local processes.

    Parameters
    ----------
    api_url
        The API server (the emulator), such as ``http://127.0.0.1:34567``.
    interval
        Seconds between two looks at the Pods.

    Attributes
    ----------
    hold
        While true, Pods not yet started stay ``Pending``.
    held
        Names of Pods that stay ``Pending`` whatever ``hold`` says.
    started
        Names of every Pod this kubelet has started, in order.
    output
        The last lines each Pod's process wrote to stderr, by Pod name.
    """

    def __init__(self, api_url: str, interval: float = 0.1) -> None:
        self.api_url = api_url.rstrip("/")
        self.interval = interval
        self.hold = False
        self.held: set[str] = set()
        self.started: list[str] = []
        self.output: dict[str, deque[str]] = {}
        self.processes: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self._finished: set[tuple[str, str]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Kubelet:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None and self._session is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await asyncio.gather(*(self._stop(key) for key in list(self.processes)))
        await self._session.close()

    @property
    def running(self) -> list[str]:
        """Names of the Pods whose process is running."""
        return sorted(
            name
            for (_, name), proc in self.processes.items()
            if proc.returncode is None
        )

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except aiohttp.ClientError as e:
                logger.debug("kubelet: %r", e)
            await asyncio.sleep(self.interval)

    async def sync(self) -> None:
        """One look at the Pods: start new ones, stop deleted ones, report exits."""
        pods = {_key(pod): pod for pod in await self._list_pods()}
        for key, pod in pods.items():
            new = key not in self.processes and key not in self._finished
            if new and not (self.hold or key[1] in self.held):
                await self._start(key, pod)
        for key in set(self.processes) - set(pods):
            await self._stop(key)
        for key, proc in list(self.processes.items()):
            if proc.returncode is not None and key not in self._finished:
                self._finished.add(key)
                phase = "Succeeded" if proc.returncode == 0 else "Failed"
                await self._set_phase(key, phase)

    async def _list_pods(self) -> list[dict[str, Any]]:
        assert self._session is not None
        async with self._session.get(f"{self.api_url}/api/v1/pods") as response:
            response.raise_for_status()
            return (await response.json())["items"]

    async def _set_phase(self, key: tuple[str, str], phase: str) -> None:
        assert self._session is not None
        namespace, name = key
        url = f"{self.api_url}/api/v1/namespaces/{namespace}/pods/{name}/status"
        status = {"phase": phase, "startTime": datetime.now(timezone.utc).isoformat()}
        async with self._session.patch(
            url,
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            if response.status >= 400:
                logger.debug("kubelet: %s %s: HTTP %d", name, phase, response.status)

    async def _start(self, key: tuple[str, str], pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        env = {
            item["name"]: str(item.get("value", ""))
            for item in container.get("env") or []
        }
        proc = await asyncio.create_subprocess_exec(
            *command_line(container),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
            start_new_session=True,
        )
        self.processes[key] = proc
        self.started.append(key[1])
        self.output[key[1]] = lines = deque(maxlen=50)
        asyncio.ensure_future(_drain(proc, lines))
        await self._set_phase(key, "Running")

    async def _stop(self, key: tuple[str, str]) -> None:
        """Stop a Pod's process; it counts as running until it has exited."""
        proc = self.processes[key]
        if proc.returncode is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except asyncio.TimeoutError:
                _signal_group(proc, signal.SIGKILL)
                await proc.wait()
        self.processes.pop(key, None)
        self._finished.discard(key)


def command_line(container: dict[str, Any]) -> list[str]:
    """The container's ``command`` + ``args``, with ``dask worker`` run from here."""
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if argv[:2] == ["dask", "worker"]:
        return [sys.executable, "-m", "distributed.cli.dask_worker", *argv[2:]]
    return argv


def _key(pod: dict[str, Any]) -> tuple[str, str]:
    metadata = pod["metadata"]
    return metadata.get("namespace") or "default", metadata["name"]


def _signal_group(proc: asyncio.subprocess.Process, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


async def _drain(proc: asyncio.subprocess.Process, lines: deque[str]) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        lines.append(raw.decode(errors="replace").rstrip())
    await proc.wait()
