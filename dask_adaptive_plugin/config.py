"""Options: defaults from dask config, validation with errors that say what to fix.

Every keyword argument of :class:`~dask_adaptive_plugin.AdaptivePlugin` defaults
to ``None`` and falls back to the dask config namespace ``adaptive-plugin`` in
:func:`resolve_options`, the one place where that happens.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dask
import yaml
from dask.utils import parse_timedelta

NAMESPACE = "adaptive-plugin"

with open(os.path.join(os.path.dirname(__file__), "adaptive-plugin.yaml")) as _f:
    DEFAULTS: dict[str, Any] = yaml.safe_load(_f)


def load_defaults() -> None:
    """Merge the package's commented YAML defaults into dask config."""
    dask.config.update_defaults(DEFAULTS)


def describe(name: str, *, backend_option: bool = False) -> str:
    """Name an option the way each kind of user sets it."""
    key = name.replace("_", "-")
    if backend_option:
        return (
            f"backend option {name} (--adaptive-option {key}=..., "
            f"config {NAMESPACE}.backend-options.{key})"
        )
    return f"{name} (--adaptive-{key}, config {NAMESPACE}.{key})"


def invalid(
    name: str, value: Any, accepted: str, *, backend_option: bool = False
) -> ValueError:
    """The error for a bad option value: what, the value, and what is accepted."""
    what = describe(name, backend_option=backend_option)
    return ValueError(f"invalid {what}: {value!r}; expected {accepted}")


def parse_count(
    name: str,
    value: Any,
    *,
    low: int = 0,
    high: int | None = None,
    allow_none: bool = False,
    backend_option: bool = False,
) -> int | None:
    """A whole number from ``low`` to ``high`` (or ``None`` where that is allowed).

    Examples
    --------
    >>> parse_count("minimum", "3")
    3
    >>> parse_count("maximum", None, allow_none=True) is None
    True
    >>> parse_count("port", 70000, low=1, high=65535, backend_option=True)
    Traceback (most recent call last):
    ...
    ValueError: invalid backend option port (...): 70000; expected a whole number from 1 to 65535
    """
    bounds = f">= {low}" if high is None else f"from {low} to {high}"
    accepted = f"a whole number {bounds}" + (" or null" if allow_none else "")
    bad = invalid(name, value, accepted, backend_option=backend_option)
    if isinstance(value, str):
        text = value.strip().lower()
        if allow_none and text in ("", "none", "null", "inf"):
            return None
        try:
            value = int(text)
        except ValueError:
            raise bad from None
    if value is None or (isinstance(value, float) and math.isinf(value)):
        if allow_none:
            return None
        raise bad
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad
    if value < low or (high is not None and value > high):
        raise bad
    return value


def parse_duration(
    name: str, value: Any, *, positive: bool = False, backend_option: bool = False
) -> float:
    """A duration in seconds, ``>= 0`` (``> 0`` if ``positive``): ``"10s"``, ``2.5``."""
    bound = "> 0" if positive else ">= 0"
    accepted = f"a duration {bound} such as '10s', '500ms' or a number of seconds"
    bad = invalid(name, value, accepted, backend_option=backend_option)
    if isinstance(value, bool) or not isinstance(value, (str, int, float, timedelta)):
        raise bad
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (ValueError, TypeError, KeyError, IndexError):  # '' gives IndexError
        raise bad from None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise bad
    if positive and seconds == 0:
        raise bad
    return float(seconds)


