"""The command line as a user runs it: real ``dask scheduler`` processes with
the ``local`` backend's real ``dask worker`` processes, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from distributed import Client
from helpers import alive

from dask_adaptive_plugin.registry import BACKENDS, installed

SCHEDULER = [str(Path(sys.executable).parent / "dask"), "scheduler"]
DASK_SCHEDULER = [str(Path(sys.executable).parent / "dask-scheduler")]


def wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached within {timeout}s: {what}"
        time.sleep(0.1)


@contextmanager
def scheduler_process(
    tmp_path: Path, *args: str, command=SCHEDULER, env=None, port: int = 0
):
    """A ``dask scheduler --preload dask_adaptive_plugin`` process and its address."""
    scheduler_file = tmp_path / "scheduler.json"
    cmd = [*command, "--preload", "dask_adaptive_plugin", *args,
           "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0",
           "--scheduler-file", str(scheduler_file)]  # fmt: skip
    log = open(tmp_path / "scheduler.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: scheduler_file.exists() or proc.poll() is not None, 60)
        assert proc.poll() is None, (tmp_path / "scheduler.log").read_text()
        wait_for(lambda: scheduler_file.stat().st_size > 0)
        yield proc, json.loads(scheduler_file.read_text())["address"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        log.close()


def worker_pids(client: Client) -> set[int]:
    """The worker processes and their nannies."""
    pids = client.run(os.getpid).values()
    parents = client.run(os.getppid).values()
    return set(pids) | set(parents)


@pytest.mark.timeout(180)
def test_dask_scheduler_preload_scales_local_workers_up_and_down(tmp_path):
    with scheduler_process(
        tmp_path, "--adaptive-maximum", "2", "--adaptive-idle-timeout", "1s",
        "--adaptive-option", "nthreads=1", "--adaptive-option", "memory-limit=1GiB",
    ) as (proc, address):  # fmt: skip
        with Client(address, timeout=30) as client:
            assert client.scheduler_info()["workers"] == {}
            # builtins only: the worker processes cannot import this test module
            sleeps = client.map(time.sleep, [0.2] * 20, pure=False)
            futures = client.map(pow, range(20), [2] * 20)
            assert client.gather(futures) == [x * x for x in range(20)]
            client.gather(sleeps)
            workers = client.scheduler_info()["workers"].values()
            assert 1 <= len(workers) <= 2
            assert {w["memory_limit"] for w in workers} == {2**30}
            del futures, sleeps
            wait_for(lambda: not client.scheduler_info()["workers"], 60, "retired")
            events = [e for _, e in client.get_events("adaptive")]
            assert [e["status"] for e in events][0] == "up"
            assert "down" in [e["status"] for e in events]
            assert all(e["reason"] for e in events)


@pytest.mark.timeout(180)
def test_dask_scheduler_spelling_and_sigterm_leave_no_worker_behind(tmp_path):
    with scheduler_process(
        tmp_path, "--adaptive-minimum", "2", "--adaptive-maximum", "2",
        command=DASK_SCHEDULER,
    ) as (proc, address):  # fmt: skip
        with Client(address, timeout=30) as client:
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "2 workers")
            pids = worker_pids(client)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    wait_for(lambda: not any(alive(p) for p in pids), 30, f"workers {pids} exit")


@pytest.mark.timeout(180)
def test_a_sigkilled_scheduler_leaves_no_local_worker_behind(tmp_path):
    """The nannies run in the scheduler's process: its worker processes see
    their parent go and exit (distributed's parent-alive pipe)."""
    with scheduler_process(
        tmp_path, "--adaptive-minimum", "2", "--adaptive-maximum", "2"
    ) as (proc, address):
        with Client(address, timeout=30) as client:
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "2 workers")
            pids = set(client.run(os.getpid).values())
            assert set(client.run(os.getppid).values()) == {proc.pid}
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    wait_for(lambda: not any(alive(p) for p in pids), 30, f"workers {pids} exit")


@pytest.mark.timeout(120)
def test_a_third_party_backend_is_used_by_name(tmp_path):
    assert "inprocess" in installed(BACKENDS), "pip install -e docs/examples/dask-adaptive-inprocess"
    with scheduler_process(
        tmp_path, "--adaptive-backend", "inprocess", "--adaptive-minimum", "1",
        "--adaptive-maximum", "1",
    ) as (proc, address):  # fmt: skip
        with Client(address, timeout=30) as client:
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, 30, "a worker")
            [worker] = client.scheduler_info()["workers"].values()
            assert worker["name"].startswith("inprocess-")
            assert client.submit(pow, 3, 2).result() == 9


BAD_INPUT = [
    (["--adaptive-minimum", "3", "--adaptive-maximum", "2"],
     {}, r"minimum .*3 is above maximum .*2"),
    (["--adaptive-minimum", "-1"], {}, r"minimum .*-1.*whole number >= 0"),
    (["--adaptive-maximum", "lots"], {}, r"maximum .*'lots'.*whole number"),
    (["--adaptive-idle-timeout", "whenever"], {}, r"idle_timeout .*'whenever'.*duration"),
    (["--adaptive-backend", "nosuch"], {}, r"unknown backend 'nosuch'; installed backend names: .*local"),
    (["--adaptive-policy", "nosuch"], {}, r"unknown policy 'nosuch'; installed policy names: adaptive, fixed"),
    (["--adaptive-option", "nthreads"], {}, r"--adaptive-option 'nthreads'; expected KEY=VALUE"),
    (["--adaptive-option", "nthreads=many"], {}, r"nthreads .*'many'.*whole number >= 1"),
    (["--adaptive-option", "colour=blue"], {}, r"\['colour'\]; it takes nthreads"),
    (["--adaptive-policy-option", "target-duration=never"], {}, r"target_duration .*'never'"),
    ([], {"DASK_ADAPTIVE_PLUGIN__MAXIMUM": "eight"}, r"maximum .*'eight'"),
    ([], {"DASK_ADAPTIVE_PLUGIN__BACKEND_OPTIONS": '{"memory-limit": "huge"}'},
     r"memory_limit .*'huge'"),
]  # fmt: skip


@pytest.mark.parametrize("args, env, message", BAD_INPUT)
def test_bad_input_stops_the_scheduler_at_start_up(tmp_path, args, env, message):
    cmd = [*SCHEDULER, "--preload", "dask_adaptive_plugin", *args, "--port", "0",
           "--dashboard-address", ":0"]  # fmt: skip
    proc = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert pytest.importorskip("re").search(message, last), last
    assert "Scheduler at" not in proc.stderr


def test_a_bad_config_file_stops_the_scheduler(tmp_path):
    (tmp_path / "adaptive.yaml").write_text("adaptive-plugin:\n  idle-timeout: later\n")
    env = {**os.environ, "DASK_CONFIG": str(tmp_path)}
    proc = subprocess.run(
        [*SCHEDULER, "--preload", "dask_adaptive_plugin", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "idle_timeout" in proc.stderr.splitlines()[-1]
    assert "'later'" in proc.stderr.splitlines()[-1]
