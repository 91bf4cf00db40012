"""``python -m dask_adaptive_plugin.simulate WORKLOAD ...``: the same as
``dask adaptive simulate``."""

from dask_adaptive_plugin.simulate.cli import simulate

simulate(prog_name="python -m dask_adaptive_plugin.simulate")
