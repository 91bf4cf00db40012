"""The scenarios the kit runs against a backend, and what each one found.

Starting workers takes seconds, so the checks of one backend's life share one
run (:func:`run_lifecycle`): scale up, ask again, ask for less, scale down
one unit, close. Each step records an :class:`Outcome`; each test of the kit
reads one. A step whose call raises or hangs ends the run: the steps after it
are marked as not checked, so that only the test of the step that went wrong
fails. The scenarios that need a fresh backend (cancelling, a restart, bad
options) run on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dask_adaptive_plugin.ledger import LAUNCHING, REQUESTED, RUNNING, Ledger
from dask_adaptive_plugin.testing import processes
from dask_adaptive_plugin.testing.harness import (
    POOL,
    BackendFailed,
    Harness,
    Violation,
    describe_call,
    harness,
    implements,
)
from dask_adaptive_plugin.testing.spec import BackendUnderTest

#: The shortest wait for something that must not happen (a worker more, one
#: fewer); longer if the backend's workers took longer to connect.
MIN_SETTLE = 1.0
#: Option name that no backend takes, for the check of bad options.
UNKNOWN_OPTION = "kit_no_such_option"

#: The steps of the lifecycle, in order, with the test that reads each.
STEPS = (
    "scale_up",
    "attributes",
    "resources",
    "report",
    "same_n",
    "lower_n",
    "stopped_together",
    "scale_down",
    "close",
)


@dataclass
class Outcome:
    """What one check found: nothing wrong, what the backend did wrong, or
    why it could not be checked."""

    failure: str | None = None
    not_checked: str | None = None


@dataclass
class Lifecycle:
    """The findings of one lifecycle run, by step."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    #: Seconds the first ``scale_up`` took until all its workers connected.
    connect_time: float | None = None
    #: Seconds each step took.
    timings: dict[str, float] = field(default_factory=dict)
    #: Whether the backend reports what it launched (``report()``).
    reports: bool = False

    def settle(self) -> float:
        """How long to watch for a worker that must not come (or go).

        As long as the first workers took to connect; half of it if the
        backend reports, since report() shows a launch at once.
        """
        share = 0.5 if self.reports else 1.0
        return max(MIN_SETTLE, share * (self.connect_time or 0.0))


# -- the lifecycle -------------------------------------------------------------------------


class LifecycleRun:
    """The state the steps share: the backend, its workers, the ledger."""

    def __init__(self, h: Harness, backend: Any, result: Lifecycle) -> None:
        self.h = h
        self.backend = backend
        self.result = result
        self.n = h.spec.workers
        self.resources = dict(h.spec.resources)
        #: The workers the first scale_up brought: address -> name.
        self.first: dict[str, str] = {}
        #: stopped_together() of each worker: address -> its unit.
        self.units: dict[str, frozenset[str]] = {}
        self.ledger = Ledger([POOL])
        self.reports: list[dict[str, str] | None] = []
        self.reconciled: list[Any] = []

    async def scale_up(self, n: int) -> None:
        await self.h.call(self.backend, "scale_up", n, **self.resources)

    def settle(self) -> Awaitable[None]:
        return asyncio.sleep(self.result.settle())


Step = Callable[[LifecycleRun], Awaitable[None]]


async def run_lifecycle(
    spec: BackendUnderTest, result: Lifecycle | None = None
) -> Lifecycle:
    """Run every step against one backend; the outcome of each, recorded in
    ``result`` as the steps end (so that a run cut short keeps them)."""
    result = Lifecycle() if result is None else result
    async with harness(spec) as h:
        try:
            backend = h.make_backend()
        except BackendFailed as e:
            result.outcomes[STEPS[0]] = Outcome(failure=str(e))
            _not_checked_from(result, 1, str(e))
            return result
        run = LifecycleRun(h, backend, result)
        for index, name in enumerate(STEPS):
            started = time.monotonic()
            try:
                await STEP_FUNCTIONS[name](run)
            except Violation as e:
                result.outcomes[name] = Outcome(failure=str(e))
            except BackendFailed as e:
                result.outcomes[name] = Outcome(failure=str(e))
                _not_checked_from(result, index + 1, f"{name}: {e}")
                break
            else:
                result.outcomes.setdefault(name, Outcome())
            finally:
                result.timings[name] = time.monotonic() - started
    return result


