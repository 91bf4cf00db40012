"""What the backends that start ``dask worker`` processes share: the command
line, and the checks of the options that shape it."""

from __future__ import annotations

import shlex
from typing import Any

from dask.utils import parse_bytes

from dask_adaptive_plugin.config import invalid


def dask_worker_command(
    python: str,
    scheduler: str,
    name: str,
    *,
    nthreads: int,
    memory_limit: int | str | None = None,
    death_timeout: float | None = None,
    resources: dict[str, Any] | None = None,
    extra: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """The argument list of one ``dask worker``, named ``name``.

    ``resources`` are what waiting tasks need (``scale_up``'s keyword
    arguments); they become the worker's ``--resources``.
    """
    cmd = [python, "-m", "distributed.cli.dask_worker", scheduler,
           "--name", name, "--nthreads", str(nthreads)]  # fmt: skip
    if memory_limit is not None:
        cmd += ["--memory-limit", str(memory_limit)]
    if death_timeout is not None:
        cmd += ["--death-timeout", f"{death_timeout:g}s"]
    if resources:
        cmd += ["--resources", ",".join(f"{k}={v}" for k, v in resources.items())]
    return cmd + list(extra)


def parse_memory_limit(value: Any) -> int | str:
    """Bytes, a size such as ``"2GiB"``, or ``"auto"``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        limit = parse_bytes(value) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        limit = -1
    if isinstance(value, bool) or limit < 0:
        raise invalid(
            "memory_limit",
            value,
            "bytes >= 0, a size such as '2GiB', or 'auto'",
            backend_option=True,
        )
    return limit


def parse_worker_args(value: Any) -> list[str]:
    """Further ``dask worker`` arguments: a list of strings, or one string."""
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise invalid(
        "worker_args", value, "a list of strings or one string", backend_option=True
    )
