"""The backend conformance kit: the contract of a backend, as tests.

A backend author runs it against an installed backend::

    pytest --adaptive-backend NAME [--adaptive-option KEY=VALUE ...] \
        --pyargs dask_adaptive_plugin.testing

or subclasses :class:`BackendConformance` in their own tests, giving it a
fixture ``adaptive_backend`` that returns a :class:`BackendUnderTest`.

The pytest plugin (:mod:`dask_adaptive_plugin.testing.plugin`, entry point
``adaptive_backend_kit``) only adds command-line options unless
``--adaptive-backend`` is given, so this package is imported lazily: the
names below load the kit, and with it distributed, when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BackendConformance", "BackendUnderTest", "Environment"]

_WHERE = {
    "BackendConformance": "dask_adaptive_plugin.testing.kit",
    "BackendUnderTest": "dask_adaptive_plugin.testing.spec",
    "Environment": "dask_adaptive_plugin.testing.spec",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
