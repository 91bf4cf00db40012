"""Pools: named groups of workers of one shape, each started by one backend.

``AdaptivePlugin(backend=...)`` is the one-pool case, pool ``"default"``.
Several pools are declared as a mapping, in code (``pools={...}``), in dask
config (``adaptive-plugin.pools``) or in a file (``--adaptive-config``)::

    pools:
      cpu: {backend: slurm, backend-options: {queue: cpu}, maximum: 20}
      gpu: {backend: slurm, backend-options: {queue: gpu}, maximum: 2,
            resources: {GPU: 1}, cost: 5}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dask_adaptive_plugin.config import (
    NAMESPACE,
    normalise_options,
    parse_count,
    parse_duration,
)

DEFAULT = "default"
#: Pool names are used in metric labels and events: short and plain.
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
FIELDS = (
    "backend",
    "backend_options",
    "minimum",
    "maximum",
    "resources",
    "cost",
    "start_timeout",
    "idle_timeout",
)


@dataclass(frozen=True)
class Pool:
    """A named group of workers of one shape, started by one backend.

    Attributes
    ----------
    name
        The pool's name, in events, metrics and ``up``/``down`` records.
    backend, backend_options
        What starts its workers: an entry-point name, a class or an instance,
        and the options for it.
    minimum, maximum
        Bounds on this pool's workers (``maximum=None``: the backend's own
        bound, if it has one).
    resources
        What each of its workers provides, e.g. ``{"GPU": 1}``; worker-starting
        backends give it to ``dask worker --resources``. A declared pool
        without it provides nothing special (``{}``). ``None`` (the one pool
        of ``backend=``, which declares nothing): it is asked for what tasks
        that no worker can run need, and trusted to provide it until a worker
        arrives without it.
    cost
        Relative cost of one worker-second; work goes to the cheapest pool
        that fits, and the dearest idle workers go first.
    start_timeout
        How long a requested worker may take to connect; it also bounds every
        call to the backend.
    idle_timeout
        How long a worker must have been idle before it is retired.
    """

    name: str
    backend: Any
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    minimum: int = 0
    maximum: int | None = None
    resources: Mapping[str, float] | None = None
    cost: float = 1.0
    start_timeout: float = 120.0
    idle_timeout: float = 2.0

    def fits(
        self, needs: Mapping[str, float], lacks: frozenset[str] = frozenset()
    ) -> bool:
        """Whether this pool's workers can run a task that needs ``needs``.

        ``lacks``: resources that workers asked of an undeclared pool arrived
        without.
        """
        if self.resources is None:
            return not any(resource in lacks for resource in needs)
        return all(self.resources.get(r, 0) >= amount for r, amount in needs.items())


def describe_field(pool: str, name: str) -> str:
    key = name.replace("_", "-")
    return f"pools.{pool}.{name} (config {NAMESPACE}.pools.{pool}.{key})"


def invalid_field(pool: str, name: str, value: Any, accepted: str) -> ValueError:
    what = describe_field(pool, name)
    return ValueError(f"invalid {what}: {value!r}; expected {accepted}")


def parse_pools(
    pools: Any, *, idle_timeout: float, start_timeout: float
) -> tuple[Pool, ...]:
    """Check a mapping of pool declarations; every field named in errors.

    ``idle_timeout`` and ``start_timeout`` are the plugin's, for pools that
    do not set their own.
    """
    if not isinstance(pools, Mapping) or not pools:
        raise ValueError(
            f"invalid pools (config {NAMESPACE}.pools): {pools!r}; expected a "
            "mapping of pool names to their settings, such as "
            "{'cpu': {'backend': 'local', 'maximum': 4}}"
        )
    return tuple(
        parse_pool(name, spec, idle_timeout=idle_timeout, start_timeout=start_timeout)
        for name, spec in pools.items()
    )


def parse_pool(
    name: Any, spec: Any, *, idle_timeout: float, start_timeout: float
) -> Pool:
    """One pool's declaration, checked."""
    if not isinstance(name, str) or not POOL_NAME.fullmatch(name):
        raise ValueError(
            f"invalid pool name {name!r} (config {NAMESPACE}.pools); expected "
            "letters, digits, '_', '.' and '-', at most 63 characters"
        )
    fields = normalise_options(f"pools.{name}", spec)
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown} in pool {name!r} (config {NAMESPACE}.pools."
            f"{name}); a pool takes {', '.join(f.replace('_', '-') for f in FIELDS)}"
        )
    if fields.get("backend") is None:
        raise invalid_field(name, "backend", None, "an installed backend name or class")
    return Pool(
        name=name,
        backend=fields["backend"],
        backend_options=normalise_options(
            f"pools.{name}.backend_options", fields.get("backend_options")
        ),
        minimum=_count(name, "minimum", fields.get("minimum", 0)),
        maximum=_count(name, "maximum", fields.get("maximum"), allow_none=True),
        # a declared pool says what its workers provide: nothing special, unless
        # it says so
        resources=parse_resources(name, fields.get("resources")) or {},
        cost=parse_cost(name, fields.get("cost", 1.0)),
        start_timeout=_duration(
            name, "start_timeout", fields.get("start_timeout", start_timeout)
        ),
        idle_timeout=_duration(
            name, "idle_timeout", fields.get("idle_timeout", idle_timeout)
        ),
    )


