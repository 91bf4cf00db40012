"""Shared fixtures. Tests run real schedulers and real workers; nothing of
distributed is mocked."""

from __future__ import annotations

import os

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