def cut_short(result: Lifecycle, why: str) -> None:
    """The run did not end: the step it was in fails, the rest are not checked."""
    for index, name in enumerate(STEPS):
        if name not in result.outcomes:
            result.outcomes[name] = Outcome(failure=f"{name}: {why}")
            _not_checked_from(result, index + 1, f"{name}: {why}")
            return


def _not_checked_from(result: Lifecycle, index: int, why: str) -> None:
    for name in STEPS[index:]:
        result.outcomes.setdefault(
            name, Outcome(not_checked=f"not checked: an earlier step failed ({why})")
        )


async def step_scale_up(run: LifecycleRun) -> None:
    """scale_up(n): n workers of this backend connect within start_timeout."""
    h, n = run.h, run.n
    maximum = getattr(run.backend, "maximum", None)
    if isinstance(maximum, int) and maximum < n:
        raise BackendFailed(
            f"the backend's maximum is {maximum}, and the kit needs {n} workers: "
            f"give options that allow {n} (or --adaptive-workers {maximum})"
        )
    started = time.monotonic()
    run.ledger.request(POOL, n, started, h.spec.start_timeout, run.resources)
    await run.scale_up(n)
    await _reconcile(run, time.monotonic())
    run.result.reports = run.reports[0] is not None
    arrived = await h.until(lambda: len(h.workers()) >= n, h.spec.start_timeout)
    run.result.connect_time = time.monotonic() - started
    await asyncio.sleep(MIN_SETTLE / 4)  # a worker too many is usually right behind
    run.first = h.workers()
    _arrived_in_ledger(run)
    await _reconcile(run, time.monotonic())
    call = describe_call("scale_up", n, **run.resources)
    if not arrived:
        raise BackendFailed(
            f"{call} brought {len(run.first)} of {n} workers within "
            f"start_timeout ({h.spec.start_timeout:g} s); report() says "
            f"{run.reports[-1]!r}{_own_worker_hint(run)}"
        )
    if len(run.first) > n:
        raise Violation(
            f"{call} brought {len(run.first)} workers, not {n}: "
            f"{sorted(run.first.values())}; n is the total of this backend's workers"
        )


def _arrived_in_ledger(run: LifecycleRun) -> None:
    """What the plugin's hooks tell its ledger when the workers connect."""
    for address, name in run.first.items():
        ws = run.h.scheduler.workers.get(address)
        if ws is not None:
            run.ledger.arrived(
                address, name, ws.resources, ws.nthreads, time.monotonic(),
                unnamed_from=[] if run.reports[0] is not None else [POOL],
            )  # fmt: skip


def _own_worker_hint(run: LifecycleRun) -> str:
    launched = run.reports[-1]
    if len(run.first) == run.n - 1 and (launched is None or len(launched) < run.n):
        return (
            " (the kit's own worker was connected: count only this backend's "
            "workers, never len(scheduler.workers))"
        )
    return ""


async def _reconcile(run: LifecycleRun, now: float) -> None:
    """What the plugin does after each call: read report() into the ledger."""
    report = await run.h.report(run.backend)
    run.reports.append(report)
    if report is not None:
        run.reconciled.append(
            run.ledger.reconcile(POOL, report, now, run.h.spec.start_timeout)
        )


async def step_attributes(run: LifecycleRun) -> None:
    """maximum and threads_per_worker describe what the backend runs."""
    backend, n = run.backend, run.n
    maximum = getattr(backend, "maximum", None)
    if maximum is not None and (
        isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 0
    ):
        raise Violation(f"maximum is {maximum!r}: None or a whole number >= 0")
    threads = getattr(backend, "threads_per_worker", 1)
    wrong = {
        name: run.h.scheduler.workers[address].nthreads
        for address, name in run.first.items()
        if address in run.h.scheduler.workers
        and run.h.scheduler.workers[address].nthreads != threads
    }
    if wrong:
        raise Violation(
            f"threads_per_worker is {threads!r}, but the workers of scale_up({n}) "
            f"have {wrong} threads: the plugin sizes a pool by threads_per_worker "
            "before its workers connect"
        )


