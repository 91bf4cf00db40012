"""The policies are pure: tested with hand-made snapshots, no cluster."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dask_adaptive_plugin import AdaptivePolicy, FixedPolicy, Snapshot
from dask_adaptive_plugin.policy import choose_idle_workers


@dataclass
class FakeWorker:
    nbytes: int = 0
    memory_limit: int = 1000


def idle_cluster(n: int, since: float = 0.0, nbytes: int = 0, limit: int = 1000) -> dict:
    states = {f"w{i}": FakeWorker(nbytes, limit) for i in range(n)}
    return dict(
        workers=n,
        nthreads=n,
        memory_limit=n * limit,
        idle={a: since for a in states},
        worker_states=states,
    )


def test_scale_from_zero_when_work_waits():
    policy = AdaptivePolicy(maximum=10)
    d = policy.decide(Snapshot(workers=0, queued=3, unassigned_seconds=1.5), now=0)
    assert d.status == "up"
    assert d.n == 1
    assert "3 tasks wait" in d.reason


def test_nothing_to_do_holds_at_zero():
    d = AdaptivePolicy().decide(Snapshot(workers=0), now=0)
    assert d.status == "hold"


def test_queued_work_that_fits_the_target_duration_does_not_grow():
    # 12 s of work on 3 workers: 4 s each, within the 5 s target
    s = Snapshot(workers=3, nthreads=3, queued=50, processing=3,
                 unassigned_seconds=10, processing_seconds=2)  # fmt: skip
    assert AdaptivePolicy().decide(s, now=0).status == "hold"


def test_queued_work_beyond_the_target_duration_grows_to_fit_it():
    s = Snapshot(workers=2, nthreads=2, queued=50, processing=2,
                 unassigned_seconds=30, processing_seconds=2)  # fmt: skip
    d = AdaptivePolicy(target_duration="4s").decide(s, now=0)
    assert (d.status, d.n) == ("up", 8)
    assert "50 tasks wait for a worker" in d.reason


def test_grows_straight_to_target_duration():
    # 100 tasks of 1 s with a 5 s target on one-thread workers: 20 workers
    s = Snapshot(workers=2, nthreads=2, queued=98, processing=2,
                 unassigned_seconds=98.0, processing_seconds=2.0)  # fmt: skip
    d = AdaptivePolicy(target_duration="5s").decide(s, now=0)
    assert (d.status, d.n) == ("up", 20)


def test_never_more_workers_than_runnable_tasks():
    s = Snapshot(workers=1, nthreads=1, queued=2, processing=1, unassigned_seconds=1000)
    assert AdaptivePolicy().decide(s, now=0).n == 3


def test_threads_per_worker_divides_the_need():
    s = Snapshot(workers=0, queued=40, unassigned_seconds=400, threads_per_worker=4)
    assert AdaptivePolicy(target_duration="10s").decide(s, now=0).n == 10


def test_maximum_caps_and_minimum_floors():
    s = Snapshot(workers=0, queued=1000, unassigned_seconds=1000)
    assert AdaptivePolicy(maximum=7).decide(s, now=0).n == 7
    d = AdaptivePolicy(minimum=3).decide(Snapshot(workers=0), now=0)
    assert (d.status, d.n) == ("up", 3)
    assert "minimum" in d.reason


def test_pending_workers_are_not_asked_for_twice():
    s = Snapshot(workers=0, pending=4, queued=100, unassigned_seconds=5)
    assert AdaptivePolicy(maximum=4).decide(s, now=0).status == "hold"


def test_idle_queued_work_does_not_grow():
    # queued tasks while a worker is idle: the scheduler is about to assign them
    s = Snapshot(workers=2, nthreads=2, queued=1, idle={"w0": 0.0},
                 worker_states={"w0": FakeWorker()})  # fmt: skip
    assert AdaptivePolicy().decide(s, now=0).status == "hold"


def test_tasks_without_a_suitable_worker_grow_with_resource_needs():
    s = Snapshot(workers=2, nthreads=2, no_worker=1, unassigned_seconds=1,
                 resource_needs={"memory": 8e9}, **{"idle": {"w0": 0.0}})  # fmt: skip
    d = AdaptivePolicy().decide(s, now=0)
    assert d.status == "up"
    assert d.kwargs == {"memory": 8e9}


def test_memory_pressure_grows():
    s = Snapshot(workers=2, nthreads=2, memory_limit=2000, stored_bytes=1500)
    d = AdaptivePolicy().decide(s, now=0)
    assert d.status == "up"
    assert d.n >= 3
    assert "memory" in d.reason


def test_idle_workers_retire_after_the_timeout_only():
    policy = AdaptivePolicy(idle_timeout=10)
    s = Snapshot(**idle_cluster(3, since=100.0))
    early = policy.decide(s, now=105)
    assert early.status == "hold"
    assert early.deadline == 110
    late = policy.decide(s, now=110)
    assert late.status == "down"
    assert sorted(late.workers) == ["w0", "w1", "w2"]


def test_retiring_some_names_when_the_next_idle_worker_expires():
    s = Snapshot(**{**idle_cluster(2), "idle": {"w0": 100.0, "w1": 101.0}})
    d = AdaptivePolicy(idle_timeout=10).decide(s, now=110)
    assert d.workers == ("w0",)
    assert d.deadline == 111  # so that a refused worker is looked at again


def test_minimum_is_kept_when_retiring():
    s = Snapshot(**idle_cluster(5))
    d = AdaptivePolicy(minimum=2, idle_timeout=1).decide(s, now=10)
    assert len(d.workers) == 3


def test_least_data_goes_first_and_memory_stays_under_threshold():
    states = {"a": FakeWorker(300), "b": FakeWorker(10), "c": FakeWorker(200)}
    s = Snapshot(workers=3, nthreads=3, memory_limit=3000, stored_bytes=400,
                 idle=dict.fromkeys(states, 0.0), worker_states=states)  # fmt: skip
    # 400 bytes need 800 bytes of limit at a 0.5 threshold: one worker must stay
    d = AdaptivePolicy(idle_timeout=1).decide(s, now=10)
    assert d.workers == ("b", "c")


def test_busy_work_keeps_needed_workers():
    s = Snapshot(**{**idle_cluster(4), "processing": 2, "processing_seconds": 100,
                    "idle": {"w2": 0.0, "w3": 0.0}})  # fmt: skip
    d = AdaptivePolicy(idle_timeout=1).decide(s, now=10)
    assert sorted(d.workers) == ["w2", "w3"]


def test_choose_idle_workers_costs_nothing_when_none_may_go():
    s = Snapshot(**idle_cluster(3))
    assert choose_idle_workers(s, 0, now=100, idle_timeout=1) == ([], None)


def test_fixed_policy_keeps_n():
    policy = FixedPolicy(n=3)
    assert policy.decide(Snapshot(workers=1), now=0).n == 3
    assert policy.decide(Snapshot(**idle_cluster(5)), now=0).status == "hold"
    d = policy.decide(Snapshot(**idle_cluster(5)), now=100)
    assert d.status == "down"
    assert len(d.workers) == 2
    assert policy.decide(Snapshot(workers=2, pending=1), now=0).status == "hold"


def test_fixed_policy_defaults_to_minimum():
    assert FixedPolicy(minimum=2).n == 2


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
