"""The ``ssh`` backend, against a real sshd on loopback.

``.ci/live/start-sshd.sh`` starts the server (127.0.0.1:2222, key-only) and
writes the ``DASK_ADAPTIVE_SSH_*`` variables read here; without them the
defaults of that script are used. The "remote" workers then run on this
machine, so the tests can check with ``pgrep`` that a stopped worker's
processes are really gone. Tests marked ``ssh`` need the server; the others
check quoting and options and run anywhere.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

asyncssh = pytest.importorskip("asyncssh")

from conftest import require_live
from distributed import Client, Scheduler
from distributed.utils_test import gen_test
from helpers import alive

from dask_adaptive_plugin import AdaptivePlugin
from dask_adaptive_plugin.backends.ssh import PID_MARKER, SSHBackend, place_workers

#: A worker name that would run ``touch`` if any shell read it unquoted.
HOSTILE = 'w\'; touch {m}; "$(touch {m})" `touch {m}` $HOME | & > <{m} #'


# -- the live server -----------------------------------------------------------------


@dataclass(frozen=True)
class LiveSSH:
    """Where the test sshd listens and how to log in to it."""

    host: str
    port: int
    client_key: str
    known_hosts: str

    def options(self, **extra: Any) -> dict[str, Any]:
        """Backend options that log in to this server."""
        return {
            "hosts": self.host,
            "port": self.port,
            "client_keys": self.client_key,
            "known_hosts": self.known_hosts,
            "death_timeout": "20s",
            **extra,
        }


def live_ssh_from_environment() -> LiveSSH:
    """The server described by ``.ci/live/env-ssh.sh``, or the script's defaults."""
    default_dir = os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "dask-adaptive-live", "ssh"
    )
    directory = os.environ.get("DASK_ADAPTIVE_SSH_DIR", default_dir)
    return LiveSSH(
        host=os.environ.get("DASK_ADAPTIVE_SSH_HOST", "127.0.0.1"),
        port=int(os.environ.get("DASK_ADAPTIVE_SSH_PORT", "2222")),
        client_key=os.environ.get(
            "DASK_ADAPTIVE_SSH_KEY", os.path.join(directory, "client_key")
        ),
        known_hosts=os.environ.get(
            "DASK_ADAPTIVE_SSH_KNOWN_HOSTS", os.path.join(directory, "known_hosts")
        ),
    )


async def log_in_and_run_true(live: LiveSSH) -> None:
    async with asyncssh.connect(
        live.host,
        port=live.port,
        client_keys=[live.client_key],
        known_hosts=live.known_hosts,
        connect_timeout=5,
    ) as connection:
        await connection.run("true", check=True, timeout=10)


def why_sshd_is_unusable(live: LiveSSH) -> str:
    """Empty if a real login with the client key works, else why not."""
    for path in (live.client_key, live.known_hosts):
        if not os.path.isfile(path):
            return f"{path} does not exist; run .ci/live/start-sshd.sh"
    try:
        asyncio.run(log_in_and_run_true(live))
    except (OSError, asyncssh.Error) as e:
        return f"cannot log in to {live.host}:{live.port}: {e!r}"
    return ""


@pytest.fixture(scope="session")
def sshd() -> LiveSSH:
    """The running test sshd; skips (fails in CI) if there is none."""
    live = live_ssh_from_environment()
    why = why_sshd_is_unusable(live)
    require_live("sshd", not why, why)
    return live


# -- remote processes, seen from this machine ------------------------------------------------


def pgrep(pattern: str) -> list[int]:
    """PIDs of processes whose command line matches ``pattern`` (``pgrep -f``)."""
    found = subprocess.run(
        ["pgrep", "-f", "--", pattern], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


def process_tree(pids: list[int]) -> set[int]:
    """These processes and all their descendants (``pgrep -P``)."""
    tree, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += pgrep_children(pid)
    return tree


def pgrep_children(pid: int) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in found.stdout.split()]


def worker_processes(name: str) -> set[int]:
    """The ``dask worker`` started with this (simple) name, and its children."""
    return process_tree(pgrep(f"dask_worker .*--name {name}( |$)"))


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: Callable[[], str] | str
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            message = what() if callable(what) else what
            pytest.fail(f"not within {timeout:g}s: {message}")
        await asyncio.sleep(0.1)


