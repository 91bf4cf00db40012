"""Shared fixtures. Tests run real schedulers and real workers; nothing of
distributed is mocked."""

from __future__ import annotations

import os

# hypothesis's pytest plugin imports hypothesis in the terminal summary when no
# test did; there, deep in pluggy's stack, CPython 3.11.7's ast.parse (pytest
# rewrites hypothesis's asserts) fails with "AST constructor recursion depth
# mismatch". Imported here, at the top of the stack, for runs of one file.
import hypothesis  # noqa: F401
import pytest

#: CI sets DASK_ADAPTIVE_LIVE=1: a live system that is missing then fails the
#: run instead of skipping it.
LIVE_REQUIRED = os.environ.get("DASK_ADAPTIVE_LIVE") == "1"


def require_live(system: str, available: bool, why: str = "") -> None:
    """Skip (or, in CI, fail) a test whose live system is not running here."""
    if available:
        return
    message = f"live {system} is not available{': ' + why if why else ''}"
    if LIVE_REQUIRED:
        pytest.fail(message + " (DASK_ADAPTIVE_LIVE=1: .ci/run should have started it)")
    pytest.skip(message)


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Leave out the conformance kit's checks of optional parts that a
    backend does not have (``test_conformance.without_its_optional_part``)."""
    left_out = [item for item in items if _without_its_optional_part(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


def _without_its_optional_part(item: pytest.Item) -> bool:
    check = getattr(getattr(item, "module", None), "without_its_optional_part", None)
    return check is not None and check(item)

