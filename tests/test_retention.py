"""The retention is pure: its gaps, cost rate and hold from hand-made sequences."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dask_adaptive_plugin import AdaptivePolicy, Need, Pool, Snapshot
from dask_adaptive_plugin.policy import PoolSupply, Supply
from dask_adaptive_plugin.retention import ENOUGH_GAPS, CostRate, Gap, Gaps, Retention


def gaps_of(*desired: tuple[float, int]) -> Gaps:
    gaps = Gaps()
    for now, n in desired:
        gaps.observe(now, n)
    return gaps


def test_a_rise_ends_the_newest_falls_first():
    # 3 wanted; 2 fewer at 10, 1 fewer at 12; 2 wanted again at 20: the
    # worker freed at 12 and one of those freed at 10 are the ones reused
    gaps = gaps_of((0, 3), (10, 1), (12, 0), (20, 2))
    assert list(gaps.seen) == [Gap(8, 1, 2), Gap(10, 1, 2)]
    assert gaps.falls == [[10, 1]]  # one freed at 10 is still not wanted
    # growth beyond what fell is no gap
    gaps.observe(30, 5)
    assert list(gaps.seen)[2:] == [Gap(20, 1, 3)]
    assert gaps.falls == []


def test_the_best_hold_covers_the_gaps_that_pay_and_no_more():
    # 20 workers, gaps of 5 s (bridging costs 100 cost-seconds) and 600 s;
    # a start-up's wait costs 300 cost-seconds to all the work that comes back
    gaps = Gaps()
    for seconds in (5, 600, 5, 600):
        gaps.seen.append(Gap(seconds, 20, 20))
    assert gaps.best_hold(floor=2, price=1, wait_cost=300) == 5
    # a wait worth less than bridging even the short gaps: the floor
    assert gaps.best_hold(floor=2, price=1, wait_cost=50) == 2
    # a dearer worker is kept for less
    assert gaps.best_hold(floor=2, price=10, wait_cost=300) == 2


def test_a_hold_that_covers_every_gap_seen_stretches_to_the_break_even():
    gaps = Gaps()
    for seconds in (5, 30, 10):
        gaps.seen.append(Gap(seconds, 10, 10))
    # bridging every gap pays; a worker's share of a 4,000 s wait is 400 s
    assert gaps.best_hold(floor=2, price=1, wait_cost=4000) == 400
    # at twice the price, 200 s
    assert gaps.best_hold(floor=2, price=2, wait_cost=4000) == 200


def test_the_cost_rate_is_the_average_since_the_first_worker_or_work():
    rate = CostRate()
    rate.observe(0, 0.0, active=False)  # nothing yet: not started
    assert rate.average(5) == 0.0
    rate.observe(10, 2.0, active=True)
    assert rate.average(10) == 2.0  # the current rate at first
    rate.observe(20, 0.0, active=False)  # 2 workers for 10 s, then none
    assert rate.average(30) == pytest.approx(1.0)


def test_the_hold_is_the_break_even_until_enough_gaps_then_learned():
    retention = Retention()

    def hold(now: float, startup: float | None = 30, longest: float = 30) -> float:
        return retention.hold(
            "p", now, startup, price=1, running=4, floor=2, longest=longest
        )

    assert hold(0, startup=None) == 2  # no start-up measured: the floor
    retention.observe(0, 4.0, {"p": 4})  # 4 workers of cost 1
    assert hold(0) == 30  # L·A/(price·running) = 30·4/4
    assert hold(0, longest=10) == 10  # never above one start-up (cheapest)
    # gaps come in: 4 workers wanted again 3 s after each fall
    t = 0.0
    for _ in range(ENOUGH_GAPS):
        retention.observe(t + 1, 4.0, {"p": 0})
        retention.observe(t + 4, 4.0, {"p": 4})
        t += 4
    # every gap (3 s) is bridged: stretched to a worker's share, 30·4/4
    assert hold(t) == 30
    # then long gaps, which holding does not pay for: the short ones are
    # still bridged, the long ones not
    for _ in range(4 * ENOUGH_GAPS):
        retention.observe(t + 1, 4.0, {"p": 0})
        retention.observe(t + 500, 4.0, {"p": 4})
        t += 500
    assert hold(t) == 3


@dataclass
class Worker:
    nbytes: int = 0
    memory_limit: int = 1000


def pool_supply(running: int, startup: float = 30.0) -> Supply:
    p = PoolSupply(
        Pool("default", "local", idle_timeout=2.0, resources={}),
        running=running,
        startup=startup,
        startup_p90=startup,
    )
    return Supply((p,), pool_of={f"w{i}": "default" for i in range(running)})


@pytest.mark.parametrize(("pause", "kept"), [(4.0, True), (300.0, False)])
def test_the_policy_keeps_idle_workers_through_the_pauses_it_has_seen(pause, kept):
    """Bursts of 4 workers' work, each followed by ``pause``: after a few,
    workers idle 3 s are kept when the pauses are short, not when long."""
    policy = AdaptivePolicy()
    supply = pool_supply(running=4)
    busy = Snapshot(workers=4, nthreads=4, processing=4, needs=(Need({}, 4, 40, 0),))
    t = 0.0
    for _ in range(2 * ENOUGH_GAPS):
        policy.decide(busy, supply, t)
        t += 10
        idle = Snapshot(
            workers=4,
            nthreads=4,
            memory_limit=4000,
            idle={f"w{i}": t for i in range(4)},
            worker_states={f"w{i}": Worker() for i in range(4)},
        )
        policy.decide(idle, supply, t)
        t += pause
    idle_since = t - pause
    plan = policy.decide(idle, supply, idle_since + 3)
    assert (not plan.downs) == kept
