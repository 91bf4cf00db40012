"""What the backends that start ``dask worker`` processes share: the command
line, the checks of the options that shape it, unique worker names, and the
cluster name that tells their workers apart from another scheduler's."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import shlex
import uuid
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dask.utils import parse_bytes

from dask_adaptive_plugin.config import invalid, parse_count, parse_duration

#: Cluster names are cut to this length, so that ``<name>-<8 hex>`` names stay
#: valid Kubernetes label values (at most 63 characters).
MAX_CLUSTER_NAME = 54


@dataclass(frozen=True)
class WorkerOptions:
    """The backend options that shape a ``dask worker`` command line, checked.

    ``memory_limit`` is ``None`` for a backend without that option.
    """

    nthreads: int
    memory_limit: int | str | None
    worker_args: list[str]
    death_timeout: float

    @classmethod
    def parse(
        cls,
        nthreads: Any = 1,
        memory_limit: Any = None,
        worker_args: Any = (),
        death_timeout: Any = "60s",
    ) -> WorkerOptions:
        """Check the options; ``ValueError`` names a bad one."""
        return cls(
            parse_whole("nthreads", nthreads),
            None if memory_limit is None else parse_memory_limit(memory_limit),
            parse_worker_args(worker_args),
            parse_duration("death_timeout", death_timeout, backend_option=True),
        )

    def command(
        self, program: Sequence[str], scheduler: str, name: str, resources: Any
    ) -> list[str]:
        """The argument list of one ``dask worker`` named ``name``.

        ``program`` runs ``dask worker`` (``[python, "-m",
        "distributed.cli.dask_worker"]``, or ``["dask", "worker"]``);
        ``resources`` are what waiting tasks need (``scale_up``'s keyword
        arguments), the worker's ``--resources``.
        """
        cmd = [*program, scheduler, "--name", name, "--nthreads", str(self.nthreads)]
        if self.memory_limit is not None:
            cmd += ["--memory-limit", str(self.memory_limit)]
        cmd += ["--death-timeout", f"{self.death_timeout:g}s"]
        if resources:
            cmd += ["--resources", ",".join(f"{k}={v}" for k, v in resources.items())]
        return cmd + self.worker_args


def python_worker(python: str) -> list[str]:
    """The program that runs ``dask worker`` with this Python executable."""
    return [python, "-m", "distributed.cli.dask_worker"]


def worker_names(prefix: str) -> Iterator[str]:
    """Worker names no other run repeats: ``<prefix>-<8 hex>-0``, ``-1``..."""
    run = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return (f"{run}-{i}" for i in itertools.count())


async def all_or_first_error(calls: Iterable[Awaitable[Any]]) -> None:
    """Run ``calls`` together, let all finish, then raise the first error."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def parse_whole(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """A whole number from ``low`` to ``high``, a backend option."""
    return cast(int, parse_count(name, value, low=low, high=high, backend_option=True))


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


def parse_text(
    name: str,
    value: Any,
    accepted: str = "a non-empty string",
    *,
    optional: bool = True,
    one_word: bool = False,
) -> str | None:
    """A non-empty string (without white space if ``one_word``), stripped, or
    ``None`` if ``optional``."""
    if value is None and optional:
        return None
    text = value.strip() if isinstance(value, str) else ""
    if not text or (one_word and text.split() != [value]):
        raise invalid(name, value, accepted, backend_option=True)
    return text


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


#: Options of earlier versions that the pool's ``start_timeout`` replaced.
REPLACED_BY_START_TIMEOUT = ("pending_timeout", "resubmit_pending")


def refuse_replaced(options: dict[str, Any]) -> None:
    """Refuse, with what replaced them, options an earlier version took."""
    for name in REPLACED_BY_START_TIMEOUT:
        if name in options:
            raise invalid(
                name,
                options[name],
                "nothing: it was replaced by the pool's start_timeout "
                "(--adaptive-start-timeout); workers not connected by then are "
                "cancelled and asked for again, from the next pool that fits",
                backend_option=True,
            )
