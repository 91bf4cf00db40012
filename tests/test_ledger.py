"""The ledger on its own: pure, with times passed in."""

from __future__ import annotations

from dask_adaptive_plugin.ledger import FAILED, LAUNCHING, RUNNING, Ledger


def test_a_large_request_is_measured_by_all_its_arrivals_not_its_last():
    """Workers of one request arrive fastest first: a sample spread over the
    request gives its median, where the last 200 arrivals would give its tail."""
    ledger = Ledger(["spot"])
    ledger.request("spot", 1000, now=0.0, timeout=3600)
    for i in range(1000):  # latencies 1 s ... 1000 s, in arrival order
        ledger.arrived(f"tcp://w{i}", f"w{i}", {}, 1, now=i + 1.0, unnamed_from=["spot"])
    latency = ledger.latency["spot"]
    assert 450 <= latency.median <= 550
    assert 850 <= latency.p90 <= 950
    assert ledger.startup["spot"].count == 1000  # every one counts for metrics


def test_overdue_entries_are_those_past_their_deadline_in_request_order():
    ledger = Ledger(["hpc"])
    first = ledger.request("hpc", 2, now=0.0, timeout=10)
    second = ledger.request("hpc", 2, now=5.0, timeout=10)
    assert ledger.overdue("hpc", now=9) == []
    assert ledger.overdue("hpc", now=10) == first
    ledger.cancel(first[:1], now=10, why="cancelled")
    assert ledger.overdue("hpc", now=15) == first[1:] + second
    assert ledger.next_deadline() == 10
    assert first[0].state == FAILED and first[1].state == "requested"


def test_a_restarted_worker_comes_back_under_its_name_without_a_new_sample():
    ledger = Ledger(["local"])
    ledger.request("local", 1, now=0.0, timeout=60)
    entry = ledger.arrived("tcp://a", "w0", {}, 1, now=2.0, unnamed_from=["local"])
    ledger.restarting()
    departure = ledger.left("tcp://a", now=100.0, timeout=60)
    assert not departure.crashed and entry.state == LAUNCHING
    again = ledger.arrived("tcp://b", "w0", {}, 1, now=101.0)
    assert again is entry and entry.state == RUNNING
    assert ledger.latency["local"].samples == deque_of([2.0])  # not 101 s


def deque_of(values):
    from collections import deque

    from dask_adaptive_plugin.ledger import LATENCY_SAMPLES

    return deque(values, maxlen=LATENCY_SAMPLES)


def test_the_backoff_doubles_to_its_cap_and_stays_there_for_any_count():
    """A pool that never delivers counts failures as long as it runs: past
    about 1,000 the doubling overflowed a float (found by the simulator)."""
    from dask_adaptive_plugin.planner import BACKOFF_CAP, backoff

    assert [backoff(n) for n in range(1, 5)] == [1, 2, 4, 8]
    assert backoff(7) == backoff(10**6) == BACKOFF_CAP
