"""Traces of a real workload, recorded by the plugin for the simulator.

With the option ``record_trace=PATH`` (config ``adaptive-plugin.record-trace``,
``--adaptive-record-trace PATH``) the plugin appends to a JSON-lines file:

- a header line: ``{"format": "dask-adaptive-trace", "version": 1,
  "started": <unix time>}``;
- per flush interval (about a second), one line of the work that became
  runnable, ``{"t": 12.5, "runnable": [[prefix, resources, count], ...]}``,
  and one line of how long tasks took, ``{"t": 12.5, "durations": {prefix:
  [count, sum, min, max], ...}}``; ``t`` is seconds since the header.

Work is counted when it becomes runnable (queued, without a worker, or
processing, from waiting or released), so a replay keeps the times at which
the recorded run made work runnable, dependencies included. Counting costs
O(1) per task event in the hook; the lines are written by a thread, never on
the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMAT = "dask-adaptive-trace"
VERSION = 1
#: Seconds between writes of what was counted.
FLUSH_INTERVAL = 1.0
#: States a task becomes runnable in, and the states it comes from.
RUNNABLE = frozenset({"queued", "no-worker", "processing"})
BEFORE = frozenset({"waiting", "released"})


class TraceError(ValueError):
    """A trace file that cannot be read: names the file, the line and why."""


@dataclass
class _Window:
    """What was counted since the last flush."""

    runnable: Counter[tuple[str, tuple[tuple[str, float], ...]]] = field(
        default_factory=Counter
    )
    durations: dict[str, list[float]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.runnable or self.durations)


class TraceRecorder:
    """Counts runnable work and task durations from transitions; writes them
    to ``path`` from a thread, once per :data:`FLUSH_INTERVAL`.

    Parameters
    ----------
    path
        The JSON-lines file, appended to (a header starts each recording).
    clock
        Monotonic seconds (the event loop's time).
    """

    def __init__(self, path: str | Path, clock: Any) -> None:
        self.path = Path(path)
        self.clock = clock
        self.origin = clock()
        self.window = _Window()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="adaptive-trace")
        self._timer: asyncio.TimerHandle | None = None
        self._pending: list[asyncio.Future[None]] = []
        self._submit(self._header())

    def _header(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "started": time.time()})

    # -- the hook: O(1) -----------------------------------------------------------------

    def transition(self, ts: Any, start: str, finish: str, kwargs: dict[str, Any]) -> None:
        if finish in RUNNABLE and start in BEFORE:
            restrictions = ts.resource_restrictions
            key = tuple(sorted(restrictions.items())) if restrictions else ()
            self.window.runnable[ts.prefix.name, key] += 1
            self._flush_soon()
        elif start == "processing" and finish == "memory":
            seconds = _compute_seconds(kwargs.get("startstops"))
            if seconds is not None:
                self._add_duration(ts.prefix.name, seconds)
                self._flush_soon()

    def _add_duration(self, prefix: str, seconds: float) -> None:
        stat = self.window.durations.get(prefix)
        if stat is None:
            self.window.durations[prefix] = [1, seconds, seconds, seconds]
        else:
            stat[0] += 1
            stat[1] += seconds
            stat[2] = min(stat[2], seconds)
            stat[3] = max(stat[3], seconds)

    # -- writing, off the event loop ------------------------------------------------------

    def _flush_soon(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Hand what was counted to the writer thread."""
        self._timer = None
        window, self.window = self.window, _Window()
        if window:
            self._submit(*_lines(window, self.clock() - self.origin))

    def _submit(self, *lines: str) -> None:
        future = self._writer.submit(self._append, lines)
        future.add_done_callback(_log_write_error)

    def _append(self, lines: tuple[str, ...]) -> None:
        with self.path.open("a") as f:
            f.write("".join(line + "\n" for line in lines))

    def close(self) -> None:
        """Write what is left, and let the writer thread finish."""
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._writer.shutdown(wait=True)


def _lines(window: _Window, t: float) -> list[str]:
    lines = []
    if window.runnable:
        runnable = [
            [prefix, dict(resources), count]
            for (prefix, resources), count in window.runnable.items()
        ]
        lines.append(json.dumps({"t": round(t, 3), "runnable": runnable}))
    if window.durations:
        durations = {p: [s[0], round(s[1], 6), round(s[2], 6), round(s[3], 6)]
                     for p, s in window.durations.items()}  # fmt: skip
        lines.append(json.dumps({"t": round(t, 3), "durations": durations}))
    return lines


def _compute_seconds(startstops: Any) -> float | None:
    if not startstops:
        return None
    total = sum(
        s["stop"] - s["start"] for s in startstops if s.get("action") == "compute"
    )
    return total if total >= 0 else None


def _log_write_error(future: Any) -> None:
    error = future.exception()
    if error is not None:
        logger.error("adaptive: writing the trace failed: %r", error)


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runnable:
    """Tasks of one prefix and resource class that became runnable at ``t``."""

    t: float
    prefix: str
    resources: dict[str, float]
    count: int


@dataclass(frozen=True)
class Durations:
    """How long tasks of one prefix took, over the window ending at ``t``."""

    t: float
    prefix: str
    count: int
    total: float
    shortest: float
    longest: float


def read_trace(path: str | Path) -> Iterator[Runnable | Durations]:
    """The records of a trace file, in order.

    Raises
    ------
    TraceError
        naming the file, the line number and what is wrong with it.
    """
    path = Path(path)
    try:
        f = path.open()
    except OSError as e:
        raise TraceError(f"cannot read trace {path}: {e}") from None
    with f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield from _records(path, number, line)


def _records(path: Path, number: int, line: str) -> Iterator[Runnable | Durations]:
    where = f"trace {path}, line {number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise TraceError(f"{where}: not JSON ({e.msg}): {line.strip()[:80]!r}") from None
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a JSON object, got {line.strip()[:80]!r}")
    if "format" in data:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise TraceError(
                f"{where}: not a {FORMAT} version {VERSION} header: {data!r}"
            )
        return
    try:
        t = _number(data["t"], "t")
        for prefix, resources, count in data.get("runnable", ()):
            yield Runnable(t, str(prefix), _resources(resources), int(count))
        for prefix, (count, total, shortest, longest) in data.get("durations", {}).items():
            yield Durations(t, str(prefix), int(count), float(total), float(shortest), float(longest))
    except (KeyError, TypeError, ValueError) as e:
        raise TraceError(
            f"{where}: expected {{'t': seconds, 'runnable': [[prefix, resources, "
            f"count], ...]}} or {{'t': seconds, 'durations': {{prefix: [count, sum, "
            f"min, max]}}}}; {type(e).__name__}: {e}"
        ) from None


def _number(value: Any, name: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return number


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise TypeError(f"resources must be a mapping, got {value!r}")
    return {str(r): float(a) for r, a in value.items()}