async def step_resources(run: LifecycleRun) -> None:
    """The resources scale_up asked for reach every new worker."""
    if not run.first:
        raise Violation("no worker connected, so no resources could be checked")
    wanted = run.resources
    lacking = {
        name: dict(run.h.scheduler.workers[address].resources)
        for address, name in run.first.items()
        if address in run.h.scheduler.workers
        and any(
            run.h.scheduler.workers[address].resources.get(k) != v
            for k, v in wanted.items()
        )
    }
    if lacking:
        raise Violation(
            f"{describe_call('scale_up', run.n, **wanted)} started workers "
            f"without those resources (scheduler.workers[...].resources: "
            f"{lacking}): scale_up's keyword arguments are the resources each "
            "new worker must provide (dask worker --resources)"
        )


async def step_report(run: LifecycleRun) -> None:
    """report() names the workers that connected, as the ledger needs."""
    after_scale_up, connected = run.reports[0], run.reports[-1]
    if after_scale_up is None and connected is None:
        run.result.outcomes["report"] = Outcome(
            not_checked="report() is not implemented (it returns None): the "
            "plugin counts what it asked for until workers connect"
        )
        return
    names = set(run.first.values())
    if after_scale_up is None or connected is None:
        raise Violation(
            f"report() returned {after_scale_up!r} after scale_up and "
            f"{connected!r} once the workers connected: a backend reports "
            "always, or never"
        )
    not_launched = run.reconciled[0].not_launched
    if not_launched:
        raise Violation(
            f"report() right after {describe_call('scale_up', run.n)} named "
            f"{len(after_scale_up)} workers ({sorted(after_scale_up)}): the "
            f"plugin takes the {not_launched} requests it does not name as not "
            "launched, and asks again; name every worker you launched"
        )
    _check_report_matches(connected, names)
    on_the_way = run.ledger.count(POOL, REQUESTED, LAUNCHING)
    running = run.ledger.count(POOL, RUNNING)
    if on_the_way or running != len(names):
        raise Violation(
            f"with report() {connected!r} and the workers {sorted(names)} "
            f"connected, the plugin's ledger counts {running} running and "
            f"{on_the_way} on their way: the names in report() must be the "
            "names the workers connect with"
        )


def _check_report_matches(report: dict[str, str], connected: set[str]) -> None:
    missing = sorted(connected - set(report))
    if missing:
        raise Violation(
            f"report() {report!r} does not name the connected workers {missing}: "
            "it names what the backend launched and has not stopped, by the "
            "worker's name (dask worker --name)"
        )
    extra = sorted(set(report) - connected)
    if extra:
        raise Violation(
            f"report() {report!r} names {extra}, which are not connected: the "
            "plugin would wait for them as workers on their way"
        )
    # "pending" for a connected worker is allowed: report() answers from the
    # backend's last look at its system, which may be older than the worker


async def step_same_n(run: LifecycleRun) -> None:
    """scale_up(n) again, with n workers running: nothing more starts."""
    h, n = run.h, run.n
    before = h.workers()
    await run.scale_up(n)
    report = await h.report(run.backend)
    await run.settle()
    after = h.workers()
    call = describe_call("scale_up", n)
    _check_nothing_started(f"{call} after {call}", before, after, report)
    _check_nobody_stopped(call, before, after)


async def step_lower_n(run: LifecycleRun) -> None:
    """scale_up(n - 1) with n workers running: nobody stops, nothing starts."""
    h, n = run.h, run.n
    before = h.workers()
    await run.scale_up(n - 1)
    report = await h.report(run.backend)
    await run.settle()
    after = h.workers()
    call = f"{describe_call('scale_up', n - 1)} with {len(before)} workers running"
    _check_nobody_stopped(
        call, before, after,
        "a lower n stops nobody: the plugin retires workers itself, through "
        "scale_down, after moving their data away",
    )  # fmt: skip
    _check_nothing_started(call, before, after, report)


