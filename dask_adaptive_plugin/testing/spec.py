"""What the kit tests: a backend, its options, and the system it needs."""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from dask_adaptive_plugin import registry
from dask_adaptive_plugin.config import normalise_options, parse_key_value

#: The resources the kit asks each worker for, unless told otherwise: a name
#: no real system uses, so that a worker can only have it if it was passed on.
DEFAULT_RESOURCES = {"kit": 1.0}


@dataclass
class Environment:
    """The system one run of a scenario uses, from its ``environment`` factory.

    Attributes
    ----------
    options
        Backend options that only exist once the system is up (the URL of a
        stand-in API, a fresh cluster name), merged over the spec's options.
    leftovers
        What the system still runs for this backend: a function (or
        coroutine function) returning descriptions, such as ``["job 12
        (R)"]``, of jobs, Pods or tasks. After ``close()`` it must come back
        empty. ``None``: the kit checks only the scheduler, ``report()`` and
        this machine's processes.
    """

    options: dict[str, Any] = field(default_factory=dict)
    leftovers: Callable[[], Iterable[str] | Any] | None = None


EnvironmentFactory = Callable[[], AbstractAsyncContextManager[Environment]]


@contextlib.asynccontextmanager
async def no_environment() -> AsyncIterator[Environment]:
    """The environment of a backend that needs nothing around it."""
    yield Environment()


@dataclass(frozen=True)
class BackendUnderTest:
    """A backend and how to run it, for :class:`~dask_adaptive_plugin.testing.BackendConformance`.

    Parameters
    ----------
    backend
        An entry-point name (``"slurm"``), ``"module:Class"``, or the class.
    options
        Backend options, as ``backend_options=`` takes them.
    workers
        The ``n`` of ``scale_up(n)``: at least 2, so that a lower ``n`` and a
        worker left after ``scale_down`` exist; a multiple of the workers of
        one job for batch jobs of several processes.
    start_timeout
        How long workers may take to connect, and the bound on every call to
        the backend (the plugin bounds its calls by the pool's
        ``start_timeout`` too).
    stop_timeout
        How long stopped workers may take to leave the scheduler, and their
        processes, jobs or Pods to end (default: ``start_timeout``).
    resources
        What ``scale_up`` asks each new worker to provide (``--resources``).
    environment
        A factory of an async context manager that brings the system up for
        one scenario and yields an :class:`Environment`; entered on the
        scenario's event loop, once per scenario.
    restart
        Whether to check that a backend made again at the same scheduler
        address adopts or removes what the earlier one left (optional; the
        test is marked ``adaptive_restart``).
    host
        The interface the kit's scheduler listens on; the workers must reach it.
    """

    backend: str | type
    options: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 2
    start_timeout: float = 60.0
    stop_timeout: float | None = None
    resources: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_RESOURCES)
    )
    environment: EnvironmentFactory = no_environment
    restart: bool = False
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.workers < 2:
            raise ValueError(
                f"the kit needs at least 2 workers (got {self.workers}): one to "
                "scale down while another stays, and a lower n to ask for"
            )
        for name in ("start_timeout", "stop_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def stop_within(self) -> float:
        """How long stopping may take: ``stop_timeout``, else ``start_timeout``."""
        return self.stop_timeout or self.start_timeout

    @property
    def cls(self) -> type:
        """The backend class."""
        return load_backend(self.backend)

    @property
    def name(self) -> str:
        """How the backend is named in messages."""
        if isinstance(self.backend, str):
            return self.backend
        return f"{self.backend.__module__}:{self.backend.__qualname__}"


def load_backend(spec: str | type) -> type:
    """An entry-point name, ``"module:Class"``, or a class, as the class.

    Raises
    ------
    ValueError
        for an unknown name (listing the installed ones) or an import that fails.
    """
    if isinstance(spec, type):
        return spec
    if ":" not in spec:
        return registry.load(registry.BACKENDS, spec)
    module, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load backend {spec!r}: {e}") from e
    if not inspect.isclass(obj):
        raise ValueError(f"backend {spec!r} is {obj!r}, not a class")
    return obj


def options_from_command_line(pairs: Iterable[str]) -> dict[str, Any]:
    """``--adaptive-option KEY=VALUE`` values, read as the ``dask scheduler`` CLI reads them."""
    options = dict(parse_key_value("--adaptive-option", pair) for pair in pairs)
    return normalise_options("--adaptive-option", options)
