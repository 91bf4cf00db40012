"""Durations for the simulator: fixed, or lognormal given a median and a p90.

Both the start-up latency of a pool and the duration of tasks are given this
way in the YAML files: ``30s`` (fixed) or ``{median: 30s, p90: 2m}``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dask.utils import parse_timedelta

#: The 90th percentile of the standard normal distribution.
Z90 = 1.2815515655446004

DURATION_ACCEPTED = (
    "a duration such as '30s' or a number of seconds, or "
    "{median: DURATION, p90: DURATION} for a lognormal distribution"
)


@dataclass(frozen=True)
class Fixed:
    """Always ``seconds``."""

    seconds: float

    #: Every sample is the same: tasks that start together finish together.
    fixed = True

    def sample(self, rng: random.Random) -> float:
        return self.seconds

    @property
    def median(self) -> float:
        return self.seconds

    def describe(self) -> str:
        return f"{self.seconds:g}s"


@dataclass(frozen=True)
class LogNormal:
    """Lognormal with this median and 90th percentile (``p90 >= median > 0``)."""

    median: float
    p90: float

    fixed = False

    @cached_property
    def mu(self) -> float:
        return math.log(self.median)

    @cached_property
    def sigma(self) -> float:
        return (math.log(self.p90) - math.log(self.median)) / Z90

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.gauss(self.mu, self.sigma))

    def describe(self) -> str:
        return f"lognormal, median {self.median:g}s, p90 {self.p90:g}s"


Duration = Fixed | LogNormal


def seconds(value: Any) -> float:
    """A duration in seconds from ``"30s"``, ``"2m"`` or a number; ``ValueError``
    if it is not one, or negative."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a duration")
    try:
        result = parse_timedelta(value, default="seconds")
    except (ValueError, TypeError, KeyError, IndexError):
        raise ValueError(f"{value!r} is not a duration") from None
    if result is None or not math.isfinite(result) or result < 0:
        raise ValueError(f"{value!r} is not a duration >= 0")
    return float(result)


def parse_duration_spec(
    value: Any, bad: Callable[[Any, str], Exception], positive: bool = False
) -> Duration:
    """A :class:`Fixed` or :class:`LogNormal` from its YAML form.

    ``bad(value, accepted)`` makes the error to raise, naming where the value
    was found.
    """
    accepted = DURATION_ACCEPTED + (" (> 0)" if positive else "")
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"median", "p90"})
        if unknown or "median" not in value or "p90" not in value:
            raise bad(value, accepted)
        try:
            median, p90 = seconds(value["median"]), seconds(value["p90"])
        except ValueError:
            raise bad(value, accepted) from None
        if median <= 0 or p90 < median:
            raise bad(value, f"{accepted}, with 0 < median <= p90")
        return Fixed(median) if p90 == median else LogNormal(median, p90)
    try:
        fixed = seconds(value)
    except ValueError:
        raise bad(value, accepted) from None
    if positive and fixed <= 0:
        raise bad(value, accepted)
    return Fixed(fixed)


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson sample: exact below a mean of 30, normal beyond."""
    if mean <= 0:
        return 0
    if mean < 30:
        limit, k, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return k
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))