def _check_nothing_started(
    call: str,
    before: dict[str, str],
    after: dict[str, str],
    report: dict[str, str] | None,
) -> None:
    new = sorted(set(after.values()) - set(before.values()))
    launched = sorted(set(report or ()) - set(before.values()))
    more = max(len(new), len(launched))
    if more:
        plural = "worker" if more == 1 else "workers"
        raise Violation(
            f"{call} started {more} more {plural} ({new or launched}): "
            "scale_up's n is a total, not a number to add"
        )


def _check_nobody_stopped(
    call: str, before: dict[str, str], after: dict[str, str], why: str = ""
) -> None:
    gone = sorted(name for address, name in before.items() if address not in after)
    if gone:
        raise Violation(
            f"{call} stopped {gone}"
            + (f": {why}" if why else ": asked again for what runs, stop nobody")
        )


async def step_stopped_together(run: LifecycleRun) -> None:
    """Every member of a unit names the same unit, itself included."""
    h = run.h
    workers = h.workers()
    for address in workers:
        unit = unit_of(run.backend, address)
        run.units[address] = unit
    for address, unit in run.units.items():
        name = workers[address]
        if address not in unit:
            raise Violation(
                f"stopped_together({name!r}) is {_names(h, unit)}, without "
                f"{name!r} itself: a unit includes the worker asked about"
            )
        strangers = sorted(unit - set(workers))
        if strangers:
            raise Violation(
                f"stopped_together({name!r}) names {strangers}, which are not "
                "connected workers of this backend"
            )
        for member in unit:
            if run.units[member] != unit:
                raise Violation(
                    f"stopped_together({name!r}) is {_names(h, unit)}, but "
                    f"stopped_together({workers[member]!r}) is "
                    f"{_names(h, run.units[member])}: every member of a unit "
                    "must name the same unit"
                )


def unit_of(backend: Any, address: str) -> frozenset[str]:
    """``stopped_together(address)``, a plain function as the plugin calls it."""
    method = getattr(backend, "stopped_together", None)
    if method is None:
        return frozenset([address])
    try:
        unit = method(address)
    except Exception as e:
        raise BackendFailed(
            f"stopped_together({address!r}) raised {type(e).__name__}: {e}"
        ) from e
    if not isinstance(unit, (list, tuple, set, frozenset)):
        raise Violation(
            f"stopped_together({address!r}) returned {unit!r}: the plugin calls "
            "it without await and needs a list of addresses"
        )
    return frozenset(unit)


def _names(h: Harness, addresses: frozenset[str]) -> list[str]:
    return sorted(h.watcher.names.get(a, a) for a in addresses)


async def step_scale_down(run: LifecycleRun) -> None:
    """scale_down(unit) stops exactly that unit's workers, and no others."""
    h = run.h
    workers = h.workers()
    if not workers:
        raise Violation("no worker of this backend is connected to scale down")
    victim = min(workers, key=workers.__getitem__)
    unit = run.units.get(victim, frozenset([victim]))
    addresses = sorted(unit)
    others = {a: n for a, n in workers.items() if a not in unit}
    call = f"scale_down({sorted(workers[a] for a in addresses)})"
    started = time.monotonic()
    await h.call(run.backend, "scale_down", addresses)
    report = await h.report(run.backend)

    def wrong_one_gone() -> bool:
        return any(a not in h.scheduler.workers for a in others)

    def unit_gone() -> bool:
        return not any(a in h.scheduler.workers for a in unit)

    await h.until(lambda: unit_gone() or wrong_one_gone(), h.spec.stop_within)
    # a worker stopped by mistake goes about as fast as the right one would
    await asyncio.sleep(max(MIN_SETTLE, (time.monotonic() - started) / 2))
    _check_scale_down(run, call, unit, others, report)


