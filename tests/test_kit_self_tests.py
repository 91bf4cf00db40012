"""The conformance kit can fail: run against broken backends, the right test
fails with the right message, and the others pass or are skipped.

Each run is the documented command in a subprocess, through the installed
pytest plugin (entry point ``adaptive_backend_kit``)::

    python -m pytest --adaptive-backend NAME --pyargs dask_adaptive_plugin.testing

The broken backends (``kit_broken_backends.py``) each break one rule; the
example package ``inprocess`` and the built-in ``local`` must pass. The runs
are started together and read from their JUnit XML reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import pytest

TESTS = Path(__file__).parent
#: Every run must end within this (seconds); the slowest takes about a minute.
RUN_TIMEOUT = 240


@dataclass(frozen=True)
class KitRun:
    """One run of the kit: the backend, its options, and what must fail how."""

    backend: str
    options: tuple[str, ...] = ()
    #: start_timeout, short for the backend whose failure is waiting for it
    start_timeout: float = 30.0
    #: stop_timeout, the same
    stop_timeout: float = 30.0
    #: test name -> a part of its failure message
    failures: dict[str, str] = field(default_factory=dict)


HANG = (
    "scale_up(2, kit=1.0) did not return within 3 s (start_timeout): "
    "a backend must raise, not hang"
)

RUNS = {
    "n as a delta": KitRun(
        "kit_broken_backends:CountsNAsADelta",
        failures={
            "test_the_same_n_again_starts_nothing": (
                "scale_up(2) after scale_up(2) started 2 more workers"
            ),
            "test_a_lower_n_stops_nobody": "started 1 more worker",
        },
    ),
    "stops the wrong worker": KitRun(
        "kit_broken_backends:StopsTheWrongWorker",
        failures={
            "test_scale_down_stops_exactly_those_workers": (
                "which it was not asked to stop"
            ),
        },
    ),
    "leaks processes on close": KitRun(
        "kit_broken_backends:LeaksOnClose",
        ("death-timeout=20s",),
        stop_timeout=10,
        failures={
            "test_close_leaves_nothing_running": (
                "connected 10 s later: close() stops every worker"
            ),
        },
    ),
    "hangs in scale_up": KitRun(
        "kit_broken_backends:HangsInScaleUp",
        start_timeout=3,
        failures={"test_scale_up_brings_n_workers_within_start_timeout": HANG},
    ),
    "inprocess (the example package)": KitRun("inprocess"),
    "local": KitRun("local", ("nthreads=1", "death-timeout=20s")),
}


@dataclass(frozen=True)
class Result:
    """What one test of a run did: passed, failed or skipped, and the message."""

    outcome: str
    message: str


def command(run: KitRun, report: Path) -> list[str]:
    """The documented command, with a JUnit report to read the outcomes from."""
    options = [arg for option in run.options for arg in ("--adaptive-option", option)]
    return [
        sys.executable, "-m", "pytest",
        "--adaptive-backend", run.backend, *options,
        "--adaptive-start-timeout", str(run.start_timeout),
        "--adaptive-stop-timeout", str(run.stop_timeout),
        "--pyargs", "dask_adaptive_plugin.testing",
        "-p", "no:cacheprovider", "-q", f"--junitxml={report}",
    ]  # fmt: skip


def read_report(stem: Path) -> dict[str, Result]:
    """Test name -> its outcome and message, from the run's JUnit XML report."""
    report, log = stem.with_suffix(".xml"), stem.with_suffix(".log")
    assert report.exists(), f"no report from {stem}:\n{log.read_text()[-3000:]}"
    results = {}
    for case in ElementTree.parse(report).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                message = child.get("message", "") + "\n" + (child.text or "")
        results[case.get("name", "")] = Result(outcome, message)
    return results


@pytest.fixture(scope="module")
def kit_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Result]]:
    """Every run of :data:`RUNS`, started together: label -> test -> result."""
    directory = tmp_path_factory.mktemp("kit-runs")
    started = {
        label: start(run, directory / f"run-{index}")
        for index, (label, run) in enumerate(RUNS.items())
    }
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        for label, proc in started.items():
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the kit's run against {label} took over {RUN_TIMEOUT} s")
    finally:
        for proc in started.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return {
        label: read_report(directory / f"run-{index}")
        for index, label in enumerate(RUNS)
    }


def start(run: KitRun, stem: Path) -> subprocess.Popen[bytes]:
    """Start one run in its own session; its report is ``stem.xml``, its
    output ``stem.log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    env.pop("DASK_ADAPTIVE_LIVE", None)
    with open(stem.with_suffix(".log"), "w") as log:
        return subprocess.Popen(
            command(run, stem.with_suffix(".xml")), cwd=stem.parent, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize("label", list(RUNS))
def test_exactly_the_right_tests_fail_with_the_right_message(
    label: str, kit_runs: dict[str, dict[str, Result]]
) -> None:
    results = kit_runs[label]
    expected = RUNS[label].failures
    assert len(results) == 12, sorted(results)  # the kit's tests were all collected
    failed = {name for name, r in results.items() if r.outcome in ("failure", "error")}
    assert failed == set(expected), {n: results[n].message for n in failed}
    for name, part in expected.items():
        assert part in results[name].message, results[name].message


def test_a_backend_that_hangs_is_failed_once_and_its_other_checks_skipped(
    kit_runs: dict[str, dict[str, Result]],
) -> None:
    """Only the test of the step that went wrong fails; the steps after it are
    skipped with a reason naming it, not failed again."""
    results = kit_runs["hangs in scale_up"]
    skipped = {name: r.message for name, r in results.items() if r.outcome == "skipped"}
    assert "test_close_leaves_nothing_running" in skipped
    assert (
        "an earlier step failed (scale_up"
        in skipped["test_close_leaves_nothing_running"]
    )
    assert (
        results["test_an_unknown_option_is_a_value_error_naming_it"].outcome == "passed"
    )


def test_the_kit_is_inactive_without_its_option(tmp_path: Path) -> None:
    """Anyone else's test run gets no fixture and no test from the plugin."""
    (tmp_path / "test_plain.py").write_text(
        "def test_plain(request):\n"
        "    assert 'adaptive_backend' not in request.fixturenames\n"
        "    assert 'adaptive-backend-kit-fixtures' not in [\n"
        "        name for name, _ in request.config.pluginmanager.list_name_plugin()]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         str(tmp_path / "test_plain.py"), "--pyargs", "dask_adaptive_plugin.testing"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout


def test_an_unknown_backend_name_is_a_usage_error_listing_the_installed_ones(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--adaptive-backend", "no-such-backend",
         "--pyargs", "dask_adaptive_plugin.testing", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "unknown backend 'no-such-backend'" in proc.stderr, proc.stderr
    assert "local" in proc.stderr and "inprocess" in proc.stderr
