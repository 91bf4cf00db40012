"""``dask adaptive status`` and ``dask adaptive log`` as a user runs them: the
``dask`` command in a subprocess, against real ``dask scheduler --preload
dask_adaptive_plugin`` processes whose ``local`` backend starts real ``dask
worker`` processes; and the status function on its own, on in-process
schedulers."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from distributed import Client, Scheduler
from distributed.utils_test import gen_test, inc, slowinc
from helpers import events, free_port, until
from inprocess import InProcessBackend
from test_cli import SCHEDULER, scheduler_process, wait_for

from dask_adaptive_plugin import AdaptivePlugin
from dask_adaptive_plugin.commands import format_status, log_row
from dask_adaptive_plugin.status import (
    has_plugin,
    log_on_scheduler,
    on_scheduler,
    status,
)

DASK_ADAPTIVE = [str(Path(sys.executable).parent / "dask"), "adaptive"]
LOCAL_OPTIONS = (
    "--adaptive-option", "nthreads=1", "--adaptive-option", "memory-limit=1GiB",
)  # fmt: skip


def dask_adaptive(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``dask adaptive ARGS`` and return what it printed and its exit code."""
    return subprocess.run(
        [*DASK_ADAPTIVE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def columns(line: str) -> list[str]:
    """The cells of a table line (cells are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def table_rows(output: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the table whose header line starts with ``first_header``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    headers = columns(lines[start])
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(dict(zip(headers, columns(line))))
    return rows


# -- against real processes ------------------------------------------------------------


@pytest.fixture(scope="module")
def scaled(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A scheduler with the plugin that scaled up to its one worker, which
    stays (idle timeout 1h); its address and scheduler file."""
    tmp_path = tmp_path_factory.mktemp("scaled")
    with scheduler_process(
        tmp_path, "--adaptive-maximum", "1", "--adaptive-idle-timeout", "1h",
        *LOCAL_OPTIONS,
    ) as (_, address):  # fmt: skip
        with Client(address, timeout=30) as client:
            # builtins only: the worker processes cannot import this module
            assert client.gather(client.map(pow, range(4), [2] * 4)) == [0, 1, 4, 9]
        yield address, tmp_path / "scheduler.json"


@pytest.fixture(scope="module")
def plain_scheduler(tmp_path_factory) -> Iterator[str]:
    """A ``dask scheduler`` without the plugin; its address."""
    tmp_path = tmp_path_factory.mktemp("plain")
    scheduler_file = tmp_path / "scheduler.json"
    cmd = [*SCHEDULER, "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
           ":0", "--scheduler-file", str(scheduler_file)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0)
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.timeout(180)
def test_status_shows_the_pool_with_its_running_worker(scaled):
    address, scheduler_file = scaled
    result = dask_adaptive("status", address)
    assert result.returncode == 0, result.stderr
    [row] = table_rows(result.stdout, "POOL")
    assert row["POOL"] == "default" and row["BACKEND"] == "local"
    assert (row["MIN"], row["MAX"], row["RUNNING"], row["IDLE"]) == ("0", "1", "1", "1")
    assert row["AVAILABLE"] == "yes"
    assert re.fullmatch(r"[\d.]+s / [\d.]+s", row["START-UP median/p90"])
    assert f"Scheduler {address}: 1 workers" in result.stdout

    result = dask_adaptive("status", "--json", "--scheduler-file", str(scheduler_file))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["running"] and data["scheduler"] == address
    [pool] = data["pools"]
    assert pool["name"] == "default"
    assert (pool["running"], pool["idle"], pool["requested"], pool["maximum"]) == (
        1,
        1,
        0,
        1,
    )
    assert pool["startup"]["samples"] == 1 and pool["startup"]["median"] > 0
    assert data["unsatisfiable"] == []


@pytest.mark.timeout(180)
def test_log_shows_the_up_decision_with_its_reason(scaled):
    address, _ = scaled
    with Client(address, timeout=30) as client:
        [up] = [e for _, e in client.get_events("adaptive") if e["status"] == "up"]
    assert "tasks wait for a worker" in up["reason"]

    result = dask_adaptive("log", address)
    assert result.returncode == 0, result.stderr
    [row] = [r for r in table_rows(result.stdout, "TIME") if r["STATUS"] == "up"]
    assert (row["POOL"], row["N/WORKERS"], row["REASON"]) == (
        "default",
        "1",
        up["reason"],
    )

    result = dask_adaptive("log", "--json", address)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["record"] for line in lines if line["record"]["status"] == "up"] == [
        up
    ]
    assert all(isinstance(line["timestamp"], float) for line in lines)


class Lines:
    """The lines a process prints, read in a thread, waited on with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no such line within {timeout}s; seen: {self.seen}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate(line):
                return line


@contextmanager
def running(*args: str) -> Iterator[tuple[subprocess.Popen, Lines]]:
    """``dask adaptive ARGS`` running; terminated at the end."""
    proc = subprocess.Popen(
        [*DASK_ADAPTIVE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, Lines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.timeout(180)
def test_log_follow_prints_a_decision_made_after_it_started(tmp_path):
    with scheduler_process(
        tmp_path, "--adaptive-maximum", "1", "--adaptive-idle-timeout", "1h",
        *LOCAL_OPTIONS,
    ) as (_, address):  # fmt: skip
        with running("log", "--follow", address) as (proc, lines):
            # the header comes once it has subscribed and printed the past (none)
            lines.wait(lambda line: line.startswith("TIME"))
            with Client(address, timeout=30) as client:
                assert client.gather(client.map(pow, range(4), [2] * 4)) == [0, 1, 4, 9]
                [up] = [
                    e for _, e in client.get_events("adaptive") if e["status"] == "up"
                ]
            line = lines.wait(lambda line: " up " in line)
            assert columns(line)[1:] == ["default", "up", "1", up["reason"]]
            proc.terminate()  # as Ctrl-C: it ends cleanly
            assert proc.wait(30) == 0, proc.stderr.read()


@pytest.mark.timeout(120)
def test_log_follow_fails_when_the_scheduler_goes_away(tmp_path):
    with scheduler_process(tmp_path) as (scheduler, address):
        with running("log", "--follow", address) as (proc, lines):
            lines.wait(lambda line: line.startswith("TIME"))
            scheduler.terminate()
            lines.wait(lambda line: "scheduler closing" in line)  # the last record
            assert proc.wait(60) == 1
            error = proc.stderr.read()
    assert error.strip() == f"Error: lost the connection to the scheduler at {address}"


@pytest.mark.timeout(120)
def test_log_after_the_plugin_was_removed_prints_its_past_then_fails(tmp_path):
    with scheduler_process(tmp_path) as (_, address):
        with Client(address, timeout=30) as client:
            client.unregister_scheduler_plugin("adaptive")
            wait_for(
                lambda: (
                    "stopped" in [e["status"] for _, e in client.get_events("adaptive")]
                ),
                what="the plugin to notice that it was removed",
            )
        result = dask_adaptive("log", address)
    assert result.returncode == 1
    assert [row["STATUS"] for row in table_rows(result.stdout, "TIME")] == ["stopped"]
    assert f"the scheduler at {address} has no adaptive plugin" in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["status", "log"])
def test_no_scheduler_at_the_address_fails_naming_it(command):
    address = f"tcp://127.0.0.1:{free_port()}"
    result = dask_adaptive(command, "--timeout", "1s", address)
    assert result.returncode == 1
    assert f"no scheduler answered at {address} within 1s" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [["status"], ["log"], ["log", "--follow"]])
def test_a_scheduler_without_the_plugin_fails_saying_so(plain_scheduler, command):
    result = dask_adaptive(*command, plain_scheduler)
    assert result.returncode == 1
    assert f"the scheduler at {plain_scheduler} has no adaptive plugin" in result.stderr
    assert "--preload dask_adaptive_plugin" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, code, message",
    [
        ([], 2, r"give the scheduler's ADDRESS .* or --scheduler-file PATH"),
        (["--scheduler-file", "missing.json"], 1,
         r"scheduler file missing.json does not exist"),
        (["tcp://127.0.0.1:1", "--scheduler-file", "s.json"], 2, r"not both"),
        (["--timeout", "soon", "tcp://127.0.0.1:1"], 2, r"'soon' is not a duration"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    result = dask_adaptive("status", *args)
    assert result.returncode == code
    assert re.search(message, result.stderr), result.stderr


# -- the status function on its own ----------------------------------------------------

CPU_AND_GPU = {
    "cpu": {"backend": InProcessBackend, "maximum": 2},
    "gpu": {"backend": InProcessBackend, "maximum": 1, "resources": {"GPU": 1},
            "cost": 5},
}  # fmt: skip


def scheduler(plugin: AdaptivePlugin) -> Scheduler:
    return Scheduler(dashboard_address=":0", host="127.0.0.1", plugins=[plugin])


@gen_test(timeout=60)
async def test_status_per_pool_and_needs_no_pool_provides():
    plugin = AdaptivePlugin(pools=CPU_AND_GPU, idle_timeout="1h")
    async with scheduler(plugin) as s, Client(s.address, asynchronous=True) as c:
        assert await c.gather(c.map(slowinc, range(4), delay=0.1, pure=False))
        await until(lambda: status(plugin)["pools"][0]["idle"] == len(s.workers))
        data = status(plugin)
        assert json.loads(json.dumps(data)) == data  # plain data
        assert data["running"] and data["scheduler"] == s.address
        assert data["workers"] == len(s.workers) and data["unmanaged"] == 0
        cpu, gpu = data["pools"]  # cheapest first
        assert (cpu["name"], cpu["maximum"], cpu["resources"]) == ("cpu", 2, {})
        assert 1 <= cpu["running"] <= 2 and cpu["requested"] == cpu["launching"] == 0
        assert cpu["startup"]["samples"] == cpu["running"]
        assert cpu["available"] and cpu["unavailable"] is None
        assert (gpu["name"], gpu["resources"], gpu["cost"]) == ("gpu", {"GPU": 1}, 5)
        assert (gpu["running"], gpu["idle"], gpu["startup"]["median"]) == (0, 0, None)
        assert cpu["backend"] == gpu["backend"] == "inprocess.InProcessBackend"

        fpga = c.map(inc, range(3), resources={"FPGA": 1}, pure=False)
        await until(lambda: status(plugin)["unsatisfiable"], what="the need reported")
        assert status(plugin)["unsatisfiable"] == [
            {"resources": {"FPGA": 1}, "tasks": 3}
        ]
        del fpga


@gen_test(timeout=60)
async def test_status_says_why_a_pool_is_unavailable():
    plugin = AdaptivePlugin(
        pools={
            # accepts every request, delivers nothing: a full partition
            "spot": {"backend": InProcessBackend, "backend_options": {"ghost": True},
                     "start_timeout": "1s"},
            "on-demand": {"backend": InProcessBackend, "maximum": 1, "cost": 3},
        },
    )  # fmt: skip
    async with scheduler(plugin) as s, Client(s.address, asynchronous=True) as c:
        assert await c.submit(inc, 1) == 2  # on-demand, after spot's requests timed out
        [fallback] = events(s, "fallback")
        # a second before the cool-down ends (monotonic time, as the plugin's)
        spot, on_demand = status(plugin, now=fallback["until"] - 1)["pools"]
        assert spot["name"] == "spot" and not spot["available"]
        assert spot["unavailable"] == "fallback cool-down, 1s left"
        assert on_demand["available"] and on_demand["running"] == 1


@gen_test(timeout=30)
async def test_status_of_a_plugin_that_has_not_started():
    data = status(AdaptivePlugin(backend=InProcessBackend, maximum=3))
    assert not data["running"]
    assert (data["maximum"], data["pools"], data["scheduler"]) == (3, [], None)


@gen_test(timeout=30)
async def test_a_client_reads_the_status_through_run_on_scheduler():
    async with Scheduler(dashboard_address=":0", host="127.0.0.1") as s:
        async with Client(s.address, asynchronous=True) as c:
            assert await c.run_on_scheduler(on_scheduler) is None
            assert await c.run_on_scheduler(has_plugin) is False
            past = await c.run_on_scheduler(log_on_scheduler)
            assert past == {"plugin": False, "events": []}
            await c.register_plugin(AdaptivePlugin(backend=InProcessBackend))
            assert await c.run_on_scheduler(has_plugin) is True
            data = await c.run_on_scheduler(on_scheduler)
            assert data["running"] and [p["name"] for p in data["pools"]] == ["default"]
            await c.gather(c.map(inc, range(3)))  # a decision: up
            past = await c.run_on_scheduler(log_on_scheduler)
            assert past["plugin"] and past["events"] == list(s.get_events("adaptive"))
            assert "up" in [record["status"] for _, record in past["events"]]


def test_the_table_says_why_a_pool_is_unavailable_and_that_none_has_a_maximum():
    pool = {
        "name": "spot", "backend": "slurm", "minimum": 0, "maximum": None,
        "desired": 2, "requested": 2, "launching": 0, "running": 0, "idle": 0,
        "retiring": 0, "startup": {"median": None, "p90": None, "samples": 0},
        "available": False, "unavailable": "fallback cool-down, 42s left",
    }  # fmt: skip
    data = {
        "running": True, "scheduler": "tcp://10.0.0.1:8786", "policy": "AdaptivePolicy",
        "minimum": 0, "maximum": None, "workers": 1, "unmanaged": 1, "pools": [pool],
        "unsatisfiable": [{"resources": {"FPGA": 1}, "tasks": 3}], "demand": "",
    }  # fmt: skip
    text = format_status(data)
    assert text.splitlines()[0] == (
        "Scheduler tcp://10.0.0.1:8786: 1 workers (1 in no pool); "
        "policy AdaptivePolicy; all pools together: minimum 0, no maximum"
    )
    [row] = table_rows(text, "POOL")
    assert (row["MAX"], row["START-UP median/p90"]) == ("none", "- / -")
    assert row["AVAILABLE"] == "no: fallback cool-down, 42s left"
    assert "Unsatisfiable: 3 tasks need FPGA=1, which no pool provides" in text


def test_a_log_row_of_an_error_shows_the_action_and_the_error():
    record = {"status": "error", "pool": "gpu", "action": "scale_up",
              "error": "OSError: sbatch: error: invalid partition",
              "reason": "scale_up failed; retrying after back-off"}  # fmt: skip
    _, pool, status_, what, reason = log_row(0.0, record)
    assert (pool, status_, what) == ("gpu", "error", "scale_up")
    assert reason == (
        "scale_up failed; retrying after back-off "
        "(OSError: sbatch: error: invalid partition)"
    )


@pytest.mark.timeout(180)
def test_request_starts_workers_before_any_work_and_says_for_how_long(tmp_path):
    with scheduler_process(
        tmp_path, "--adaptive-maximum", "3", "--adaptive-idle-timeout", "200ms",
        *LOCAL_OPTIONS,
    ) as (_, address):  # fmt: skip
        result = dask_adaptive("request", "2", "--for", "1h", address)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            "a client asked for at least 2 workers in all pools for 3600s; "
            "it expires in 3600s"
        )
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)  # no task was submitted
            [request] = [
                e for _, e in client.get_events("adaptive") if e["status"] == "request"
            ]
        assert (request["n"], request["pool"], request["for"]) == (2, None, 3600)

        result = dask_adaptive("request", "1", "--pool", "gpu", "--json", address)
        assert result.returncode == 1
        assert "the plugin refused: unknown pool 'gpu'" in result.stderr
        assert "the pools are default" in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, message",
    [
        (["many"], "Invalid value for 'N': 'many' is not a valid integer"),
        (["2", "--for", "0"], "'0' must be more than 0 seconds"),
        (["2", "--for", "soon"], "'soon' is not a duration"),
    ],
)
def test_request_with_bad_input_is_a_usage_error(args, message):
    result = dask_adaptive("request", *args, "tcp://127.0.0.1:1")
    assert result.returncode == 2
    assert message in result.stderr