def _check_scale_down(
    run: LifecycleRun,
    call: str,
    unit: frozenset[str],
    others: dict[str, str],
    report: dict[str, str] | None,
) -> None:
    h = run.h
    wrong = sorted(name for a, name in others.items() if a not in h.scheduler.workers)
    if not h.own_worker_connected():
        wrong.append(str(h.own_worker.name) + " (the kit's own worker)")
    if wrong:
        raise Violation(
            f"{call} stopped {wrong}, which it was not asked to stop: "
            "scale_down stops exactly the workers it is given"
        )
    kept = _names(h, frozenset(a for a in unit if a in h.scheduler.workers))
    if kept:
        raise Violation(
            f"{call} returned, but {kept} still connected "
            f"{h.spec.stop_within:g} s later: scale_down stops those workers"
        )
    stopped = {h.watcher.names[a] for a in unit}
    still = sorted(stopped & set(report or ()))
    if still:
        raise Violation(
            f"report() after {call} still names {still}: a stopped worker "
            "leaves report() (the plugin would count it as on its way)"
        )


async def step_close(run: LifecycleRun) -> None:
    """close(): no worker connected, report() empty, nothing left running."""
    await close_and_check(run.h, run.backend, "close()")


async def close_and_check(h: Harness, backend: Any, call: str) -> None:
    """Close ``backend``, then check that it left nothing (within stop_timeout)."""
    before = h.workers()
    if hasattr(backend, "close"):
        await h.call(backend, "close")
    else:
        call = "the backend has no close(), so"
    timeout = h.spec.stop_within
    deadline = time.monotonic() + timeout
    await h.until(lambda: not h.workers(), timeout)
    connected = sorted(h.workers().values())
    if connected:
        raise Violation(
            f"{call} left {connected} connected {timeout:g} s later: close() "
            "stops every worker the backend started"
        )
    if not h.own_worker_connected():
        raise Violation(
            f"{call} stopped the kit's own worker {h.own_worker.name!r}, which "
            "the backend did not start: it stops only its own"
        )
    report = await h.report(backend)
    if report:
        raise Violation(
            f"report() after {call} still names {sorted(report)}: after close() "
            "nothing is launched"
        )
    await _check_nothing_left(h, call, deadline, list(before.values()))


async def _check_nothing_left(
    h: Harness, call: str, deadline: float, workers: list[str]
) -> None:
    """No process with the scheduler's address, nothing the environment lists."""
    await h.until(lambda: not h.processes(), max(0.0, deadline - time.monotonic()))
    left = h.processes()
    if left:
        raise Violation(
            f"{call} left processes running with the scheduler's address "
            f"(workers were {sorted(workers)}): {processes.describe(left)}; "
            "close() stops every process the backend started"
        )

    async def nothing_listed() -> bool:
        return not await h.leftovers()

    await h.until(nothing_listed, max(0.0, deadline - time.monotonic()))
    listed = await h.leftovers()
    if listed:
        raise Violation(
            f"{call} left {listed} in the system: close() stops every job, "
            "Pod or task the backend started"
        )


STEP_FUNCTIONS: dict[str, Step] = {
    "scale_up": step_scale_up,
    "attributes": step_attributes,
    "resources": step_resources,
    "report": step_report,
    "same_n": step_same_n,
    "lower_n": step_lower_n,
    "stopped_together": step_stopped_together,
    "scale_down": step_scale_down,
    "close": step_close,
}


# -- scenarios of their own ----------------------------------------------------------------