async def wait_until_gone(pids: set[int], timeout: float = 15) -> None:
    await wait_until(
        lambda: not any(alive(p) for p in pids),
        timeout,
        lambda: f"processes still running: {sorted(p for p in pids if alive(p))}",
    )


def local_scheduler() -> Scheduler:
    return Scheduler(host="127.0.0.1", port=0, dashboard_address=":0")


# -- quoting and options: no server needed -----------------------------------------------------


def write_argv_printer(directory: Any) -> str:
    """An executable that prints its arguments as JSON, standing in for Python."""
    path = os.path.join(str(directory), "print-argv")
    with open(path, "w") as f:
        f.write(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
            "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n"
        )
    os.chmod(path, 0o755)
    return path


@gen_test(timeout=30)
async def test_remote_command_quotes_every_argument(tmp_path: Any) -> None:
    marker = tmp_path / "the-shell-ran-this"
    name = HOSTILE.format(m=marker)
    printer = write_argv_printer(tmp_path)
    async with local_scheduler() as scheduler:
        backend = SSHBackend(
            scheduler,
            hosts="node1",
            python=printer,
            worker_args=["--resources", "GPU=1; touch " + str(marker)],
        )
        command = backend.command(name, {"memory": 8e9})
        argv = backend.worker_argv(name, {"memory": 8e9})

    shell = await asyncio.create_subprocess_exec(
        "sh", "-c", command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await shell.communicate()
    assert shell.returncode == 0, stderr.decode()
    pid_line, printed = stdout.decode().splitlines()
    assert pid_line.removeprefix(PID_MARKER).isdigit()
    assert json.loads(printed) == argv[1:]
    assert argv[argv.index("--name") + 1] == name
    assert argv[-1] == "GPU=1; touch " + str(marker)
    assert not marker.exists()


@pytest.mark.parametrize(
    "options, option",
    [
        ({}, "hosts"),
        ({"hosts": ""}, "hosts"),
        ({"hosts": "a,,b"}, "hosts"),
        ({"hosts": "a,a"}, "hosts"),
        ({"hosts": ["a b"]}, "hosts"),
        ({"hosts": "a", "port": 0}, "port"),
        ({"hosts": "a", "port": "ssh"}, "port"),
        ({"hosts": "a", "port": 70000}, "port"),
        ({"hosts": "a", "username": ""}, "username"),
        ({"hosts": "a", "client_keys": "/no/such/key"}, "client_keys"),
        ({"hosts": "a", "client_keys": []}, "client_keys"),
        ({"hosts": "a", "known_hosts": "/no/such/file"}, "known_hosts"),
        ({"hosts": "a", "known_hosts": False}, "known_hosts"),
        ({"hosts": "a", "workers_per_host": 0}, "workers_per_host"),
        ({"hosts": "a", "workers_per_host": 1.5}, "workers_per_host"),
        ({"hosts": "a", "nthreads": "two"}, "nthreads"),
        ({"hosts": "a", "memory_limit": "lots"}, "memory_limit"),
        ({"hosts": "a", "python": ""}, "python"),
        ({"hosts": "a", "worker_args": 3}, "worker_args"),
        ({"hosts": "a", "death_timeout": "soon"}, "death_timeout"),
        ({"hosts": "a", "connect_timeout": 0}, "connect_timeout"),
        ({"hosts": "a", "connect_options": "port=22"}, "connect_options"),
        ({"hosts": "a", "connect_options": {"no_such_option": 1}}, "connect_options"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], option: str) -> None:
    kebab = option.replace("_", "-")
    with pytest.raises(ValueError, match=rf"backend option {option} .*{kebab}=") as e:
        SSHBackend(None, **options)  # type: ignore[arg-type]
    assert "expected" in str(e.value)


def test_connect_options_errors_name_keys_not_values() -> None:
    """A password among the connect options never shows in an error."""
    with pytest.raises(ValueError, match=r"connect_options .*'bogus', 'password'") as e:
        SSHBackend(None, hosts="a", connect_options={"password": "s3cret", "bogus": 1})  # type: ignore[arg-type]
    assert "s3cret" not in str(e.value)


def test_an_unknown_option_lists_the_options() -> None:
    with pytest.raises(ValueError, match="SSHBackend.*hostname.*takes hosts, port"):
        AdaptivePlugin(backend="ssh", backend_options={"hostname": "a"})


def test_maximum_and_placement_follow_hosts_and_workers_per_host() -> None:
    backend = SSHBackend(None, hosts="a, b ,c", workers_per_host=2)  # type: ignore[arg-type]
    assert backend.hosts == ["a", "b", "c"]
    assert backend.maximum == 6
    assert place_workers({"a": 2, "b": 1, "c": 0}, 2, 5) == ["c", "b", "c"]
    assert place_workers({"a": 0, "b": 0}, 1, 2, exclude={"a"}) == ["b"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@gen_test(timeout=30)
async def test_an_unreachable_host_is_named_with_port_and_user(tmp_path: Any) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = tmp_path / "key"
    key.write_private_key(str(key_path))
    port = closed_port()
    async with local_scheduler() as scheduler:
        backend = SSHBackend(
            scheduler,
            hosts="127.0.0.1",
            port=port,
            username="alice",
            client_keys=str(key_path),
            known_hosts=None,
        )
        with pytest.raises(
            ConnectionError, match=f"127.0.0.1 port {port} as alice"
        ) as e:
            await backend.scale_up(1)
        await backend.close()
    assert backend.workers == {}
    secret = key.export_private_key().decode()
    assert secret.splitlines()[1] not in str(e.value)


# -- against the live sshd ------------------------------------------------------------------------


@pytest.mark.ssh
@gen_test(timeout=60)
async def test_workers_spread_over_hosts_and_really_stop(sshd: LiveSSH) -> None:
    async with local_scheduler() as scheduler:
        # Two names for the one loopback server: two hosts, two connections.
        backend = SSHBackend(
            scheduler, **sshd.options(hosts=["127.0.0.1", "localhost"])
        )
        try:
            await backend.scale_up(2)
            await wait_until(lambda: len(scheduler.workers) == 2, 30, "two workers")
            assert sorted(w.host for w in backend.workers.values()) == [
                "127.0.0.1",
                "localhost",
            ]
            by_name = {ws.name: address for address, ws in scheduler.workers.items()}
            assert set(by_name) == set(backend.workers)
            processes = {name: worker_processes(name) for name in by_name}
            assert all(len(pids) >= 2 for pids in processes.values()), processes

            connections = dict(backend.connections)
            await backend.scale_up(2)
            await backend.scale_up(5)  # capped at the maximum, 2
            assert len(backend.workers) == 2
            assert backend.connections == connections

            for name, worker in backend.workers.items():
                assert worker.pid in processes[name]

            first, second = sorted(by_name)
            stopping = backend.workers[first]
            await backend.scale_down([by_name[first]])
            await wait_until_gone(processes[first])
            # Stopped cleanly by `kill -TERM`, not by hanging up its terminal.
            assert any("SIGTERM" in line for line in stopping.output), stopping.output
            assert pgrep(first) == []
            assert all(alive(pid) for pid in processes[second])
            assert list(backend.workers) == [second]
        finally:
            await backend.close()
        await wait_until_gone(processes[second])
        assert all(c.is_closed() for c in connections.values())
        assert backend.connections == {}


@pytest.mark.ssh
@gen_test(timeout=60)
async def test_a_hostile_worker_name_reaches_the_worker_unchanged(
    sshd: LiveSSH, tmp_path: Any
) -> None:
    marker = tmp_path / "the-remote-shell-ran-this"
    tag = f"hostile-{uuid.uuid4().hex[:8]}"
    name = tag + HOSTILE.format(m=marker)
    async with local_scheduler() as scheduler:
        backend = SSHBackend(scheduler, **sshd.options())
        backend._names = itertools.repeat(name)
        try:
            await backend.scale_up(1)
            await wait_until(lambda: len(scheduler.workers) == 1, 30, "the worker")
            (ws,) = scheduler.workers.values()
            assert ws.name == name
            pids = process_tree(pgrep(tag))
            assert pids
        finally:
            await backend.close()
    await wait_until_gone(pids)
    assert not marker.exists()


@pytest.mark.ssh
@gen_test(timeout=60)
async def test_connect_options_reach_asyncssh(sshd: LiveSSH) -> None:
    """Keys, known hosts and timeout come from ``connect_options``; a backend
    option that is given (``port``) wins over theirs."""
    options = {"port": sshd.port, "client_keys": [sshd.client_key],
               "known-hosts": sshd.known_hosts, "connect_timeout": 5}  # fmt: skip
    async with local_scheduler() as scheduler:
        backend = SSHBackend(
            scheduler,
            hosts=sshd.host,
            connect_options={**options, "port": 1},
            port=sshd.port,
        )
        assert backend.options.connect_timeout == 5
        try:
            await backend.scale_up(1)
            await wait_until(lambda: len(scheduler.workers) == 1, 30, "the worker")
        finally:
            await backend.close()


@pytest.mark.ssh
@gen_test(timeout=60)
async def test_workers_die_with_their_connection(sshd: LiveSSH) -> None:
    """A scheduler that loses its connection leaves no worker behind (SIGHUP)."""
    async with local_scheduler() as scheduler:
        backend = SSHBackend(scheduler, **sshd.options())
        try:
            await backend.scale_up(1)
            await wait_until(lambda: len(scheduler.workers) == 1, 30, "the worker")
            (name,) = backend.workers
            pids = worker_processes(name)
            assert pids
            for connection in backend.connections.values():
                connection.abort()
            await wait_until_gone(pids)
        finally:
            await backend.close()


@pytest.mark.ssh
@gen_test(timeout=60)
async def test_closing_while_workers_start_leaves_nothing_behind(sshd: LiveSSH) -> None:
    async with local_scheduler() as scheduler:
        backend = SSHBackend(scheduler, **sshd.options(workers_per_host=2))
        await backend.scale_up(2)
        names = list(backend.workers)
        await backend.close()
        # A surviving worker would start and connect within a start-up here
        # (about a second, see test_workers_spread_over_hosts_and_really_stop):
        # wait three.
        await asyncio.sleep(3)
        assert [pgrep(name) for name in names] == [[], []]
        assert not scheduler.workers


@pytest.mark.ssh
@gen_test(timeout=30)
async def test_an_unknown_host_key_is_refused(sshd: LiveSSH, tmp_path: Any) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sshd.host}]:{sshd.port} {other}")
    async with local_scheduler() as scheduler:
        backend = SSHBackend(scheduler, **sshd.options(known_hosts=str(known_hosts)))
        with pytest.raises(
            ConnectionError, match=f"{sshd.host} port {sshd.port}.*known_hosts"
        ):
            await backend.scale_up(1)
        await backend.close()
    assert backend.workers == {}


@pytest.mark.ssh
@gen_test(timeout=60)
async def test_plugin_scales_over_ssh_and_leaves_nothing_behind(sshd: LiveSSH) -> None:
    plugin = AdaptivePlugin(
        backend="ssh",
        minimum=0,
        maximum=2,
        idle_timeout="2s",
        target_duration="1s",
        backend_options=sshd.options(known_hosts=None, workers_per_host=2),
    )
    seen: dict[str, set[int]] = {}

    def note_worker_processes() -> bool:
        for ws in scheduler.workers.values():
            if ws.name not in seen:
                seen[ws.name] = worker_processes(ws.name)
        return len(seen) == 2

    async with local_scheduler() as scheduler:
        scheduler.add_plugin(plugin)
        async with Client(scheduler.address, asynchronous=True) as client:
            sleeps = client.map(time.sleep, [0.2] * 20, pure=False)
            squares = client.map(pow, range(10), [2] * 10)
            await wait_until(note_worker_processes, 40, lambda: f"two workers; {seen}")
            assert await client.gather(squares) == [i**2 for i in range(10)]
            await client.gather(sleeps)
            assert all(name.startswith("ssh-") for name in seen)
            assert all(len(pids) >= 2 for pids in seen.values()), seen
            del sleeps, squares

            # Idle for 2 s: retired, and their remote processes end.
            await wait_until(lambda: not scheduler.workers, 20, "workers retired")
            await wait_until_gone(set().union(*seen.values()))
            retired = [e for _, e in plugin.log if e["status"] == "down"]
            assert sum(len(e["workers"]) for e in retired) == 2

            # Busy again; then the scheduler closes with a worker running.
            again = client.submit(pow, 3, 2)
            assert await again == 9
            (name,) = [ws.name for ws in scheduler.workers.values()]
            running = worker_processes(name)
            assert running
    await wait_until_gone(running)
    assert plugin.backend is not None
    assert plugin.backend.workers == {}
    assert plugin.backend.connections == {}
