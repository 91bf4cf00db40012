"""Benchmarks of the adaptive plugin beside distributed's ``Adaptive``.

Run them all with ``python tests/benchmarks/run.py`` (``--quick`` for a short
run); ``tests/test_benchmarks.py`` runs every benchmark function at tiny sizes.
Each module holds one benchmark: an ``async`` function that returns plain
data, and a ``rows`` function that turns that data into table rows.
"""
