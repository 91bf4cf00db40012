"""Workloads: YAML phases, a recorded trace, or distributed's task stream.

Each source becomes the same thing: a :class:`Workload`, whose
:meth:`Workload.arrivals` is one stream of :class:`Arrival` in time order,
made reproducible by a seed. An arrival is a *count* of tasks of one prefix
and resource class: a burst of a million tasks is one arrival, so the cost of
a simulation follows the number of events, not the number of tasks.

The YAML format (see ``docs/simulation.md``)::

    phases:
      - kind: burst            # burst, trickle, bursts, notebook, daily
        tasks: 1000
        duration: 2s           # or {median: 2s, p90: 10s}
        resources: {GPU: 1}    # optional
        chain: 3               # optional: each task is a chain of 3
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import dask
import yaml
from dask.utils import key_split

from dask_adaptive_plugin.simulate.distributions import (
    Duration,
    Fixed,
    parse_duration_spec,
    poisson,
    seconds,
)
from dask_adaptive_plugin.trace import FORMAT, Durations, Runnable, read_trace

#: What each task needs: sorted ``(resource, amount)`` pairs; ``()`` is plain.
ResourceClass = tuple[tuple[str, float], ...]

KINDS = ("burst", "trickle", "bursts", "notebook", "daily")
#: Fields every phase takes.
TASK_FIELDS = ("kind", "name", "prefix", "duration", "resources", "chain")
#: Fields of each kind, beyond :data:`TASK_FIELDS`.
KIND_FIELDS = {
    "burst": ("at", "tasks"),
    "trickle": ("start", "end", "for", "rate", "arrivals", "batch"),
    "bursts": ("start", "count", "every", "pauses", "tasks"),
    "notebook": ("start", "end", "for", "sessions", "cells", "think"),
    "daily": (
        "start",
        "end",
        "for",
        "days",
        "period",
        "peak",
        "trough",
        "peak_at",
        "every",
        "arrivals",
    ),
}
ARRIVAL_PROCESSES = ("poisson", "regular")


class WorkloadError(ValueError):
    """A workload that cannot be read: names the file and the phase or line."""


# -- what the engine consumes ---------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """Tasks of one kind: their prefix, resource class and duration.

    ``links``: the tasks left in each chain, this one included; when a task
    finishes, its successor (:attr:`successor`) becomes runnable.
    ``rng`` samples durations that are not fixed.
    """

    prefix: str
    resources: ResourceClass
    duration: Duration
    rng: random.Random
    links: int = 1

    @cached_property
    def successor(self) -> TaskSpec | None:
        if self.links <= 1:
            return None
        return TaskSpec(
            self.prefix, self.resources, self.duration, self.rng, self.links - 1
        )


class Submitter(Protocol):
    """What submits the next cell once a cell's results are all in: a
    notebook :class:`Session`, or :class:`AwaitedBursts`."""

    def next_cell(self, now: float) -> Arrival | None: ...


class Cell:
    """One notebook cell (or awaited burst): its tasks (chains) still to finish."""

    __slots__ = ("remaining", "session")

    def __init__(self, session: Submitter, remaining: int) -> None:
        self.session = session
        self.remaining = remaining


@dataclass(eq=False)
class Arrival:
    """``count`` tasks of ``spec`` become runnable at ``t``.

    ``cell``: the notebook cell they belong to, whose session submits the
    next cell once all of them have finished.
    """

    t: float
    spec: TaskSpec
    count: int
    cell: Cell | None = None


class Session:
    """One notebook user: a cell, its results, a think time, the next cell."""

    def __init__(
        self, spec: TaskSpec, tasks: int, think: Duration, end: float, rng: random.Random
    ) -> None:
        self.spec, self.tasks, self.think = spec, tasks, think
        self.end, self.rng = end, rng

    def next_cell(self, now: float) -> Arrival | None:
        """The cell submitted after a think time from ``now``; ``None`` once
        the session is over."""
        t = now + self.think.sample(self.rng)
        if t >= self.end:
            return None
        return Arrival(t, self.spec, self.tasks, Cell(self, self.tasks))


class AwaitedBursts:
    """Bursts a client submits one at a time: it awaits each burst's results,
    pauses, then submits the next (``client.gather`` then ``sleep``)."""

    def __init__(
        self, spec: TaskSpec, tasks: int, pauses: tuple[float, ...], repeat: int
    ) -> None:
        self.spec, self.tasks, self.pauses = spec, tasks, pauses
        self.left = repeat
        self.submitted = 0

    def first(self, start: float) -> Arrival | None:
        """The first burst, at ``start``."""
        return self._burst(start)

    def next_cell(self, now: float) -> Arrival | None:
        """The next burst, a pause after ``now`` (its predecessor's last
        result); ``None`` after the last."""
        pause = self.pauses[(self.submitted - 1) % len(self.pauses)]
        return self._burst(now + pause)

    def _burst(self, t: float) -> Arrival | None:
        if self.left <= 0:
            return None
        self.left -= 1
        self.submitted += 1
        return Arrival(t, self.spec, self.tasks, Cell(self, self.tasks))


# -- phases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tasks:
    """What the tasks of a phase are like."""

    prefix: str
    duration: Duration
    resources: ResourceClass = ()
    chain: int = 1

    def spec(self, rng: random.Random) -> TaskSpec:
        return TaskSpec(self.prefix, self.resources, self.duration, rng, self.chain)


@dataclass(frozen=True)
class Phase:
    """A part of a workload; each kind says when its tasks arrive."""

    tasks: Tasks

    def arrivals(self, rng: random.Random, durations: random.Random) -> Iterator[Arrival]:
        raise NotImplementedError


@dataclass(frozen=True)
class Burst(Phase):
    """``count`` tasks at once, at ``at``."""

    at: float = 0.0
    count: int = 1

    def arrivals(self, rng: random.Random, durations: random.Random) -> Iterator[Arrival]:
        if self.count:
            yield Arrival(self.at, self.tasks.spec(durations), self.count)


@dataclass(frozen=True)
class Bursts(Phase):
    """``repeat`` bursts of ``count`` tasks, ``every`` seconds apart; or, with
    ``pauses``, each burst submitted once the previous one's results are all
    in and a pause has passed (the pauses in turn, cycled)."""

    start: float = 0.0
    repeat: int = 1
    every: float = 60.0
    count: int = 1
    pauses: tuple[float, ...] = ()

    def arrivals(self, rng: random.Random, durations: random.Random) -> Iterator[Arrival]:
        spec = self.tasks.spec(durations)
        if self.pauses:
            awaited = AwaitedBursts(spec, self.count, self.pauses, self.repeat)
            first = awaited.first(self.start) if self.count else None
            if first is not None:
                yield first
            return
        for i in range(self.repeat):
            yield Arrival(self.start + i * self.every, spec, self.count)


@dataclass(frozen=True)
class Trickle(Phase):
    """``rate`` tasks a second from ``start`` to ``end``, ``batch`` at a time,
    at Poisson or regular intervals."""

    start: float = 0.0
    end: float = 0.0
    rate: float = 1.0
    process: str = "poisson"
    batch: int = 1

    def arrivals(self, rng: random.Random, durations: random.Random) -> Iterator[Arrival]:
        spec = self.tasks.spec(durations)
        per_second = self.rate / self.batch
        t = self.start
        if self.process == "poisson":
            t += rng.expovariate(per_second)
        while t < self.end:
            yield Arrival(t, spec, self.batch)
            gap = rng.expovariate(per_second) if self.process == "poisson" else 0
            t += gap or 1 / per_second


@dataclass(frozen=True)
class Daily(Phase):
    """A rate that follows the day: ``trough`` to ``peak`` tasks a second and
    back, a cosine of ``period`` with its peak ``peak_at`` into each period;
    tasks arrive in steps of ``every`` seconds."""

    start: float = 0.0
    end: float = 86400.0
    period: float = 86400.0
    peak: float = 1.0
    trough: float = 0.0
    peak_at: float = 43200.0
    every: float = 60.0
    process: str = "poisson"

    def rate(self, t: float) -> float:
        phase = 2 * math.pi * (t - self.start - self.peak_at) / self.period
        return self.trough + (self.peak - self.trough) * (1 + math.cos(phase)) / 2

    def arrivals(self, rng: random.Random, durations: random.Random) -> Iterator[Arrival]:
        spec = self.tasks.spec(durations)
        carried = 0.0
        steps = math.ceil((self.end - self.start) / self.every)
        for i in range(steps):
            t = self.start + i * self.every
            step = min(self.every, self.end - t)
            mean = self.rate(t + step / 2) * step
            if self.process == "poisson":
                count = poisson(rng, mean)
            else:
                carried += mean
                count = int(carried)
                carried -= count
            if count:
                yield Arrival(t, spec, count)


@dataclass(frozen=True)
class Notebook(Phase):
    """``sessions`` users, each submitting a cell of ``cells`` tasks, waiting
    for its results, thinking for ``think``, and so on until ``end``."""

    start: float = 0.0
    end: float = 3600.0
    sessions: int = 1
    cells: int = 1
    think: Duration = Fixed(60.0)

    def arrivals(self, rng: random.Random, durations: random.Random) -> Iterator[Arrival]:
        spec = self.tasks.spec(durations)
        firsts = []
        for _ in range(self.sessions):
            session = Session(spec, self.cells, self.think, self.end, rng)
            # each user starts after a think time of their own: staggered
            first = session.next_cell(self.start)
            if first is not None:
                firsts.append(first)
        yield from sorted(firsts, key=lambda a: a.t)


@dataclass(frozen=True)
class Replay(Phase):
    """Recorded work: ``(t, prefix, resources, count, seconds)`` in time order."""

    entries: tuple[tuple[float, str, ResourceClass, int, float], ...] = ()

    def arrivals(self, rng: random.Random, durations: random.Random) -> Iterator[Arrival]:
        specs: dict[tuple[str, ResourceClass, float], TaskSpec] = {}
        for t, prefix, resources, count, duration in self.entries:
            key = (prefix, resources, duration)
            spec = specs.get(key)
            if spec is None:
                spec = specs[key] = TaskSpec(prefix, resources, Fixed(duration), durations)
            yield Arrival(t, spec, count)


@dataclass(frozen=True)
class Workload:
    """Phases whose arrivals merge into one stream.

    Attributes
    ----------
    source
        Where it came from, for messages and reports: ``"workload burst.yaml"``.
    phases
        Its parts.
    """

    source: str
    phases: tuple[Phase, ...] = field(default=())

    def arrivals(self, seed: int) -> Iterator[Arrival]:
        """Every arrival, in time order; the same for the same ``seed``.

        Each phase draws from generators of its own, so that adding a phase
        does not change what the others draw.
        """
        streams = [
            phase.arrivals(
                random.Random(f"{seed}:{i}:arrivals"),
                random.Random(f"{seed}:{i}:durations"),
            )
            for i, phase in enumerate(self.phases)
        ]
        return heapq.merge(*streams, key=lambda a: a.t)


# -- YAML phases ---------------------------------------------------------------------------


class _Fields:
    """One phase's fields, read with errors that name the phase and the field."""

    def __init__(self, where: str, data: Mapping[str, Any]) -> None:
        self.where = where
        self.data = data

    def bad(self, name: str, value: Any, accepted: str) -> WorkloadError:
        key = name.replace("_", "-")
        return WorkloadError(
            f"{self.where}: invalid {key}: {value!r}; expected {accepted}"
        )

    def has(self, name: str) -> bool:
        return name in self.data

    def required(self, name: str) -> Any:
        if name not in self.data:
            raise WorkloadError(f"{self.where}: missing field {name.replace('_', '-')}")
        return self.data[name]

    def count(self, name: str, default: int | None = None, low: int = 0) -> int:
        value = self.required(name) if default is None else self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.bad(name, value, f"a whole number >= {low}")
        return value

    def time(self, name: str, default: Any = None, positive: bool = False) -> float:
        value = self.required(name) if default is None else self.data.get(name, default)
        accepted = f"a duration {'> 0' if positive else '>= 0'} such as '30s', '2h'"
        try:
            result = seconds(value)
        except ValueError:
            raise self.bad(name, value, accepted) from None
        if positive and result <= 0:
            raise self.bad(name, value, accepted)
        return result

    def distribution(self, name: str, default: Any = None, positive: bool = False) -> Duration:
        value = self.required(name) if default is None else self.data.get(name, default)
        return parse_duration_spec(
            value, lambda v, accepted: self.bad(name, v, accepted), positive
        )

    def pauses(self) -> tuple[float, ...]:
        """``pauses``: a non-empty list of durations >= 0."""
        value = self.data["pauses"]
        accepted = "a non-empty list of durations >= 0 such as [2s, 30s, 5m]"
        if not isinstance(value, list) or not value:
            raise self.bad("pauses", value, accepted)
        try:
            return tuple(seconds(v) for v in value)
        except ValueError:
            raise self.bad("pauses", value, accepted) from None

    def rate(self, name: str, default: float | None = None) -> float:
        value = self.required(name) if default is None else self.data.get(name, default)
        accepted = "tasks per unit of time, such as 10, '10/s', '600/m' or '5/h'"
        try:
            result = parse_rate(value)
        except ValueError:
            raise self.bad(name, value, accepted) from None
        return result

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.data.get(name, choices[0])
        if value not in choices:
            raise self.bad(name, value, " or ".join(choices))
        return value

    def resources(self) -> ResourceClass:
        value = self.data.get("resources") or {}
        accepted = "a mapping of resource names to amounts > 0, such as {GPU: 1}"
        if not isinstance(value, Mapping):
            raise self.bad("resources", value, accepted)
        pairs = []
        for resource, amount in value.items():
            if (
                not isinstance(resource, str)
                or isinstance(amount, bool)
                or not isinstance(amount, (int, float))
                or not 0 < amount < math.inf
            ):
                raise self.bad("resources", value, accepted)
            pairs.append((resource, float(amount)))
        return tuple(sorted(pairs))

    def window(self, start: float) -> float:
        """The end of the phase: ``end``, or ``start`` + ``for``."""
        if self.has("end") and self.has("for"):
            raise WorkloadError(f"{self.where}: give end or for, not both")
        if self.has("end"):
            end = self.time("end")
        elif self.has("for"):
            end = start + self.time("for")
        else:
            raise WorkloadError(f"{self.where}: missing field end or for")
        if end <= start:
            raise self.bad("end", self.data.get("end", end), f"a time after start ({start:g}s)")
        return end


