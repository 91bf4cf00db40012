"""Built-in backends. They register through the entry-point group
``dask_adaptive_plugin.backends`` like any third-party backend."""
