"""A Marathon backend for dask-adaptive-plugin, published as its own package.

The adaptive plugin decides *when* to scale; :class:`MarathonBackend` knows
*how* on Marathon: one Marathon app whose instances are the Dask workers.
"""

from __future__ import annotations

from dask_adaptive_marathon.backend import MarathonAPIError, MarathonBackend

__all__ = ["MarathonAPIError", "MarathonBackend"]