async def run_cancel_pending(spec: BackendUnderTest, settle: float) -> None:
    """scale_up(n), then at once cancel_pending(): nothing still waiting stays,
    and a worker it no longer reports never connects.

    A started worker that has not connected yet may be kept, if report()
    still names it (a running batch job whose worker is on its way).

    Raises
    ------
    BackendFailed, Violation
        saying what the backend did wrong.
    """
    async with harness(spec) as h:
        backend = h.make_backend()
        n = spec.workers
        await h.call(backend, "scale_up", n, **spec.resources)
        connected = set(h.workers().values())
        await h.call(backend, "cancel_pending")
        report = await h.report(backend)
        waiting = sorted(name for name, state in (report or {}).items()
                         if state == "pending")  # fmt: skip
        if waiting:
            raise Violation(
                f"report() after cancel_pending() still says {waiting} are "
                "pending: cancel_pending() stops the workers that have not connected"
            )
        allowed = connected | set(report or ())
        await asyncio.sleep(settle)

        def unexpected() -> list[str]:
            return sorted(set(h.workers().values()) - allowed)

        # one of them may still be on its way out
        await h.until(lambda: not unexpected(), spec.stop_within)
        if unexpected():
            raise Violation(
                f"after {describe_call('scale_up', n)} and cancel_pending(), "
                f"{unexpected()} connected although they had not connected when "
                f"cancel_pending() was called and report() no longer named them "
                f"({report!r}): cancel_pending() stops what has not connected"
            )


async def run_restart(spec: BackendUnderTest, settle: float) -> None:
    """An earlier backend at the same address asks for a worker and is lost
    (no close); a new one, asked for the same, must adopt or remove it: the
    workers that connect are one unit (one worker, or one batch job's).

    Raises
    ------
    BackendFailed, Violation
        saying what the backend did wrong.
    """
    async with harness(spec) as h:
        earlier = h.make_backend()
        await h.call(earlier, "scale_up", 1, **spec.resources)
        restarted = h.make_backend()
        await h.call(restarted, "scale_up", 1, **spec.resources)
        if not await h.until(lambda: h.workers(), spec.start_timeout):
            raise Violation(
                f"after the restart, scale_up(1) brought no worker within "
                f"start_timeout ({spec.start_timeout:g} s)"
            )
        await asyncio.sleep(settle)
        units = {unit_of(restarted, address) for address in h.workers()}
        if len(units) > 1:
            raise Violation(
                f"the earlier backend's worker and the restarted backend's both "
                f"connected ({sorted(h.workers().values())}) for scale_up(1): a "
                "restarted backend adopts (counts, and stops on close) or "
                "removes what an earlier run at its address left"
            )
        await close_and_check(h, restarted, "the restarted backend's close()")


async def run_bad_option(spec: BackendUnderTest) -> None:
    """check_options() takes the spec's options, and refuses an unknown one
    with a ValueError that names it, at once.

    Raises
    ------
    Violation
        saying what the backend did wrong.
    """
    async with spec.environment() as environment:
        options = {**spec.options, **environment.options}
        check = getattr(spec.cls, "check_options", None)
        if check is None:
            raise Violation(
                "the backend has no check_options(): inherit from "
                "dask_adaptive_plugin.Backend, which checks option names"
            )
        _accepts(check, options)
        _refuses(check, {**options, UNKNOWN_OPTION: 1})


def _accepts(check: Callable[..., Any], options: dict[str, Any]) -> None:
    try:
        check(**options)
    except Exception as e:
        raise Violation(
            f"check_options(**{options!r}) refused the options the backend "
            f"runs with: {type(e).__name__}: {e}"
        ) from e


def _refuses(check: Callable[..., Any], options: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        check(**options)
    except ValueError as e:
        if UNKNOWN_OPTION not in str(e):
            raise Violation(
                f"check_options() refused the option {UNKNOWN_OPTION} with "
                f"{str(e)!r}, which does not name it: say which option is wrong"
            ) from e
    except Exception as e:
        raise Violation(
            f"check_options() refused the option {UNKNOWN_OPTION} with "
            f"{type(e).__name__}: {e}; raise ValueError, which the plugin "
            "reports at start-up"
        ) from e
    else:
        raise Violation(
            f"check_options() accepted the unknown option {UNKNOWN_OPTION}: "
            "refuse options you do not know with a ValueError naming them"
        )
    took = time.monotonic() - started
    if took > 5:
        raise Violation(
            f"check_options() took {took:.1f} s to refuse an option: it runs "
            "before the scheduler starts and must not wait on anything"
        )


def cancel_pending_implemented(spec: BackendUnderTest) -> bool:
    return implements(spec.cls, "cancel_pending")
