"""Users who know what is coming ask for workers ahead: ``request_workers``."""

from __future__ import annotations

import pytest
from distributed.utils_test import gen_test

from dask_adaptive_plugin import request_workers
from helpers import adaptive_cluster, events, statuses, until


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_request_starts_workers_ahead_of_work_until_it_expires():
    async with adaptive_cluster(maximum=4, idle_timeout="100ms") as (s, c, plugin, _):
        await request_workers(c, 3, duration="2s")
        await until(lambda: len(s.workers) == 3, what="three workers, with no work")
        [request] = events(s, "request")
        assert (request["n"], request["pool"], request["for"]) == (3, None, 2.0)
        # the floor lasts 2 s; then the idle workers go
        await until(lambda: events(s, "request-expired"), timeout=10)
        await until(lambda: not s.workers, what="retired once the request expired")
        assert statuses(plugin).count("up") == 1


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_request_for_an_unknown_pool_is_refused_with_an_event():
    async with adaptive_cluster(maximum=4) as (s, c, plugin, _):
        await request_workers(c, 2, pool="gpu")
        await until(lambda: events(s, "error"))
        [error] = events(s, "error")
        assert error["action"] == "request"
        assert "unknown pool 'gpu'" in error["error"] and "default" in error["error"]
        assert not s.workers


@pytest.mark.parametrize(
    "n, duration, message",
    [(-1, "1m", "n .*-1"), ("many", "1m", "n .*'many'"), (2, "soon", "duration .*'soon'"), (2, 0, "duration .*0")],
)
def test_bad_requests_fail_where_they_are_made(n, duration, message):
    with pytest.raises(ValueError, match=message):
        request_workers(None, n, duration=duration)
