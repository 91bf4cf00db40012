"""The backend contract as a reusable test class.

Subclass :class:`BackendConformance` and provide a class- or session-scoped
fixture ``adaptive_backend`` that returns a
:class:`~dask_adaptive_plugin.testing.BackendUnderTest`, as fsspec's
``AbstractFixtures`` or CPython's ``mapping_tests`` are used::

    import pytest
    from dask_adaptive_plugin.testing import BackendConformance, BackendUnderTest

    class TestMySystem(BackendConformance):
        @pytest.fixture(scope="class")
        def adaptive_backend(self):
            return BackendUnderTest("mysystem", {"queue": "short"})

Or run the kit from the command line, with no code at all::

    pytest --adaptive-backend mysystem --adaptive-option queue=short \\
        --pyargs dask_adaptive_plugin.testing

Every test fails with a message that says what the backend did wrong. The
checks of one backend's life share one run (see
:mod:`~dask_adaptive_plugin.testing.scenarios`); a test whose step could not
run because an earlier one failed is skipped, naming that step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from dask_adaptive_plugin.testing.harness import BackendFailed, Violation
from dask_adaptive_plugin.testing.scenarios import (
    STEPS,
    Lifecycle,
    Outcome,
    cancel_pending_implemented,
    cut_short,
    run_bad_option,
    run_cancel_pending,
    run_lifecycle,
    run_restart,
)
from dask_adaptive_plugin.testing.spec import BackendUnderTest

T = TypeVar("T")

#: The lifecycle may take this many start_timeouts in all (each call and
#: each wait is bounded by one).
LIFECYCLE_BOUND = 4 * len(STEPS)


class BackendConformance:
    """Tests that every backend passes; the fixture ``adaptive_backend`` says which.

    The tests, in the order they run:

    - ``scale_up(n, **resources)`` brings this backend's workers to ``n``,
      connected within ``start_timeout`` (a worker of the kit's own is
      connected too, and must not be counted);
    - ``maximum`` and ``threads_per_worker`` describe the workers;
    - the resources asked for reach the workers;
    - ``report()`` names the workers that connect, as the plugin's ledger
      needs (skipped if it returns ``None``);
    - ``scale_up(n)`` again starts nothing; ``scale_up(n - 1)`` stops nobody;
    - ``stopped_together()``: every member of a unit names the same unit;
    - ``scale_down(unit)`` stops exactly those workers;
    - ``close()`` leaves no worker connected, ``report()`` empty, no process
      with the scheduler's address on this machine, and nothing the
      environment lists (jobs, Pods);
    - ``cancel_pending()``, where implemented, stops what has not connected;
    - ``check_options()`` refuses an unknown option with a ``ValueError``;
    - optionally (``adaptive_restart``), a backend made again at the same
      address adopts or removes what the earlier one left.

    Every call to the backend is bounded by ``start_timeout``: one that does
    not return fails as a hang.
    """

    @pytest.fixture(scope="class")
    @classmethod
    def adaptive_lifecycle(cls, adaptive_backend: BackendUnderTest) -> Lifecycle:
        """The lifecycle of one backend, run once for the tests of the class."""
        bound = adaptive_backend.start_timeout * LIFECYCLE_BOUND
        result = Lifecycle()
        try:
            asyncio.run(
                asyncio.wait_for(run_lifecycle(adaptive_backend, result), bound)
            )
        except asyncio.TimeoutError:  # noqa: UP041 - not TimeoutError before 3.11
            cut_short(
                result,
                f"the lifecycle did not end within {bound:g} s "
                f"({LIFECYCLE_BOUND} start timeouts)",
            )
        return result

    def test_scale_up_brings_n_workers_within_start_timeout(
        self, adaptive_lifecycle: Lifecycle
    ) -> None:
        verdict(adaptive_lifecycle, "scale_up")

    def test_maximum_and_threads_per_worker_describe_the_workers(
        self, adaptive_lifecycle: Lifecycle
    ) -> None:
        verdict(adaptive_lifecycle, "attributes")

    def test_resources_asked_for_reach_the_workers(
        self, adaptive_lifecycle: Lifecycle
    ) -> None:
        verdict(adaptive_lifecycle, "resources")

    def test_report_matches_what_the_scheduler_sees(
        self, adaptive_lifecycle: Lifecycle
    ) -> None:
        verdict(adaptive_lifecycle, "report")

    def test_the_same_n_again_starts_nothing(
        self, adaptive_lifecycle: Lifecycle
    ) -> None:
        verdict(adaptive_lifecycle, "same_n")

    def test_a_lower_n_stops_nobody(self, adaptive_lifecycle: Lifecycle) -> None:
        verdict(adaptive_lifecycle, "lower_n")

    def test_stopped_together_names_one_unit_for_all_its_members(
        self, adaptive_lifecycle: Lifecycle
    ) -> None:
        verdict(adaptive_lifecycle, "stopped_together")

    def test_scale_down_stops_exactly_those_workers(
        self, adaptive_lifecycle: Lifecycle
    ) -> None:
        verdict(adaptive_lifecycle, "scale_down")

    def test_close_leaves_nothing_running(self, adaptive_lifecycle: Lifecycle) -> None:
        verdict(adaptive_lifecycle, "close")

    def test_cancel_pending_stops_what_has_not_connected(
        self, adaptive_backend: BackendUnderTest, adaptive_lifecycle: Lifecycle
    ) -> None:
        if not cancel_pending_implemented(adaptive_backend):
            pytest.skip("cancel_pending() is not implemented (it is optional)")
        needs_scale_up(adaptive_lifecycle)
        run(run_cancel_pending(adaptive_backend, adaptive_lifecycle.settle()))

    def test_an_unknown_option_is_a_value_error_naming_it(
        self, adaptive_backend: BackendUnderTest
    ) -> None:
        run(run_bad_option(adaptive_backend))

    @pytest.mark.adaptive_restart
    def test_a_backend_made_again_adopts_or_removes_what_was_left(
        self, adaptive_backend: BackendUnderTest, adaptive_lifecycle: Lifecycle
    ) -> None:
        if not adaptive_backend.restart:
            pytest.skip(
                "surviving a scheduler restart is optional: run with "
                "--adaptive-restart (BackendUnderTest(restart=True)) to check it"
            )
        needs_scale_up(adaptive_lifecycle)
        run(run_restart(adaptive_backend, adaptive_lifecycle.settle()))


def verdict(lifecycle: Lifecycle, step: str) -> None:
    """Pass, fail with what the backend did wrong, or skip saying why not checked."""
    outcome = lifecycle.outcomes.get(step) or Outcome(
        not_checked="not checked: the lifecycle ended before this step"
    )
    if outcome.not_checked:
        pytest.skip(outcome.not_checked)
    if outcome.failure:
        pytest.fail(outcome.failure, pytrace=False)


def needs_scale_up(lifecycle: Lifecycle) -> None:
    """Skip, naming the failed test, if scale_up itself does not work."""
    outcome = lifecycle.outcomes.get("scale_up")
    if outcome is None or outcome.failure or outcome.not_checked:
        pytest.skip(
            "not checked: scale_up does not work (see "
            "test_scale_up_brings_n_workers_within_start_timeout)"
        )


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """Run a scenario on a fresh event loop; what the backend did wrong fails the test."""
    try:
        return asyncio.run(scenario)
    except (BackendFailed, Violation) as e:
        pytest.fail(str(e), pytrace=False)
