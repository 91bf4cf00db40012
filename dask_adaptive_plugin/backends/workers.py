"""What the backends that start ``dask worker`` processes share: the command
line, the checks of the options that shape it, and the cluster name that tells
their workers apart from another scheduler's."""

from __future__ import annotations

import hashlib
import re
import shlex
from typing import Any

from dask.utils import parse_bytes

from dask_adaptive_plugin.config import invalid

#: Cluster names are cut to this length, so that ``<name>-<8 hex>`` names stay
#: valid Kubernetes label values (at most 63 characters).
MAX_CLUSTER_NAME = 54


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


def safe_name(text: str) -> str:
    """``text`` as a name every system takes: ``[a-z0-9-]``, at most 54 characters.

    Valid as a Pod name, a label value and a batch job name.

    Examples
    --------
    >>> safe_name("tcp://10.0.0.5:8786")
    'tcp-10-0-0-5-8786'
    """
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(name) > MAX_CLUSTER_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        name = name[: MAX_CLUSTER_NAME - 9].rstrip("-") + "-" + digest
    return name


def default_cluster_name(address: str) -> str:
    """The cluster name derived from the scheduler's address.

    A scheduler restarted at the same address has the same name, so that it
    finds the workers (Pods, batch jobs) of its earlier run.

    Examples
    --------
    >>> default_cluster_name("tcp://dask-scheduler.jobs:8786")
    'dask-dask-scheduler-jobs-8786'
    """
    location = address.partition("://")[2] or address
    return safe_name("dask-" + location)


def parse_cluster_name(value: Any, address: str) -> str:
    """The option ``cluster_name``: made safe, or derived from ``address``."""
    if value is None:
        return default_cluster_name(address)
    name = safe_name(value) if isinstance(value, str) else ""
    if not name:
        raise invalid(
            "cluster_name",
            value,
            "a non-empty name of letters, digits and '-'",
            backend_option=True,
        )
    return name