def parse_rate(value: Any) -> float:
    """Tasks a second from ``10``, ``"10/s"``, ``"600/m"``, ``"5/h"``, ``"100/day"``."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str) and "/" in value:
        amount, _, unit = value.partition("/")
        unit = unit.strip()
        per = 60.0 if unit == "min" else seconds(f"1{unit}")
        rate = float(amount) / per
    elif isinstance(value, (int, float, str)):
        rate = float(value)
    else:
        raise ValueError(value)
    if not 0 < rate < math.inf:
        raise ValueError(value)
    return rate


def parse_phases(data: Any, source: str) -> Workload:
    """A :class:`Workload` from the YAML mapping ``{phases: [...]}``.

    Raises
    ------
    WorkloadError
        naming ``source``, the phase (number, kind and name) and the field.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("phases"), list):
        raise WorkloadError(
            f"{source}: expected a mapping with a list of phases, such as "
            "'phases: [{kind: burst, tasks: 100, duration: 1s}]'; got "
            f"{_short(data)}"
        )
    unknown = sorted(set(data) - {"phases", "name"})
    if unknown:
        raise WorkloadError(f"{source}: unknown field(s) {unknown}; a workload takes phases, name")
    if not data["phases"]:
        raise WorkloadError(f"{source}: the list of phases is empty")
    return Workload(
        source, tuple(parse_phase(i, p, source) for i, p in enumerate(data["phases"], 1))
    )


