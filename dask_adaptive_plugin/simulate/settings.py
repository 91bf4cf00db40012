"""The simulator's configuration: the plugin's own, and what to simulate.

The pools, the policy and its options, the bounds and the timeouts are read
exactly as the plugin reads them (:func:`~dask_adaptive_plugin.config.resolve_options`,
:func:`~dask_adaptive_plugin.pools.resolve_pools`,
:func:`~dask_adaptive_plugin.plugin.make_policy`), from

- a dask config YAML file (what ``--adaptive-config`` takes): its
  ``adaptive-plugin`` section is the plugin's, merged over the current dask
  config as the plugin merges it; a top-level ``simulate`` section, beside it
  and ignored by the plugin, says how the pools behave::

      adaptive-plugin:
        pools:
          spot: {backend: slurm, cost: 1, start-timeout: 5m}
          normal: {backend: slurm, cost: 4}
      simulate:
        latency: 30s                 # every pool that does not say
        pools:
          spot: {latency: {median: 2m, p90: 10m}, never-deliver: 0.2}
          normal: {nthreads: 4}

- or a mapping of ``AdaptivePlugin``'s keyword arguments (policy options
  among them), with ``simulate`` as one more key;
- or nothing: the current dask config.

The pools' backends are neither imported nor started: their workers are
simulated.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import yaml
from dask.utils import parse_timedelta

from dask_adaptive_plugin.config import NAMESPACE, Options, resolve_options
from dask_adaptive_plugin.planner import PoolRuntime
from dask_adaptive_plugin.plugin import check_bounds, make_policy
from dask_adaptive_plugin.policy import Policy
from dask_adaptive_plugin.pools import Pool, resolve_pools
from dask_adaptive_plugin.simulate.distributions import (
    Duration,
    Fixed,
    parse_duration_spec,
)

#: ``AdaptivePlugin``'s keyword arguments other than policy options.
PLUGIN_ARGUMENTS = (
    "backend",
    "minimum",
    "maximum",
    "policy",
    "idle_timeout",
    "backend_options",
    "start_timeout",
    "retire_timeout",
    "pools",
    "record_trace",
)
#: Fields of a pool's ``simulate`` entry (also the defaults for every pool).
POOL_FIELDS = ("latency", "never_deliver", "nthreads")
SIMULATE_FIELDS = (*POOL_FIELDS, "pools", "drain")
#: After the last task, the simulation goes on at most this long (idle
#: workers retiring, requests timing out).
DEFAULT_DRAIN = 3600.0


class ConfigError(ValueError):
    """A simulator configuration that cannot be used: names the file and field."""


@dataclass(frozen=True)
class SimulatedPool:
    """How a pool's simulated backend behaves.

    Attributes
    ----------
    latency
        From a request to the worker's connection.
    never_deliver
        The fraction of requested workers that never connect (a full
        partition, spot capacity gone) until they are cancelled.
    nthreads
        Threads of each of its workers.
    """

    latency: Duration = Fixed(0.0)
    never_deliver: float = 0.0
    nthreads: int = 1


@dataclass(frozen=True)
class Settings:
    """Everything a simulation needs besides the workload."""

    options: Options
    pools: tuple[Pool, ...]
    simulated: Mapping[str, SimulatedPool]
    #: The scheduler's estimates before a task of a prefix has finished.
    unknown_duration: float = 0.5
    default_durations: Mapping[str, float] = field(default_factory=dict)
    drain: float = DEFAULT_DRAIN
    source: str = "dask config"

    def runtimes(self) -> list[PoolRuntime]:
        """The pools as the planner takes them: the simulated backends report
        what they launched, as every built-in backend does."""
        return [
            PoolRuntime(p, p.maximum, self.simulated[p.name].nthreads, reports=True)
            for p in self.pools
        ]

    def policy(self) -> Policy:
        """A new policy, made as the plugin makes it."""
        return make_policy(self.options)


def load_settings(config: Any = None) -> Settings:
    """Settings from a dask config YAML file, a mapping, or the current config.

    Raises
    ------
    ConfigError
        naming the file (or mapping) and the field.
    """
    if config is None:
        return _resolve({}, {}, {}, "dask config")
    if isinstance(config, (str, Path)):
        return _resolve(*_read_file(Path(config)), f"config {config}")
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"a simulator config is a file name or a mapping; got {config!r}"
        )
    if NAMESPACE in config or NAMESPACE.replace("-", "_") in config:
        return _resolve(dict(config), {}, config.get("simulate") or {}, "config <mapping>")
    arguments = {str(k).replace("-", "_"): v for k, v in config.items()}
    simulate = arguments.pop("simulate", None) or {}
    return _resolve({}, arguments, simulate, "config <mapping>")


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config {path}: expected a mapping such as '{NAMESPACE}: {{pools: ...}}' "
            f"and 'simulate: {{...}}', got {type(data).__name__}"
        )
    return dict(data), {}, data.get("simulate") or {}


def _resolve(
    dask_config: Mapping[str, Any],
    arguments: Mapping[str, Any],
    simulate: Any,
    source: str,
) -> Settings:
    with _merged(dask_config):
        try:
            options, pools = _plugin_options(arguments)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
        durations = dask.config.get("distributed.scheduler.default-task-durations", {})
        unknown = dask.config.get("distributed.scheduler.unknown-task-duration")
        return Settings(
            options=options,
            pools=pools,
            simulated=_simulated(simulate, pools, source),
            unknown_duration=float(parse_timedelta(unknown)),
            default_durations={k: float(parse_timedelta(v)) for k, v in durations.items()},
            drain=_drain(simulate, source),
            source=source,
        )


@contextmanager
def _merged(data: Mapping[str, Any]) -> Iterator[None]:
    """Dask config with ``data`` merged over it, as ``--adaptive-config`` merges."""
    if not data:
        yield
        return
    merged = copy.deepcopy(dask.config.config)
    dask.config.update(merged, copy.deepcopy(dict(data)), priority="new")
    with dask.config.set({k: merged[k] for k in merged}):
        yield


def _plugin_options(arguments: Mapping[str, Any]) -> tuple[Options, tuple[Pool, ...]]:
    """What ``AdaptivePlugin(**arguments)`` would resolve, without backends."""
    known = {k: v for k, v in arguments.items() if k in PLUGIN_ARGUMENTS}
    policy_options = {k: v for k, v in arguments.items() if k not in PLUGIN_ARGUMENTS}
    options = resolve_options(policy_options=policy_options, **known)
    pools = resolve_pools(
        options.pools,
        backend=options.backend,
        backend_options=options.backend_options,
        backend_given=known.get("backend") is not None
        or known.get("backend_options") is not None,
        idle_timeout=options.idle_timeout,
        start_timeout=options.start_timeout,
    )
    make_policy(options)  # bad policy options fail here, as in the plugin
    runtimes = [PoolRuntime(p, p.maximum) for p in pools]
    check_bounds(options, runtimes)
    return options, pools


def _simulated(
    simulate: Any, pools: tuple[Pool, ...], source: str
) -> dict[str, SimulatedPool]:
    section = _section(simulate, f"{source}: simulate", SIMULATE_FIELDS)
    per_pool = _section(section.get("pools"), f"{source}: simulate.pools", None)
    names = [p.name for p in pools]
    unknown = sorted(set(per_pool) - set(names))
    if unknown:
        raise ConfigError(
            f"{source}: simulate.pools names {unknown}, which are not pools; "
            f"the pools are {', '.join(names)}"
        )
    defaults = {k: section[k] for k in POOL_FIELDS if k in section}
    result = {}
    for pool in pools:
        where = f"{source}: simulate.pools.{pool.name}"
        fields = {**defaults, **_section(per_pool.get(pool.name), where, POOL_FIELDS)}
        result[pool.name] = _simulated_pool(fields, pool, where)
    return result


def _section(value: Any, where: str, accepted: tuple[str, ...] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if accepted is None:  # keyed by pool names, kept as they are
        return dict(value)
    section = {str(k).replace("-", "_"): v for k, v in value.items()}
    if accepted is not None:
        unknown = sorted(set(section) - set(accepted))
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {unknown}; it takes "
                f"{', '.join(a.replace('_', '-') for a in accepted)}"
            )
    return section


def _simulated_pool(fields: Mapping[str, Any], pool: Pool, where: str) -> SimulatedPool:
    def bad(name: str) -> Any:
        return lambda value, accepted: ConfigError(
            f"{where}.{name.replace('_', '-')}: invalid {value!r}; expected {accepted}"
        )

    latency = parse_duration_spec(fields.get("latency", 0), bad("latency"))
    never = fields.get("never_deliver", 0)
    if isinstance(never, bool) or not isinstance(never, (int, float)) or not 0 <= never <= 1:
        raise bad("never_deliver")(never, "a fraction from 0 to 1")
    nthreads = fields.get("nthreads", pool.backend_options.get("nthreads", 1))
    if isinstance(nthreads, bool) or not isinstance(nthreads, int) or nthreads < 1:
        raise bad("nthreads")(nthreads, "a whole number >= 1")
    return SimulatedPool(latency, float(never), nthreads)


def _drain(simulate: Any, source: str) -> float:
    section = _section(simulate, f"{source}: simulate", SIMULATE_FIELDS)
    value = section.get("drain", DEFAULT_DRAIN)
    try:
        drain = float(parse_timedelta(value, default="seconds"))
    except (TypeError, ValueError, KeyError, IndexError):
        drain = math.nan
    if not drain >= 0:
        raise ConfigError(f"{source}: simulate.drain: invalid {value!r}; expected a duration >= 0")
    return drain
