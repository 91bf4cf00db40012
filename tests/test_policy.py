"""The policies are pure: tested with hand-made snapshots and supplies, no cluster."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dask_adaptive_plugin import AdaptivePolicy, FixedPolicy, Need, Pool, Snapshot
from dask_adaptive_plugin.policy import PoolSupply, Supply, choose_idle_workers


@dataclass
class FakeWorker:
    nbytes: int = 0
    memory_limit: int = 1000


def pool(name="default", **kwargs) -> Pool:
    kwargs.setdefault("idle_timeout", 10.0)
    return Pool(name, "local", **kwargs)


def one_pool(
    running=0, on_the_way=0, maximum=None, minimum=0, tpw=1.0, idle_timeout=10.0, **kw
) -> Supply:
    """The one-pool case, with its workers w0, w1, ... running."""
    p = PoolSupply(
        pool(idle_timeout=idle_timeout),
        maximum=maximum,
        running=running,
        on_the_way=on_the_way,
        threads_per_worker=tpw,
    )
    pool_of = {f"w{i}": "default" for i in range(running)}
    return Supply(
        (p,), minimum=minimum, maximum=kw.get("global_maximum"), pool_of=pool_of
    )


def plain(tasks: int, seconds: float, waiting: int | None = None) -> Need:
    return Need({}, tasks, seconds, tasks if waiting is None else waiting)


def idle_cluster(
    n: int, since: float = 0.0, nbytes: int = 0, limit: int = 1000
) -> dict:
    states = {f"w{i}": FakeWorker(nbytes, limit) for i in range(n)}
    return dict(
        workers=n,
        nthreads=n,
        memory_limit=n * limit,
        idle={a: since for a in states},
        worker_states=states,
    )


def decide(policy, snapshot: Snapshot, supply: Supply, now: float = 0.0):
    return policy.decide(snapshot, supply, now)


# -- growing ---------------------------------------------------------------------------


def test_scale_from_zero_when_work_waits():
    s = Snapshot(workers=0, queued=3, needs=(plain(3, 1.5),))
    plan = decide(AdaptivePolicy(), s, one_pool(maximum=10))
    [up] = plan.ups
    assert (up.pool, up.n) == ("default", 1)
    assert "3 tasks wait" in up.reason


def test_nothing_to_do_holds_at_zero():
    plan = decide(AdaptivePolicy(), Snapshot(workers=0), one_pool())
    assert not plan.ups and not plan.downs
    assert plan.reason == "no runnable tasks"


def test_queued_work_that_fits_the_target_duration_does_not_grow():
    # 12 s of work on 3 workers: 4 s each, within the 5 s target
    s = Snapshot(
        workers=3, nthreads=3, queued=50, processing=3, needs=(plain(53, 12, 50),)
    )
    assert not decide(AdaptivePolicy(), s, one_pool(running=3)).ups


def test_queued_work_beyond_the_target_duration_grows_to_fit_it():
    s = Snapshot(
        workers=2, nthreads=2, queued=50, processing=2, needs=(plain(52, 32, 50),)
    )
    [up] = decide(AdaptivePolicy(target_duration="4s"), s, one_pool(running=2)).ups
    assert up.n == 8
    assert "50 tasks wait for a worker" in up.reason


def test_grows_straight_to_target_duration():
    # 100 tasks of 1 s with a 5 s target on one-thread workers: 20 workers
    s = Snapshot(
        workers=2, nthreads=2, queued=98, processing=2, needs=(plain(100, 100.0, 98),)
    )
    [up] = decide(AdaptivePolicy(target_duration="5s"), s, one_pool(running=2)).ups
    assert up.n == 20


def test_never_more_workers_than_runnable_tasks():
    s = Snapshot(
        workers=1, nthreads=1, queued=2, processing=1, needs=(plain(3, 1000, 2),)
    )
    [up] = decide(AdaptivePolicy(), s, one_pool(running=1)).ups
    assert up.n == 3


def test_threads_per_worker_divides_the_need():
    s = Snapshot(workers=0, queued=40, needs=(plain(40, 400),))
    [up] = decide(AdaptivePolicy(target_duration="10s"), s, one_pool(tpw=4)).ups
    assert up.n == 10


def test_maximum_caps_and_minimum_floors():
    s = Snapshot(workers=0, queued=1000, needs=(plain(1000, 1000),))
    [up] = decide(AdaptivePolicy(), s, one_pool(maximum=7)).ups
    assert up.n == 7
    [up] = decide(AdaptivePolicy(), Snapshot(workers=0), one_pool(minimum=3)).ups
    assert up.n == 3
    assert "minimum" in up.reason


def test_the_global_maximum_caps_all_pools_together():
    s = Snapshot(workers=0, queued=1000, needs=(plain(1000, 1000),))
    [up] = decide(AdaptivePolicy(), s, one_pool(global_maximum=4)).ups
    assert up.n == 4


def test_workers_on_their_way_are_not_asked_for_twice():
    s = Snapshot(workers=0, queued=100, needs=(plain(100, 5),))
    assert not decide(AdaptivePolicy(), s, one_pool(on_the_way=4, maximum=4)).ups
    # and with room: only the difference is added to the total
    s = Snapshot(workers=0, queued=100, needs=(plain(100, 40),))
    [up] = decide(AdaptivePolicy(), s, one_pool(on_the_way=4)).ups
    assert up.n == 8


def test_queued_work_with_an_idle_worker_that_can_take_it_does_not_grow():
    # one worker busy, one idle, and one more task than the busy one runs: the
    # scheduler is about to give it to the idle worker, no third worker
    s = Snapshot(workers=2, nthreads=2, queued=1, processing=1, needs=(plain(2, 8, 1),),
                 idle={"w1": 0.0}, worker_states={"w0": FakeWorker(), "w1": FakeWorker()})  # fmt: skip
    plan = decide(AdaptivePolicy(target_duration="1s"), s, one_pool(running=2))
    assert not plan.ups
    # without the idle worker, the same work grows the cluster
    s = Snapshot(workers=1, nthreads=1, queued=1, processing=1, needs=(plain(2, 8, 1),))
    [up] = decide(AdaptivePolicy(target_duration="1s"), s, one_pool(running=1)).ups
    assert up.n == 2


def test_resource_needs_reach_an_undeclared_pool_as_kwargs():
    # no worker of the pool can run it (it has no worker): one more, asked
    # with what the task needs
    gpu = Need({"GPU": 2}, 1, 1.0, 1)
    s = Snapshot(workers=2, nthreads=2, no_worker=1, needs=(gpu,), idle={"w0": 0.0})
    [up] = decide(AdaptivePolicy(), s, one_pool(running=2)).ups
    assert up.kwargs == {"GPU": 2}
    assert up.n == 3
    # once one is on its way, none more
    assert not decide(AdaptivePolicy(), s, one_pool(running=2, on_the_way=1)).ups


def test_a_need_the_pool_turned_out_to_lack_is_unsatisfiable():
    gpu = Need({"GPU": 1}, 5, 2.5, 5)
    s = Snapshot(workers=1, nthreads=1, no_worker=5, needs=(gpu,))
    p = PoolSupply(pool(), running=1, lacks=frozenset({"GPU"}))
    plan = decide(AdaptivePolicy(), s, Supply((p,)))
    assert not plan.ups
    assert plan.unsatisfiable == (gpu,)


def test_memory_pressure_grows():
    s = Snapshot(workers=2, nthreads=2, memory_limit=2000, stored_bytes=1500)
    [up] = decide(AdaptivePolicy(), s, one_pool(running=2)).ups
    # 1500 bytes at 0.5 of 1000 bytes per worker need 3 workers; growing by the
    # scale factor gives 4: the larger
    assert up.n == 4
    assert "memory" in up.reason
    assert up.cause == "memory"


# -- pools ------------------------------------------------------------------------------


def two_pools(cpu_running=0, gpu_running=0, cpu_available=True, **kw) -> Supply:
    cpu = PoolSupply(
        pool("cpu", resources={}),
        maximum=2,
        running=cpu_running,
        available=cpu_available,
    )
    gpu = PoolSupply(
        pool("gpu", resources={"GPU": 1}, cost=5), maximum=1, running=gpu_running
    )
    pool_of = {f"c{i}": "cpu" for i in range(cpu_running)}
    pool_of.update({f"g{i}": "gpu" for i in range(gpu_running)})
    return Supply((cpu, gpu), pool_of=pool_of, **kw)


def test_plain_work_never_starts_a_worker_in_a_dearer_pool_with_room_in_a_cheaper():
    s = Snapshot(workers=0, queued=2, needs=(plain(2, 2),))
    [up] = decide(AdaptivePolicy(target_duration="1s"), s, two_pools()).ups
    assert (up.pool, up.n) == ("cpu", 2)


def test_plain_work_spills_to_the_next_pool_when_the_cheapest_is_full():
    s = Snapshot(workers=2, queued=10, needs=(plain(12, 12, 10),))
    cheap = PoolSupply(pool("cheap", resources={}), maximum=2, running=2)
    dear = PoolSupply(pool("dear", resources={}, cost=3), maximum=2)
    supply = Supply((cheap, dear), pool_of={"c0": "cheap", "c1": "cheap"})
    [up] = decide(AdaptivePolicy(target_duration="1s"), s, supply).ups
    assert (up.pool, up.n) == ("dear", 2)


def test_plain_work_starts_no_worker_in_a_pool_of_special_resources():
    s = Snapshot(workers=2, queued=10, needs=(plain(12, 12, 10),))
    assert not decide(
        AdaptivePolicy(target_duration="1s"), s, two_pools(cpu_running=2)
    ).ups
    # unless every pool has special resources
    only_gpu = Supply((PoolSupply(pool("gpu", resources={"GPU": 1}), maximum=2),))
    [up] = decide(AdaptivePolicy(target_duration="1s"), s, only_gpu).ups
    assert (up.pool, up.n) == ("gpu", 2)


def test_gpu_work_starts_one_worker_in_the_gpu_pool_only():
    gpu = Need({"GPU": 1}, 1, 0.5, 1)
    s = Snapshot(workers=0, no_worker=1, needs=(gpu,))
    [up] = decide(AdaptivePolicy(), s, two_pools()).ups
    assert (up.pool, up.n, dict(up.kwargs)) == ("gpu", 1, {"GPU": 1})


def test_a_need_no_pool_provides_is_unsatisfiable_and_grows_nothing():
    fpga = Need({"FPGA": 1}, 3, 1.5, 3)
    plan = decide(
        AdaptivePolicy(), Snapshot(workers=0, no_worker=3, needs=(fpga,)), two_pools()
    )
    assert not plan.ups
    assert plan.unsatisfiable == (fpga,)


def test_an_unavailable_pool_falls_back_to_the_next_that_fits():
    s = Snapshot(workers=0, queued=10, needs=(plain(10, 10),))
    spot = PoolSupply(pool("spot", resources={}), available=False)
    on_demand = PoolSupply(pool("on-demand", resources={}, cost=3))
    [up] = decide(AdaptivePolicy(), s, Supply((spot, on_demand))).ups
    assert up.pool == "on-demand"


def test_when_demand_falls_the_dearer_pools_idle_workers_go_first():
    # one runnable task: one worker is needed; both pools have an idle one
    s = Snapshot(workers=2, processing=0, queued=1, needs=(plain(1, 0.5),),
                 idle={"c0": 0.0, "g0": 0.0},
                 worker_states={"c0": FakeWorker(), "g0": FakeWorker()})  # fmt: skip
    plan = decide(AdaptivePolicy(), s, two_pools(cpu_running=1, gpu_running=1), now=100)
    [down] = plan.downs
    assert (down.pool, down.workers) == ("gpu", ("g0",))


def test_workers_there_are_kept_before_new_ones_are_started():
    # a gpu worker is running: plain work uses it instead of starting a cpu one
    s = Snapshot(workers=1, queued=1, needs=(plain(1, 0.5),))
    plan = decide(AdaptivePolicy(), s, two_pools(gpu_running=1))
    assert not plan.ups and not plan.downs


def test_pool_minimums_are_kept():
    cpu = PoolSupply(pool("cpu", minimum=2), maximum=4)
    [up] = decide(AdaptivePolicy(), Snapshot(workers=0), Supply((cpu,))).ups
    assert (up.pool, up.n) == ("cpu", 2)


# -- shrinking --------------------------------------------------------------------------


def test_idle_workers_retire_after_the_timeout_only():
    s = Snapshot(**idle_cluster(3, since=100.0))
    early = decide(AdaptivePolicy(), s, one_pool(running=3), now=105)
    assert not early.downs
    assert early.deadline == 110
    [late] = decide(AdaptivePolicy(), s, one_pool(running=3), now=110).downs
    assert sorted(late.workers) == ["w0", "w1", "w2"]


def test_retiring_some_names_when_the_next_idle_worker_expires():
    s = Snapshot(**{**idle_cluster(2), "idle": {"w0": 100.0, "w1": 106.0}})
    plan = decide(AdaptivePolicy(), s, one_pool(running=2), now=110)
    [down] = plan.downs
    assert down.workers == ("w0",)
    assert plan.deadline == 116  # so that a refused worker is looked at again


def test_workers_within_half_their_timeout_go_with_those_past_it():
    # a pool retires one batch at a time: w1 (idle 6 of 10 s) goes with w0;
    # w2 (idle 4 s) does not, nor does w3, held back until 115
    idle = {"w0": 100.0, "w1": 104.0, "w2": 106.0, "w3": 104.0}
    s = Snapshot(**{**idle_cluster(4), "idle": idle})
    supply = one_pool(running=4)
    supply = Supply(supply.pools, pool_of=supply.pool_of, held={"w3": 115.0})
    plan = decide(AdaptivePolicy(), s, supply, now=110)
    [down] = plan.downs
    assert down.workers == ("w0", "w1")
    # none past its timeout: none goes early
    alone = Snapshot(**{**idle_cluster(2), "idle": {"w0": 104.0, "w1": 105.0}})
    assert not decide(AdaptivePolicy(), alone, one_pool(running=2), now=110).downs


def test_held_workers_are_not_chosen_before_their_time():
    s = Snapshot(**idle_cluster(2))
    supply = one_pool(running=2)
    supply = Supply(supply.pools, pool_of=supply.pool_of, held={"w0": 50.0})
    plan = decide(AdaptivePolicy(), s, supply, now=20)
    [down] = plan.downs
    assert down.workers == ("w1",)
    assert plan.deadline == 50


def test_minimum_is_kept_when_retiring():
    s = Snapshot(**idle_cluster(5))
    [down] = decide(
        AdaptivePolicy(), s, one_pool(running=5, minimum=2, idle_timeout=1), now=10
    ).downs
    assert len(down.workers) == 3


def test_least_data_goes_first_and_memory_stays_under_threshold():
    states = {"a": FakeWorker(300), "b": FakeWorker(10), "c": FakeWorker(200)}
    s = Snapshot(workers=3, nthreads=3, memory_limit=3000, stored_bytes=400,
                 idle=dict.fromkeys(states, 0.0), worker_states=states)  # fmt: skip
    supply = Supply(
        (PoolSupply(pool(idle_timeout=1), running=3),),
        pool_of=dict.fromkeys(states, "default"),
    )
    # 400 bytes need 800 bytes of limit at a 0.5 threshold: one worker must stay
    [down] = decide(AdaptivePolicy(), s, supply, now=10).downs
    assert down.workers == ("b", "c")


def test_busy_work_keeps_needed_workers():
    s = Snapshot(**{**idle_cluster(4), "processing": 2, "needs": (plain(2, 100, 0),),
                    "idle": {"w2": 0.0, "w3": 0.0}})  # fmt: skip
    [down] = decide(
        AdaptivePolicy(), s, one_pool(running=4, idle_timeout=1), now=10
    ).downs
    assert sorted(down.workers) == ["w2", "w3"]


def test_choose_idle_workers_costs_nothing_when_none_may_go():
    s = Snapshot(**idle_cluster(3))
    assert choose_idle_workers(s, one_pool(running=3), {"default": 0}, now=100) == (
        {},
        None,
    )


def test_workers_no_pool_claims_go_before_any_pools():
    s = Snapshot(**idle_cluster(2))
    supply = Supply(
        (PoolSupply(pool(idle_timeout=1), running=1),),
        unmanaged=1,
        pool_of={"w0": "default", "w1": None},
    )
    [down] = decide(FixedPolicy(n=1), s, supply, now=10).downs
    assert (down.pool, down.workers) == (None, ("w1",))


# -- the fixed policy ----------------------------------------------------------------------


def test_fixed_policy_keeps_n():
    policy = FixedPolicy(n=3)
    [up] = decide(policy, Snapshot(workers=1), one_pool(running=1)).ups
    assert up.n == 3
    assert not decide(policy, Snapshot(**idle_cluster(5)), one_pool(running=5)).downs
    [down] = decide(
        policy, Snapshot(**idle_cluster(5)), one_pool(running=5), now=100
    ).downs
    assert len(down.workers) == 2
    assert not decide(
        policy, Snapshot(workers=2), one_pool(running=2, on_the_way=1)
    ).ups


def test_fixed_policy_defaults_to_the_global_minimum_and_keeps_the_maximum():
    [up] = decide(FixedPolicy(), Snapshot(workers=0), one_pool(minimum=2)).ups
    assert up.n == 2
    [up] = decide(FixedPolicy(n=5), Snapshot(workers=0), one_pool(maximum=1)).ups
    assert up.n == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_duration": "soon"}, "target_duration"),
        ({"target_duration": 0}, "target_duration"),
        ({"scale_factor": 1}, "scale_factor"),
        ({"memory_threshold": 1.5}, "memory_threshold"),
        ({"memory_threshold": "half"}, "memory_threshold"),
    ],
)
def test_bad_policy_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptivePolicy(**kwargs)


# -- what a worker costs: retention and the stabilization window ---------------------------


def measured(
    startup: float, p90: float | None = None, cost: float = 1.0, **kw
) -> PoolSupply:
    return PoolSupply(
        pool(idle_timeout=2.0, cost=cost, resources={}, **kw.pop("pool", {})),
        startup=startup,
        startup_p90=p90 if p90 is not None else startup,
        **kw,
    )


def test_an_idle_worker_is_kept_for_about_one_start_up_time():
    # before any gap is seen: the ski-rental break-even, L·A/(price·running),
    # A the cluster's average cost rate (here its current rate: 1 worker)
    slow = Supply((measured(30.0, running=1),))
    assert timeouts_after_one_look(AdaptivePolicy(), slow)["default"] == 30.0
    # a start-up faster than idle_timeout: idle_timeout is the floor
    fast = Supply((measured(0.5, running=1),))
    assert timeouts_after_one_look(AdaptivePolicy(), fast)["default"] == 2.0
    # never longer than one start-up at the cheapest pool's price: the
    # break-even here (cost rate 6: L·A = 180) would be 180 s and 36 s
    cheap = PoolSupply(pool("cheap", cost=1, idle_timeout=2), startup=30, running=1)
    dear = PoolSupply(pool("dear", cost=5, idle_timeout=2), startup=30, running=1)
    assert timeouts_after_one_look(AdaptivePolicy(), Supply((cheap, dear))) == {
        "cheap": 30,
        "dear": 6,
        None: 6,
    }
    # retention="idle-timeout": idle_timeout alone, as distributed's Adaptive
    plain = AdaptivePolicy(retention="idle-timeout")
    assert timeouts_after_one_look(plain, slow)["default"] == 2.0


def timeouts_after_one_look(policy: AdaptivePolicy, supply: Supply) -> dict:
    """The retentions once ``policy`` has seen ``supply`` (and its cost rate)."""
    policy.decide(Snapshot(workers=supply.total), supply, now=0)
    return policy.timeouts(supply, now=0)


def test_retention_idle_timeout_retires_at_idle_timeout_whatever_the_startup():
    s = Snapshot(**idle_cluster(1, since=100.0))
    supply = Supply((measured(30.0, running=1),), pool_of={"w0": "default"})
    plain = AdaptivePolicy(stabilization=0, retention="idle-timeout")
    [down] = decide(plain, s, supply, now=102).downs  # idle 2 s: its idle_timeout
    assert down.workers == ("w0",) and "idle for 2s" in down.reason


def test_a_bad_retention_is_refused_naming_the_option():
    with pytest.raises(
        ValueError, match="retention.*'never'.*'startup' or 'idle-timeout'"
    ):
        AdaptivePolicy(retention="never")


def test_retention_decides_when_an_idle_worker_goes():
    s = Snapshot(**idle_cluster(1, since=100.0))
    supply = Supply((measured(30.0, running=1),), pool_of={"w0": "default"})
    early = decide(AdaptivePolicy(stabilization=0), s, supply, now=110)
    assert not early.downs and early.deadline == 130
    [down] = decide(AdaptivePolicy(stabilization=0), s, supply, now=130).downs
    assert down.workers == ("w0",) and "idle for 30s" in down.reason


def test_the_stabilization_window_keeps_what_was_wanted_lately():
    # a window of 3 retentions; the retention is 2 s (the idle_timeout floor
    # over the break-even 2 s · 3 workers / 3 workers): 6 s
    policy = AdaptivePolicy(stabilization=3)
    supply = Supply(
        (measured(2.0, running=3),),
        pool_of={f"w{i}": "default" for i in range(3)},
    )
    busy = Snapshot(workers=3, nthreads=3, processing=3, needs=(plain(3, 30, 0),))
    assert not decide(policy, busy, supply, now=100).downs  # wants 3
    idle = Snapshot(**idle_cluster(3, since=101.0))
    held = decide(policy, idle, supply, now=104)  # idle 3 s, past the 2 s retention
    assert not held.downs
    assert held.deadline == 106  # when the window forgets the 3
    [down] = decide(policy, idle, supply, now=106).downs
    assert len(down.workers) == 3


def test_without_a_measurement_there_is_no_window_and_idle_timeout_rules():
    policy = AdaptivePolicy()
    supply = one_pool(running=2, idle_timeout=2)
    busy = Snapshot(workers=2, nthreads=2, processing=2, needs=(plain(2, 20, 0),))
    decide(policy, busy, supply, now=100)
    [down] = decide(
        policy, Snapshot(**idle_cluster(2, since=100.0)), supply, now=102
    ).downs
    assert len(down.workers) == 2


def test_a_hint_floor_keeps_workers_in_its_pool():
    p = PoolSupply(pool(resources={}), floor=3)
    [up] = decide(AdaptivePolicy(), Snapshot(workers=0), Supply((p,))).ups
    assert (up.n, up.cause) == (3, "minimum")


def test_no_pools_is_a_plan_with_nothing_to_do():
    plan = decide(
        AdaptivePolicy(), Snapshot(workers=0, needs=(plain(3, 30),)), Supply(())
    )
    assert (plan.ups, plan.downs, plan.desired) == ((), (), {})
