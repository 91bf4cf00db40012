"""The ``ssh`` backend: ``dask worker`` processes started over SSH on a list of hosts."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dask_adaptive_plugin.backend import RUNNING, Backend
from dask_adaptive_plugin.backends.workers import (
    WorkerOptions,
    parse_text,
    parse_whole,
    python_worker,
    worker_names,
)
from dask_adaptive_plugin.config import invalid, parse_duration

try:
    import asyncssh
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the ssh backend needs asyncssh: pip install 'dask-adaptive-plugin[ssh]'"
    ) from e

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger(__name__)

#: Seconds a worker gets to close after SIGTERM before its process group is killed.
STOP_GRACE = 10.0

#: Printed with the remote shell's PID before it becomes the worker, so that
#: the PID is found even after lines a login script may print.
PID_MARKER = "dask-adaptive-ssh-pid="

#: What connecting to a host may raise, besides asyncssh's own errors.
CONNECT_ERRORS = (
    OSError,
    asyncio.TimeoutError,  # not an OSError before Python 3.11
    asyncssh.Error,
    asyncssh.KeyImportError,
    asyncssh.KeyEncryptionError,
)


@dataclass
class RemoteWorker:
    """One ``dask worker`` process running in a terminal on a remote host."""

    name: str
    host: str
    process: asyncssh.SSHClientProcess
    #: The remote shell's PID (``echo ...$$``), which ``exec`` hands to the worker;
    #: it leads the worker's process group.
    pid: int | None = None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    drained: asyncio.Future[None] | None = None
    stopping: bool = False

    @property
    def running(self) -> bool:
        """Whether the SSH channel to the process is still open."""
        return self.drained is not None and not self.drained.done()


class SSHBackend(Backend):
    """Start and stop ``dask worker`` processes on remote hosts over SSH.

    Parameters
    ----------
    scheduler
        The scheduler the workers connect to; its address must be reachable
        from every host.
    hosts
        The hosts, as a list or one comma-separated string (``"node1,node2"``).
        Each host is listed once; ``workers_per_host`` sets how many workers it
        runs.
    port
        The SSH port of every host (default: asyncssh's, 22 or the ``Port`` of
        ``~/.ssh/config``).
    username
        The remote user (default: asyncssh's default, your local user name or
        the ``User`` of ``~/.ssh/config``).
    client_keys
        Path, or list of paths, of private keys to log in with (default: the
        SSH agent and ``~/.ssh/id_*``). Only paths are ever shown in messages.
    known_hosts
        Path, or list of paths, of ``known_hosts`` files to check the hosts'
        keys against (default: ``~/.ssh/known_hosts``). ``None`` disables host
        key checking, which lets anyone on the network impersonate a host:
        use it only on trusted networks such as loopback in tests.
    connect_options
        Further keyword arguments of :func:`asyncssh.connect` for every host
        (``{"passphrase": ..., "agent_path": ...}``), as ``connect_options``
        of distributed's ``SSHCluster``; the options above win over them.
    workers_per_host
        Workers each host runs at most (default 1); the backend's maximum is
        ``len(hosts) * workers_per_host``.
    nthreads
        Threads per worker (default 1).
    memory_limit
        Memory limit per worker: bytes, a string like ``"2GiB"``, or ``"auto"``
        (the remote machine's memory shared by its CPU count).
    python
        The Python executable on the hosts (default: this process's
        ``sys.executable``), one path; use a wrapper script to activate an
        environment.
    worker_args
        Further ``dask worker`` arguments, as a list or one string
        (``"--no-nanny --resources GPU=1"``).
    death_timeout
        A worker that loses its scheduler for this long exits by itself.
    connect_timeout
        How long connecting to one host may take (default: that of
        ``connect_options``, else ``"10s"``).

    Notes
    -----
    New workers go to the least-loaded hosts first, and are named
    ``ssh-<id>-<n>``; one SSH connection per host is kept open and reused.
    Each worker runs in a terminal of its own, started as ``echo ...$$; exec
    python -m distributed.cli.dask_worker ...`` (every argument quoted) so that
    the backend learns its PID: it is stopped by ``kill -TERM PID`` over a
    second channel (OpenSSH ignores SSH signal requests from root), and if the
    connection drops, the terminal hangs up and the worker gets SIGHUP.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        hosts: Any = None,
        port: Any = None,
        username: Any = None,
        client_keys: Any = None,
        known_hosts: Any = (),
        workers_per_host: Any = 1,
        nthreads: Any = 1,
        memory_limit: Any = "auto",
        python: Any = sys.executable,
        worker_args: Any = (),
        death_timeout: Any = "60s",
        connect_timeout: Any = None,
        connect_options: Any = None,
    ) -> None:
        self.scheduler = scheduler
        self.hosts = _parse_hosts(hosts)
        self.username = parse_text(
            "username", username, "a user name without spaces", one_word=True
        )
        given = _given_connect_options(
            port, self.username, client_keys, known_hosts, connect_timeout
        )
        self.options = _connection_options(connect_options, given)
        self.workers_per_host = parse_whole("workers_per_host", workers_per_host)
        self.maximum = len(self.hosts) * self.workers_per_host
        self.worker = WorkerOptions.parse(
            nthreads, memory_limit, worker_args, death_timeout
        )
        self.threads_per_worker = self.worker.nthreads
        self.python = parse_text(
            "python", python, "the path of the Python executable on the hosts",
            optional=False,
        )  # fmt: skip
        self.workers: dict[str, RemoteWorker] = {}
        self.connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._names = worker_names("ssh")

    # -- the backend interface -------------------------------------------------------

    async def scale_up(self, n: int, **resources: Any) -> None:
        """Start workers until ``n`` are running or starting (at most :attr:`maximum`).

        Raises
        ------
        ConnectionError
            naming each host that could not be reached (user, host and port);
            workers are still started on the other hosts.
        """
        self._forget_exited()
        missing = min(n, self.maximum) - len(self.workers)
        if missing > 0:
            await self._start_workers(missing, resources)

    async def scale_down(self, workers: list[str]) -> None:
        """Stop the remote processes behind these worker addresses."""
        names = self.names(workers)
        stopping = [self.workers.pop(name) for name in names if name in self.workers]
        await asyncio.gather(*(self._stop(worker) for worker in stopping))

    def report(self) -> dict[str, str]:
        """The remote workers whose channel is still open."""
        self._forget_exited()
        return dict.fromkeys(self.workers, RUNNING)

    async def close(self) -> None:
        """Stop every worker, then close the connections."""
        stopping, self.workers = list(self.workers.values()), {}
        await asyncio.gather(*(self._stop(worker) for worker in stopping))
        connections, self.connections = list(self.connections.values()), {}
        for connection in connections:
            connection.close()
        await asyncio.gather(*(c.wait_closed() for c in connections))

    # -- the remote command ------------------------------------------------------------

    def worker_argv(self, name: str, resources: dict[str, Any]) -> list[str]:
        """The ``dask worker`` command line for one worker, as a list."""
        program = python_worker(self.python)  # type: ignore[arg-type]
        return self.worker.command(program, self.scheduler.address, name, resources)

    def command(self, name: str, resources: dict[str, Any]) -> str:
        """The remote shell command: print the shell's PID, then become the worker.

        ``exec`` keeps that PID, so it names the worker's process group;
        :func:`shlex.join` quotes every argument for the remote shell.
        """
        argv = shlex.join(self.worker_argv(name, resources))
        return f"echo {PID_MARKER}$$; exec {argv}"

    # -- starting ------------------------------------------------------------------------

    async def _start_workers(self, count: int, resources: dict[str, Any]) -> None:
        """Start ``count`` workers on the least-loaded hosts that can be reached."""
        unreachable: dict[str, Exception] = {}
        while count > 0:
            placement = place_workers(
                self._load(), self.workers_per_host, count, exclude=unreachable
            )
            if not placement:
                break
            unreachable.update(await self._connect(set(placement)))
            ready = [host for host in placement if host not in unreachable]
            await asyncio.gather(*(self._start_worker(h, resources) for h in ready))
            count -= len(ready)
        if unreachable:
            raise ConnectionError(
                "ssh backend: " + "; ".join(str(e) for e in unreachable.values())
            )

    def _load(self) -> dict[str, int]:
        """Workers running or starting on each host."""
        load = dict.fromkeys(self.hosts, 0)
        for worker in self.workers.values():
            load[worker.host] += 1
        return load

    async def _start_worker(self, host: str, resources: dict[str, Any]) -> None:
        name = next(self._names)
        try:
            process = await self.connections[host].create_process(
                self.command(name, resources),
                term_type="dumb",
                stderr=asyncssh.STDOUT,
                encoding="utf-8",
                errors="replace",
            )
        except CONNECT_ERRORS as e:
            raise RuntimeError(
                f"ssh backend: could not start worker {name} on {self._where(host)}: "
                f"{_reason(e)}"
            ) from e
        worker = RemoteWorker(name, host, process)
        worker.drained = asyncio.ensure_future(self._drain(worker))
        self.workers[name] = worker
        logger.debug("ssh backend: started %s on %s", name, host)

    async def _drain(self, worker: RemoteWorker) -> None:
        """Read the worker's terminal: its PID first, then its last lines.

        Reading also keeps the channel's window open, so that a worker that
        logs a lot never blocks on its terminal.
        """
        try:
            async for line in worker.process.stdout:
                self._keep_output(worker, line.rstrip())
            await worker.process.wait_closed()
        except CONNECT_ERRORS as e:
            worker.output.append(f"(connection lost: {_reason(e)})")
        status = worker.process.returncode
        if not worker.stopping and status != 0:
            logger.warning(
                "ssh backend: worker %s on %s exited with %s:\n%s",
                worker.name,
                worker.host,
                status,
                "\n".join(worker.output),
            )

    @staticmethod
    def _keep_output(worker: RemoteWorker, line: str) -> None:
        pid = line.removeprefix(PID_MARKER)
        if worker.pid is None and pid != line and pid.isdigit():
            worker.pid = int(pid)
            return
        worker.output.append(line)
        logger.debug("%s: %s", worker.name, line)

    def _forget_exited(self) -> None:
        for name, worker in list(self.workers.items()):
            if not worker.running:
                del self.workers[name]

    # -- stopping -------------------------------------------------------------------------

    async def _stop(self, worker: RemoteWorker) -> None:
        """SIGTERM; after ``STOP_GRACE``, SIGKILL its process group; then hang up.

        A worker whose PID is not known yet (it is still starting) is stopped
        by hanging up its terminal alone, which sends it SIGHUP.
        """
        worker.stopping = True
        if not worker.running:
            return
        if await self._signal(worker, "TERM"):
            if await _finished(worker, STOP_GRACE):
                return
            logger.warning(
                "ssh backend: worker %s on %s still runs %gs after SIGTERM; killing it",
                worker.name,
                worker.host,
                STOP_GRACE,
            )
            await self._signal(worker, "KILL", process_group=True)
        worker.process.close()
        await _finished(worker, STOP_GRACE)

    async def _signal(
        self, worker: RemoteWorker, signal: str, process_group: bool = False
    ) -> bool:
        """Send a signal with ``kill`` over a channel of its own; whether it went.

        SSH's own signal requests are ignored by OpenSSH for root, ``kill`` is not.
        """
        connection = self.connections.get(worker.host)
        if worker.pid is None or connection is None or connection.is_closed():
            return False
        target = f"-{worker.pid}" if process_group else str(worker.pid)
        try:
            result = await connection.run(
                f"kill -{signal} -- {target}", check=False, timeout=STOP_GRACE
            )
        except CONNECT_ERRORS as e:
            logger.warning(
                "ssh backend: could not signal %s: %s", worker.name, _reason(e)
            )
            return False
        return result.exit_status == 0

    # -- connections ------------------------------------------------------------------------

    async def _connect(self, hosts: set[str]) -> dict[str, Exception]:
        """Connect to these hosts at once; the errors of those that failed."""
        ordered = sorted(hosts)
        results = await asyncio.gather(
            *(self._connection(host) for host in ordered), return_exceptions=True
        )
        return {
            host: result
            for host, result in zip(ordered, results)
            if isinstance(result, Exception)
        }

    async def _connection(self, host: str) -> asyncssh.SSHClientConnection:
        """The open connection to ``host``, connecting if there is none."""
        connection = self.connections.get(host)
        if connection is not None and not connection.is_closed():
            return connection
        try:
            connection = await asyncssh.connect(host, options=self.options)
        except CONNECT_ERRORS as e:
            raise ConnectionError(
                f"cannot connect to {self._where(host)}: {_reason(e)}"
            ) from e
        self.connections[host] = connection
        return connection

    def _where(self, host: str) -> str:
        user = self.username or "the default user"
        return f"{host} port {self.options.port} as {user}"