def normalise_options(name: str, options: Any) -> dict[str, Any]:
    """Check a mapping of options and turn its keys to snake_case.

    ``{"memory-limit": "2GiB"}`` becomes ``{"memory_limit": "2GiB"}``.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise invalid(name, options, "a mapping of option names to values")
    result = {}
    for key, value in options.items():
        if not isinstance(key, str) or not key.strip():
            raise invalid(name, options, "option names that are non-empty strings")
        result[key.strip().replace("-", "_")] = value
    return result


def parse_key_value(flag: str, text: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE`` from the command line; the value is read as a literal.

    Examples
    --------
    >>> parse_key_value("--adaptive-option", "nthreads=2")
    ('nthreads', 2)
    >>> parse_key_value("--adaptive-option", "memory-limit=2GiB")
    ('memory-limit', '2GiB')
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(
            f"invalid {flag} {text!r}; expected KEY=VALUE, such as nthreads=2"
        )
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = raw
    return key.strip(), value


@dataclass(frozen=True)
class Options:
    """Validated plugin options, every one filled in.

    ``pools`` is the raw declaration of several pools (``None``: one pool,
    ``"default"``, of ``backend``); :func:`~dask_adaptive_plugin.pools.resolve_pools`
    checks it.
    """

    backend: Any
    policy: Any
    minimum: int
    maximum: int | None
    idle_timeout: float
    start_timeout: float
    retire_timeout: float
    backend_options: dict[str, Any]
    policy_options: dict[str, Any]
    pools: Any = None
    #: A file to record a trace of the workload to, for the simulator.
    record_trace: str | None = None


def _pick(name: str, given: Any) -> Any:
    if given is not None:
        return given
    key = name.replace("_", "-")
    # The shipped defaults also stand behind a config that was reset wholesale.
    return dask.config.get(f"{NAMESPACE}.{key}", default=DEFAULTS[NAMESPACE][key])


def _check_plugin_reference(name: str, value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise invalid(name, value, "an installed name, a class or an instance")
        return value.strip()
    if value is None:
        raise invalid(name, value, "an installed name, a class or an instance")
    return value


def resolve_options(
    *,
    backend: Any = None,
    policy: Any = None,
    minimum: Any = None,
    maximum: Any = None,
    idle_timeout: Any = None,
    start_timeout: Any = None,
    retire_timeout: Any = None,
    backend_options: Any = None,
    policy_options: Any = None,
    pools: Any = None,
    record_trace: Any = None,
) -> Options:
    """Fill every ``None`` from dask config and validate everything.

    Raises
    ------
    ValueError
        naming the option, the value and what is accepted.
    """
    low = parse_count("minimum", _pick("minimum", minimum))
    high = parse_count("maximum", _pick("maximum", maximum), allow_none=True)
    assert low is not None
    if high is not None and low > high:
        raise ValueError(
            f"invalid {describe('minimum')}: {low} is above "
            f"{describe('maximum')}: {high}; expected minimum <= maximum"
        )
    config_policy_options = normalise_options(
        "policy_options", dask.config.get(f"{NAMESPACE}.policy-options", default={})
    )
    return Options(
        backend=_check_plugin_reference("backend", _pick("backend", backend)),
        policy=_check_plugin_reference("policy", _pick("policy", policy)),
        minimum=low,
        maximum=high,
        idle_timeout=parse_duration(
            "idle_timeout", _pick("idle_timeout", idle_timeout)
        ),
        start_timeout=parse_duration(
            "start_timeout", _pick("start_timeout", start_timeout)
        ),
        retire_timeout=parse_duration(
            "retire_timeout", _pick("retire_timeout", retire_timeout)
        ),
        backend_options=normalise_options(
            "backend_options", _pick("backend_options", backend_options)
        ),
        policy_options={
            **config_policy_options,
            **normalise_options("policy_options", policy_options),
        },
        pools=pools if pools is not None else (_pick("pools", None) or None),
        record_trace=_parse_path("record_trace", _pick("record_trace", record_trace)),
    )


def _parse_path(name: str, value: Any) -> str | None:
    """``None``, or the path of a file whose directory exists."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise invalid(name, value, "the path of a file, or null")
    path = os.path.abspath(os.path.expanduser(str(value)))
    if not os.path.isdir(os.path.dirname(path)):
        raise invalid(name, value, f"a file in a directory that exists ({os.path.dirname(path)} does not)")
    return path


def merge_config_file(path: Any) -> None:
    """Merge a dask config YAML file (``--adaptive-config``) into dask config.

    Raises
    ------
    ValueError
        naming the file, if it cannot be read or is not a mapping.
    """
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(
            f"invalid config file (--adaptive-config): {path!r} cannot be read: {e}"
        ) from None
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise ValueError(
            f"invalid config file (--adaptive-config): {path!r} holds "
            f"{type(data).__name__}; expected a mapping such as "
            f"'{NAMESPACE}: {{pools: ...}}'"
        )
    dask.config.update(dask.config.config, data, priority="new")
