"""The plugin records a trace of the workload for the simulator."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from distributed.utils_test import gen_test, inc, slowinc

from dask_adaptive_plugin.trace import Durations, Runnable, TraceError, read_trace
from helpers import adaptive_cluster, until


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_recorded_trace_holds_the_work_and_its_durations(tmp_path: Path):
    path = tmp_path / "trace.jsonl"
    async with adaptive_cluster(maximum=2, record_trace=str(path)) as (s, c, plugin, _):
        slow = c.map(slowinc, range(6), delay=0.1, pure=False)
        fast = c.map(inc, range(4), pure=False)
        gpu = c.map(inc, range(3), resources={"GPU": 1}, pure=False)
        await c.gather(slow + fast + gpu)
        await until(lambda: path.exists() and "durations" in path.read_text())
    records = list(read_trace(path))
    runnable: Counter[tuple[str, tuple]] = Counter()
    for r in records:
        if isinstance(r, Runnable):
            runnable[r.prefix, tuple(r.resources.items())] += r.count
    assert runnable == {("slowinc", ()): 6, ("inc", ()): 4, ("inc", (("GPU", 1.0),)): 3}
    durations = [r for r in records if isinstance(r, Durations)]
    slowinc_ = [d for d in durations if d.prefix == "slowinc"]
    assert sum(d.count for d in slowinc_) == 6
    assert min(d.shortest for d in slowinc_) >= 0.1  # each slept 0.1 s
    assert sum(d.total for d in slowinc_) == pytest.approx(0.6, rel=0.5)
    assert sum(d.count for d in durations if d.prefix == "inc") == 7
    times = [r.t for r in records]
    assert times == sorted(times) and times[0] >= 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", r"line 2: not JSON"),
        ('{"t": -1, "runnable": []}', r"line 2: .*t must be a number of seconds >= 0"),
        ('{"t": 1, "runnable": [["inc", {}, "many"]]}', r"line 2: .*invalid literal"),
        ('{"t": 1, "durations": {"inc": [1, 2]}}', r"line 2: .*not enough values"),
        ('[1, 2]', r"line 2: expected a JSON object"),
        ('{"format": "other", "version": 1}', r"line 2: not a dask-adaptive-trace"),
    ],
)
def test_a_bad_trace_gets_an_error_naming_the_line(tmp_path: Path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"format": "dask-adaptive-trace", "version": 1, "started": 0}\n' + line + "\n")
    with pytest.raises(TraceError, match=message) as info:
        list(read_trace(path))
    assert str(path) in str(info.value)


def test_a_missing_trace_file_is_named(tmp_path: Path):
    with pytest.raises(TraceError, match="cannot read trace .*nosuch.jsonl"):
        list(read_trace(tmp_path / "nosuch.jsonl"))
