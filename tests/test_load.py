"""Under load: many clients submitting large graphs at once.

The statistics must equal a full recomputation at the end, and nothing the
plugin keeps may grow with the number of tasks. The size is
``DASK_ADAPTIVE_LOAD_TASKS`` tasks in all (default 8,000, about 20 s here;
docs/reliability.md gives a larger run). Workers are real processes, so that
the scheduler's process runs only the scheduler and the clients. Throughput is the
business of the overhead benchmark (tests/benchmarks/overhead.py), not of a
test.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from benchmarks.overhead import expected_sum, tree_sum_graph
from distributed import Client
from distributed.utils_test import gen_test
from helpers import adaptive_cluster
from test_stats import recount

TASKS = int(os.environ.get("DASK_ADAPTIVE_LOAD_TASKS", 8_000))
CLIENTS = 4


def plugin_sizes(plugin) -> dict[str, int]:
    """Lengths of every container the plugin keeps (nothing else grows)."""
    stats, ledger = plugin.stats, plugin.ledger
    return {
        "classes": len(stats.work),
        "prefixes": sum(len(p) for p in stats.work.values()),
        "limits": len(stats.limits),
        "idle": len(stats.idle),
        "busy": len(stats.busy),
        "ledger": len(ledger.entries()),
        "log": len(plugin.log),
    }


@pytest.mark.timeout(3600)
@gen_test(timeout=3600, clean_kwargs={"threads": False})
async def test_many_clients_and_a_large_graph_keep_exact_bounded_statistics():
    per_client = TASKS // CLIENTS
    async with adaptive_cluster(backend="local", maximum=2) as (s, _, plugin, watcher):
        clients = [Client(s.address, asynchronous=True) for _ in range(CLIENTS)]
        await asyncio.gather(*clients)
        try:
            graphs = [tree_sum_graph(per_client, f"c{i}") for i in range(CLIENTS)]
            futures = [c.get(dsk, key, sync=False) for c, (dsk, key) in zip(clients, graphs)]
            results = await asyncio.gather(*futures)
            assert results == [expected_sum(per_client)] * CLIENTS
            assert sum(watcher.computed.values()) >= CLIENTS * per_client
            assert plugin.stats.as_dict() == recount(s)
            sizes = plugin_sizes(plugin)
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        # bounded by workers, task prefixes and the log's fixed length, not tasks
        assert sizes["log"] < 50
        assert max(sizes.values()) <= 10, sizes