def parse_phase(number: int, data: Any, source: str) -> Phase:
    """One phase, checked."""
    where = f"{source}, phase {number}"
    if not isinstance(data, Mapping):
        raise WorkloadError(f"{where}: expected a mapping with a kind, got {_short(data)}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    kind = data.get("kind")
    if kind not in KINDS:
        raise WorkloadError(f"{where}: invalid kind: {kind!r}; expected one of {', '.join(KINDS)}")
    name = data.get("name")
    where = f"{where} ({kind}{'' if name is None else f' {name!r}'})"
    accepted = TASK_FIELDS + KIND_FIELDS[kind]
    unknown = sorted(set(data) - set(accepted))
    if unknown:
        raise WorkloadError(
            f"{where}: unknown field(s) {[u.replace('_', '-') for u in unknown]}; "
            f"a {kind} phase takes {', '.join(a.replace('_', '-') for a in accepted)}"
        )
    fields = _Fields(where, data)
    tasks = Tasks(
        prefix=str(data.get("prefix") or name or kind),
        duration=fields.distribution("duration"),
        resources=fields.resources(),
        chain=fields.count("chain", 1, low=1),
    )
    return PHASE_PARSERS[kind](fields, tasks)


def _burst(f: _Fields, tasks: Tasks) -> Phase:
    return Burst(tasks, at=f.time("at", 0), count=f.count("tasks"))


def _bursts(f: _Fields, tasks: Tasks) -> Phase:
    if f.has("every") and f.has("pauses"):
        raise WorkloadError(f"{f.where}: give every or pauses, not both")
    if not (f.has("every") or f.has("pauses")):
        raise WorkloadError(f"{f.where}: missing field every or pauses")
    pauses = f.pauses() if f.has("pauses") else ()
    return Bursts(
        tasks,
        start=f.time("start", 0),
        repeat=f.count("count", low=1),
        every=f.time("every", positive=True) if f.has("every") else 60.0,
        count=f.count("tasks"),
        pauses=pauses,
    )


def _trickle(f: _Fields, tasks: Tasks) -> Phase:
    start = f.time("start", 0)
    return Trickle(
        tasks,
        start=start,
        end=f.window(start),
        rate=f.rate("rate"),
        process=f.choice("arrivals", ARRIVAL_PROCESSES),
        batch=f.count("batch", 1, low=1),
    )


def _notebook(f: _Fields, tasks: Tasks) -> Phase:
    start = f.time("start", 0)
    return Notebook(
        tasks,
        start=start,
        end=f.window(start),
        sessions=f.count("sessions", 1, low=1),
        cells=f.count("cells", low=1),
        think=f.distribution("think"),
    )


def _daily(f: _Fields, tasks: Tasks) -> Phase:
    start = f.time("start", 0)
    period = f.time("period", "24h", positive=True)
    if f.has("days") and (f.has("end") or f.has("for")):
        raise WorkloadError(f"{f.where}: give days, or end or for, not both")
    if f.has("end") or f.has("for"):
        end = f.window(start)
    else:
        end = start + f.count("days", 1, low=1) * period
    peak = f.rate("peak")
    trough = f.rate("trough") if f.has("trough") else 0.0
    if trough > peak:
        raise f.bad("trough", f.data["trough"], f"a rate at most the peak ({peak:g}/s)")
    return Daily(
        tasks,
        start=start,
        end=end,
        period=period,
        peak=peak,
        trough=trough,
        peak_at=f.time("peak_at", period / 2),
        every=f.time("every", "1m", positive=True),
        process=f.choice("arrivals", ARRIVAL_PROCESSES),
    )


PHASE_PARSERS: dict[str, Callable[[_Fields, Tasks], Phase]] = {
    "burst": _burst,
    "bursts": _bursts,
    "trickle": _trickle,
    "notebook": _notebook,
    "daily": _daily,
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- a recorded trace ------------------------------------------------------------------------


def trace_workload(path: str | Path) -> Workload:
    """Replay what the plugin recorded with ``record_trace``.

    Work becomes runnable when it did in the recorded run (dependencies
    included). Each task takes the mean duration of its prefix over the first
    window of durations recorded at or after it became runnable (else the
    last before it; else the scheduler's unknown-task duration).

    Raises
    ------
    dask_adaptive_plugin.trace.TraceError
        naming the file and the line.
    """
    runnable: list[Runnable] = []
    windows: dict[str, tuple[list[float], list[float]]] = {}
    for record in read_trace(path):
        if isinstance(record, Runnable):
            if record.count > 0:
                runnable.append(record)
        elif isinstance(record, Durations) and record.count > 0:
            times, means = windows.setdefault(record.prefix, ([], []))
            times.append(record.t)
            means.append(record.total / record.count)
    if not runnable:
        raise WorkloadError(f"trace {path}: holds no runnable work to replay")
    unknown = unknown_task_duration()
    entries = tuple(
        (
            r.t,
            r.prefix,
            tuple(sorted(r.resources.items())),
            r.count,
            _duration_at(windows.get(r.prefix), r.t, unknown),
        )
        for r in sorted(runnable, key=lambda r: r.t)
    )
    return Workload(f"trace {path}", (Replay(Tasks("replay", Fixed(0.0)), entries),))


def _duration_at(
    window: tuple[list[float], list[float]] | None, t: float, unknown: float
) -> float:
    if window is None:
        return unknown
    times, means = window
    i = bisect.bisect_left(times, t)
    return means[min(i, len(means) - 1)]


def unknown_task_duration() -> float:
    """The scheduler's estimate for a prefix it has seen no task of finish."""
    return float(
        dask.utils.parse_timedelta(
            dask.config.get("distributed.scheduler.unknown-task-duration")
        )
    )


# -- distributed's task stream -------------------------------------------------------------


def task_stream_workload(path: str | Path) -> Workload:
    """Replay ``client.get_task_stream()`` saved as JSON (a list of its
    records, or one record a line).

    A task becomes runnable when the recorded run began working on it (its
    first ``startstops`` entry) and takes its recorded compute time. Tasks
    are plain unless a record carries ``resources``. Tasks that start within
    the same millisecond, of one prefix and duration (to the microsecond),
    become one arrival.

    Raises
    ------
    WorkloadError
        naming the file and the line of the bad record.
    """
    where = f"task stream {path}"
    groups: Counter[tuple[float, str, ResourceClass, float]] = Counter()
    starts: list[tuple[float, str, ResourceClass, float]] = []
    for line, record in _task_stream_records(Path(path)):
        starts.append(_task(record, f"{where}, line {line}"))
    if not starts:
        raise WorkloadError(f"{where}: holds no task")
    origin = min(s[0] for s in starts)
    for start, prefix, resources, duration in starts:
        groups[round(start - origin, 3), prefix, resources, round(duration, 6)] += 1
    entries = tuple(
        (t, prefix, resources, count, duration)
        for (t, prefix, resources, duration), count in sorted(groups.items())
    )
    return Workload(where, (Replay(Tasks("replay", Fixed(0.0)), entries),))


def _task(record: Any, where: str) -> tuple[float, str, ResourceClass, float]:
    """(start, prefix, resources, compute seconds) of one task-stream record."""
    expected = (
        "a task-stream record such as {'key': 'inc-123', 'startstops': "
        "[{'action': 'compute', 'start': 1.5, 'stop': 2.0}]}"
    )
    if not isinstance(record, Mapping) or "key" not in record:
        raise WorkloadError(f"{where}: expected {expected}; got {_short(record)}")
    startstops = record.get("startstops")
    if not isinstance(startstops, (list, tuple)) or not startstops:
        raise WorkloadError(f"{where}: no startstops in {_short(record)}; expected {expected}")
    start, compute = math.inf, 0.0
    for ss in startstops:
        try:
            begin, stop = float(ss["start"]), float(ss["stop"])
            action = ss.get("action")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise WorkloadError(
                f"{where}: a startstops entry needs numbers start and stop: {_short(ss)}"
            ) from None
        if not (math.isfinite(begin) and math.isfinite(stop)) or stop < begin:
            raise WorkloadError(f"{where}: a startstops entry stops before it starts: {_short(ss)}")
        start = min(start, begin)
        if action == "compute":
            compute += stop - begin
    key = record["key"]
    prefix = key_split(tuple(key) if isinstance(key, list) else key)
    resources = record.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise WorkloadError(f"{where}: resources must be a mapping: {_short(resources)}")
    try:
        pairs = tuple(sorted((str(r), float(a)) for r, a in resources.items()))
    except (TypeError, ValueError):
        raise WorkloadError(f"{where}: resources must map names to numbers: {_short(resources)}") from None
    return start, prefix, pairs, compute


def _task_stream_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, record) of a JSON list or of JSON lines."""
    try:
        text = path.read_text()
    except OSError as e:
        raise WorkloadError(f"cannot read task stream {path}: {e}") from None
    if text.lstrip().startswith("["):
        yield from _json_list(text, path)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkloadError(f"task stream {path}, line {number}: not JSON ({e.msg})") from None


def _json_list(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """The items of a JSON list, each with the line it starts on."""
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    line, counted = 1, 0

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    i = skip(i)
    if i < len(text) and text[i] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"task stream {path}, line {e.lineno}: not JSON ({e.msg})") from None
        yield line_at(i), item
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i < len(text) and text[i] == "]":
            return
        else:
            raise WorkloadError(
                f"task stream {path}, line {line_at(i)}: expected ',' or ']' after a record"
            )


# -- which source -----------------------------------------------------------------------------------

SOURCES = ("phases", "trace", "task-stream")


def load_workload(source: Any, kind: str | None = None) -> Workload:
    """A workload from a file (YAML phases, a trace, a task stream: told
    apart by their content unless ``kind`` says), a mapping of phases, or a
    :class:`Workload`.
    """
    if isinstance(source, Workload):
        return source
    if isinstance(source, Mapping):
        return parse_phases(source, "workload <mapping>")
    if not isinstance(source, (str, Path)):
        raise WorkloadError(
            f"a workload is a file name, a mapping of phases or a Workload; got {_short(source)}"
        )
    path = Path(source)
    kind = kind or detect(path)
    if kind == "trace":
        return trace_workload(path)
    if kind == "task-stream":
        return task_stream_workload(path)
    if kind != "phases":
        raise WorkloadError(f"unknown workload kind {kind!r}; expected one of {', '.join(SOURCES)}")
    return phases_workload(path)


def phases_workload(path: Path) -> Workload:
    where = f"workload {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise WorkloadError(f"cannot read workload {path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        raise WorkloadError(f"{where}{at}: not YAML: {e}") from None
    return parse_phases(data, where)


def detect(path: Path) -> str:
    """``"trace"``, ``"task-stream"`` or ``"phases"``, from the first line."""
    try:
        with path.open() as f:
            first = next((line.strip() for line in f if line.strip()), "")
    except OSError as e:
        raise WorkloadError(f"cannot read workload {path}: {e}") from None
    if first.startswith("["):
        return "task-stream"
    if first.startswith("{"):
        try:
            data = json.loads(first)
        except json.JSONDecodeError:
            return "phases"  # YAML in flow style
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return "trace"
        if isinstance(data, dict) and "startstops" in data:
            return "task-stream"
        if isinstance(data, dict) and "t" in data:
            return "trace"  # a trace without its header: its reader says so
    return "phases"