# -- placement -----------------------------------------------------------------------------


def place_workers(
    load: dict[str, int],
    per_host: int,
    count: int,
    exclude: Any = (),
) -> list[str]:
    """The hosts for ``count`` new workers, least-loaded first.

    Ties go to the host listed first. Hosts that are full (``per_host``) or in
    ``exclude`` get none, so the result may be shorter than ``count``.

    Examples
    --------
    >>> place_workers({"a": 1, "b": 0, "c": 0}, per_host=2, count=4)
    ['b', 'c', 'a', 'b']
    """
    load = {host: n for host, n in load.items() if host not in exclude}
    placement = []
    for _ in range(count):
        free = [host for host, n in load.items() if n < per_host]
        if not free:
            break
        host = min(free, key=load.__getitem__)
        load[host] += 1
        placement.append(host)
    return placement


# -- small helpers -----------------------------------------------------------------------------


async def _finished(worker: RemoteWorker, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the worker's channel to close."""
    assert worker.drained is not None
    try:
        await asyncio.wait_for(asyncio.shield(worker.drained), timeout)
    except asyncio.TimeoutError:  # noqa: UP041 - not TimeoutError before 3.11
        return False
    return True


def _reason(error: BaseException) -> str:
    """A short, key-free description of an SSH error, with a hint where one helps."""
    if isinstance(error, asyncssh.HostKeyNotVerifiable):
        return (
            f"the host key is not in known_hosts ({error.reason}); add it, for "
            f"example with ssh-keyscan, or set known_hosts=None to skip the check"
        )
    if isinstance(error, asyncssh.PermissionDenied):
        return f"permission denied ({error.reason}); check username and client_keys"
    if isinstance(error, asyncssh.ChannelOpenError):
        return (
            f"the host refused another session ({error.reason}); each worker "
            f"holds one, and OpenSSH allows MaxSessions (default 10) per connection"
        )
    if isinstance(error, asyncssh.Error):
        return error.reason
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


# -- option parsing -----------------------------------------------------------------------------


def _parse_hosts(value: Any) -> list[str]:
    accepted = "one or more host names, as a list or comma-separated, each once"
    if isinstance(value, str):
        hosts = [h.strip() for h in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(h, str) for h in value):
        hosts = [h.strip() for h in value]
    else:
        raise invalid("hosts", value, accepted, backend_option=True)
    if not hosts or any(not h or h.split() != [h] for h in hosts):
        raise invalid("hosts", value, accepted, backend_option=True)
    if len(set(hosts)) != len(hosts):
        raise invalid(
            "hosts",
            value,
            accepted + " (use workers_per_host for more workers on a host)",
            backend_option=True,
        )
    return hosts


def _parse_paths(
    name: str, value: Any, what: str, alternative: str = ""
) -> list[str] | None:
    """``None``, or one or more paths of existing files (``~`` expanded)."""
    if value is None:
        return None
    paths = [value] if isinstance(value, str) else value
    accepted = f"the path of a {what} file or a list of such paths{alternative}"
    if not isinstance(paths, (list, tuple)) or not paths:
        raise invalid(name, value, accepted, backend_option=True)
    for path in paths:
        if not isinstance(path, str) or not os.path.isfile(os.path.expanduser(path)):
            raise invalid(
                name, value, f"{accepted} ({path!r} is not a file)", backend_option=True
            )
    return [os.path.expanduser(path) for path in paths]


def _given_connect_options(
    port: Any,
    username: str | None,
    client_keys: Any,
    known_hosts: Any,
    connect_timeout: Any,
) -> dict[str, Any]:
    """The asyncssh options among the backend options, checked; those not
    given (``None``; ``()`` for ``known_hosts``) are left out."""
    given: dict[str, Any] = {}
    if port is not None:
        given["port"] = parse_whole("port", port, high=65535)
    if username is not None:
        given["username"] = username
    if client_keys is not None:
        given["client_keys"] = _parse_paths("client_keys", client_keys, "private key")
    if known_hosts != ():  # None: no host key checking
        given["known_hosts"] = _parse_paths(
            "known_hosts",
            known_hosts,
            "known_hosts",
            ", or None to disable host key checking",
        )
    if connect_timeout is not None:
        given["connect_timeout"] = parse_duration(
            "connect_timeout", connect_timeout, positive=True, backend_option=True
        )
    return given


def _connection_options(
    connect_options: Any, given: dict[str, Any]
) -> asyncssh.SSHClientConnectionOptions:
    """asyncssh's options for every host: ``connect_options`` (with a
    ``connect_timeout`` of 10 s), then the backend options ``given`` over them.

    Messages name the keys of ``connect_options``, never its values (a
    ``password`` or ``passphrase`` may be among them).
    """
    if connect_options is None:
        connect_options = {}
    if not isinstance(connect_options, Mapping) or not all(
        isinstance(key, str) for key in connect_options
    ):
        raise invalid(
            "connect_options", connect_options,
            "a mapping of asyncssh.connect keyword arguments", backend_option=True,
        )  # fmt: skip
    extra = {key.replace("-", "_"): v for key, v in connect_options.items()}
    try:
        base = asyncssh.SSHClientConnectionOptions(**{"connect_timeout": 10, **extra})
    except (TypeError, ValueError, *CONNECT_ERRORS) as e:
        raise invalid(
            "connect_options", sorted(extra),
            f"keyword arguments of asyncssh.connect ({_reason(e)})",
            backend_option=True,
        ) from None  # fmt: skip
    try:
        return asyncssh.SSHClientConnectionOptions(base, **given)
    except (ValueError, *CONNECT_ERRORS) as e:  # a key file asyncssh cannot read
        raise invalid(
            "client_keys", given.get("client_keys"),
            f"private keys asyncssh can read ({_reason(e)})", backend_option=True,
        ) from None  # fmt: skip
