"""The pytest plugin of the backend conformance kit (entry point ``adaptive_backend_kit``).

Inactive unless ``--adaptive-backend`` is given: it then provides the fixture
``adaptive_backend`` from the command line and collects the kit's tests
(``backend_tests.py``, whose name no default pattern matches)::

    pytest --adaptive-backend NAME [--adaptive-option KEY=VALUE ...] \
        --pyargs dask_adaptive_plugin.testing

Without it, the plugin only adds its options and registers the marker
``adaptive_restart``: no fixture, no test and no import of the kit.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dask_adaptive_plugin.testing.spec import BackendUnderTest

#: The module of the kit's tests, collected only when the kit is asked for.
KIT_TESTS = Path(__file__).with_name("backend_tests.py")
#: The name the fixture provider is registered under.
PROVIDER = "adaptive-backend-kit-fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "adaptive-backend", "dask-adaptive-plugin backend conformance kit"
    )
    group.addoption(
        "--adaptive-backend",
        metavar="NAME",
        help="run the kit (--pyargs dask_adaptive_plugin.testing) against this "
        "backend: an entry-point name, or module:Class",
    )
    group.addoption(
        "--adaptive-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a backend option, read as dask scheduler's --adaptive-option (repeatable)",
    )
    group.addoption(
        "--adaptive-start-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long workers may take to connect, and the bound on every "
        "backend call (default 60)",
    )
    group.addoption(
        "--adaptive-stop-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long stopped workers, and their processes, jobs or Pods, may "
        "take to go (default: the start timeout)",
    )
    group.addoption(
        "--adaptive-workers",
        type=int,
        default=2,
        metavar="N",
        help="the n of scale_up(n), at least 2 (default 2)",
    )
    group.addoption(
        "--adaptive-host",
        default="127.0.0.1",
        metavar="HOST",
        help="where the kit's scheduler listens; the workers must reach it "
        "(default 127.0.0.1)",
    )
    group.addoption(
        "--adaptive-restart",
        action="store_true",
        help="also check that a backend made again at the same address adopts "
        "or removes what the earlier one left",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "adaptive_restart: the kit's optional check that a restarted scheduler "
        "adopts or removes what the earlier one left",
    )
    if config.getoption("--adaptive-backend"):
        spec = spec_from_command_line(config)
        config.pluginmanager.register(CommandLineBackend(spec), PROVIDER)


def pytest_collect_file(
    file_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    """The kit's tests, when asked for, whatever ``python_files`` says."""
    config = parent.config
    if file_path.name != KIT_TESTS.name or not config.getoption("--adaptive-backend"):
        return None
    if file_path.resolve() != KIT_TESTS.resolve():
        return None
    collected_anyway = parent.session.isinitpath(file_path) or any(
        fnmatch.fnmatch(file_path.name, pattern)
        for pattern in config.getini("python_files")
    )
    if collected_anyway:
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def spec_from_command_line(config: pytest.Config) -> BackendUnderTest:
    """The backend under test from the options; a bad one is a usage error."""
    from dask_adaptive_plugin.testing.spec import (
        BackendUnderTest,
        load_backend,
        options_from_command_line,
    )

    try:
        spec = BackendUnderTest(
            config.getoption("--adaptive-backend"),
            options_from_command_line(config.getoption("--adaptive-option")),
            workers=config.getoption("--adaptive-workers"),
            start_timeout=config.getoption("--adaptive-start-timeout"),
            stop_timeout=config.getoption("--adaptive-stop-timeout"),
            restart=config.getoption("--adaptive-restart"),
            host=config.getoption("--adaptive-host"),
        )
        load_backend(spec.backend)  # an unknown name lists the installed ones
    except ValueError as e:
        raise pytest.UsageError(f"adaptive backend kit: {e}") from None
    return spec


class CommandLineBackend:
    """Provides ``adaptive_backend`` from the command line."""

    def __init__(self, spec: BackendUnderTest) -> None:
        self.spec = spec

    @pytest.fixture(scope="session")
    def adaptive_backend(self) -> BackendUnderTest:
        """The backend named by ``--adaptive-backend``, with its options."""
        return self.spec

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        spec = self.spec
        cls: Any = spec.cls
        header = (
            f"adaptive backend kit: {spec.name} ({cls.__module__}:{cls.__qualname__}), "
            f"options {dict(spec.options)!r}, n={spec.workers}, "
            f"start_timeout {spec.start_timeout:g} s"
        )
        return [header]
