"""Find backends and policies by name through entry points.

The built-in ones register through the same groups (in ``setup.cfg``), so there
is one way that backends and policies are found.
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from typing import Any

BACKENDS = "dask_adaptive_plugin.backends"
POLICIES = "dask_adaptive_plugin.policies"

_KINDS = {BACKENDS: "backend", POLICIES: "policy"}
_loaded: dict[tuple[str, str], type] = {}


def installed(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group``, by name."""
    return {ep.name: ep for ep in entry_points(group=group)}


def _origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    package = f"{dist.name} {dist.version}" if dist is not None else "unknown package"
    return f"entry point {ep.name!r} = {ep.value!r} in group {ep.group!r} ({package})"


def load(group: str, name: str) -> type:
    """Import the class registered as ``name`` in ``group``.

    Raises
    ------
    ValueError
        if ``name`` is not installed (the message lists what is), if importing
        it fails, or if it is not a class (the message names the entry point
        and its package).
    """
    kind = _KINDS[group]
    if (group, name) in _loaded:
        return _loaded[group, name]
    eps = installed(group)
    if name not in eps:
        names = ", ".join(sorted(eps)) or "none"
        raise ValueError(
            f"unknown {kind} {name!r}; installed {kind} names: {names} "
            f"(a package adds one under the entry-point group {group!r})"
        )
    ep = eps[name]
    try:
        obj = ep.load()
    except Exception as e:
        raise ValueError(f"{kind} {_origin(ep)} failed to import: {e!r}") from e
    if not inspect.isclass(obj):
        raise ValueError(f"{kind} {_origin(ep)} is {obj!r}, not a class")
    _loaded[group, name] = obj
    return obj


def resolve(group: str, spec: Any) -> type | Any:
    """A name becomes its class; classes and instances pass through."""
    return load(group, spec) if isinstance(spec, str) else spec
