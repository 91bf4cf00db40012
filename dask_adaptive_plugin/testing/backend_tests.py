"""The kit's tests against the backend named on the command line.

Collected only when the kit is asked for::

    pytest --adaptive-backend NAME [--adaptive-option KEY=VALUE ...] \
        --pyargs dask_adaptive_plugin.testing

The fixture ``adaptive_backend`` comes from the options
(:mod:`dask_adaptive_plugin.testing.plugin`).
"""

from __future__ import annotations

from dask_adaptive_plugin.testing.kit import BackendConformance


class TestBackendConformance(BackendConformance):
    """The backend of ``--adaptive-backend``, checked against the contract."""