def parse_resources(pool: str, value: Any) -> dict[str, float] | None:
    """``{"GPU": 1}``, a string ``"GPU=1,MEMORY=8e9"`` as ``dask worker`` takes, or None."""
    if value is None:
        return None
    accepted = "a mapping of resource names to amounts > 0, such as {GPU: 1}"
    if isinstance(value, str):
        try:
            value = dict(
                item.split("=", 1) for item in value.split(",") if item.strip()
            )
        except ValueError:
            raise invalid_field(pool, "resources", value, accepted) from None
    if not isinstance(value, Mapping):
        raise invalid_field(pool, "resources", value, accepted)
    resources = {}
    for resource, amount in value.items():
        try:
            number = float(amount)
        except (TypeError, ValueError):
            raise invalid_field(pool, "resources", value, accepted) from None
        bad_name = not isinstance(resource, str) or not resource.strip()
        if bad_name or isinstance(amount, bool) or not (0 < number < math.inf):
            raise invalid_field(pool, "resources", value, accepted)
        resources[resource.strip()] = number
    return resources


def parse_cost(pool: str, value: Any) -> float:
    try:
        cost = float(value)
    except (TypeError, ValueError):
        cost = math.nan
    if isinstance(value, bool) or not (0 < cost < math.inf):
        raise invalid_field(
            pool, "cost", value, "a number > 0 (relative cost per worker-second)"
        )
    return cost


def _count(pool: str, name: str, value: Any, allow_none: bool = False) -> int | None:
    try:
        return parse_count(name, value, allow_none=allow_none)
    except ValueError:
        accepted = "a whole number >= 0" + (" or null" if allow_none else "")
        raise invalid_field(pool, name, value, accepted) from None


def _duration(pool: str, name: str, value: Any) -> float:
    try:
        return parse_duration(name, value)
    except ValueError:
        raise invalid_field(
            pool, name, value, "a duration >= 0 such as '10s' or a number of seconds"
        ) from None


def resolve_pools(
    pools: Any,
    *,
    backend: Any,
    backend_options: Mapping[str, Any],
    backend_given: bool,
    idle_timeout: float,
    start_timeout: float,
) -> tuple[Pool, ...]:
    """The pools: those declared, or the one pool ``"default"`` of ``backend``.

    ``backend_given``: ``backend`` or ``backend_options`` was passed
    explicitly, which conflicts with declared pools.
    """
    if pools is None:
        return (
            Pool(
                DEFAULT,
                backend,
                dict(backend_options),
                start_timeout=start_timeout,
                idle_timeout=idle_timeout,
            ),
        )
    if backend_given:
        raise ValueError(
            "invalid pools: both pools and backend (or backend_options) were given; "
            "give the backend of each pool in its declaration instead"
        )
    declared = parse_pools(
        pools, idle_timeout=idle_timeout, start_timeout=start_timeout
    )
    for pool in declared:
        if pool.maximum is not None and pool.minimum > pool.maximum:
            raise invalid_field(
                pool.name,
                "minimum",
                pool.minimum,
                f"at most its maximum ({pool.maximum})",
            )
    return declared
