"""Bad input: every bad value gives a clear error that names it, never a
traceback of ours or a silently ignored setting; broken third-party entry
points name themselves and their package, and never break the scheduler."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client, Scheduler
from distributed.utils_test import gen_test, inc
from helpers import until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import InProcessBackend
from tornado.httpclient import AsyncHTTPClient
from tornado.routing import PathMatches, RuleRouter

from dask_adaptive_plugin import AdaptivePlugin, AdaptivePolicy
from dask_adaptive_plugin.config import (
    normalise_options,
    parse_count,
    parse_duration,
    parse_key_value,
)

#: Anything a user, a config file or an environment variable might hand us.
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["3", "-1", "1e3", "inf", "null", "10s", "2 ms", "1.5h", " 7 "]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(values)
def test_counts_are_whole_numbers_or_a_clear_error(value):
    try:
        result = parse_count("maximum", value, allow_none=True)
    except ValueError as e:
        assert "maximum" in str(e) and "expected a whole number >= 0" in str(e)
    else:
        assert result is None or (isinstance(result, int) and result >= 0)


@FAST
@given(values)
def test_durations_are_seconds_or_a_clear_error(value):
    try:
        result = parse_duration("idle_timeout", value)
    except ValueError as e:
        assert "idle_timeout" in str(e) and "duration" in str(e)
    else:
        assert isinstance(result, float) and result >= 0


@FAST
@given(st.text(max_size=30))
def test_key_value_options_split_or_a_clear_error(text):
    try:
        key, _ = parse_key_value("--adaptive-option", text)
    except ValueError as e:
        assert "--adaptive-option" in str(e) and "KEY=VALUE" in str(e)
    else:
        assert key and "=" in text


@FAST
@given(values)
def test_option_mappings_or_a_clear_error(value):
    try:
        result = normalise_options("backend_options", value)
    except ValueError as e:
        assert "backend_options" in str(e)
    else:
        assert all("-" not in key for key in result)


OPTIONS = ["minimum", "maximum", "idle_timeout", "start_timeout", "retire_timeout"]
POLICY_OPTIONS = ["target_duration", "scale_factor", "memory_threshold"]


def plugin_with(name: str, value, from_config: bool) -> AdaptivePlugin:
    """The plugin with one option set, as an argument or through dask config."""
    if not from_config:
        return AdaptivePlugin(**{name: value})
    section = "policy-options." if name in POLICY_OPTIONS else ""
    with dask.config.set({f"adaptive-plugin.{section}{name.replace('_', '-')}": value}):
        return AdaptivePlugin()


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(OPTIONS + POLICY_OPTIONS), values, st.booleans())
def test_every_option_is_in_force_or_refused_by_name(name, value, from_config):
    try:
        plugin = plugin_with(name, value, from_config)
    except ValueError as e:
        assert name in str(e), str(e)
        return
    where = plugin.policy if name in POLICY_OPTIONS else plugin.options
    in_force = getattr(where, name)
    if value is None:  # the default stays in force
        default = AdaptivePolicy() if name in POLICY_OPTIONS else AdaptivePlugin().options
        assert in_force == getattr(default, name)
    else:  # exactly the value given, read as every option of its kind is read
        assert in_force == READ[name](value), (in_force, value)


#: How each option's value is read, to check that the one given is in force.
READ = {
    "minimum": lambda v: parse_count("minimum", v),
    "maximum": lambda v: parse_count("maximum", v, allow_none=True),
    "idle_timeout": lambda v: parse_duration("idle_timeout", v),
    "start_timeout": lambda v: parse_duration("start_timeout", v),
    "retire_timeout": lambda v: parse_duration("retire_timeout", v),
    "target_duration": lambda v: parse_duration("target_duration", v),
    "scale_factor": float,
    "memory_threshold": float,
}


def write_broken_distribution(root: Path) -> Path:
    """A third-party distribution whose entry points are broken in every way."""
    info = root / "broken_backends-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-backends\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [dask_adaptive_plugin.backends]
        missing = broken_backends_nosuch:Backend
        notaclass = json:dumps
        badmaximum = broken_backends:BadMaximum
        nonsense = broken_backends:Nonsense
        failsinit = broken_backends:FailsInit
        """))
    (root / "broken_backends.py").write_text(textwrap.dedent("""\
        import asyncio
        from distributed import Worker
        from dask_adaptive_plugin import Backend

        class BadMaximum(Backend):
            maximum = "lots"

        class FailsInit(Backend):
            def __init__(self, scheduler):
                raise RuntimeError("no cluster to talk to, on purpose")

        class Nonsense(Backend):
            '''Starts real workers but answers nonsense.'''
            def __init__(self, scheduler):
                super().__init__(scheduler)
                self.workers = []
            async def scale_up(self, n, **kwargs):
                while len(self.workers) < n:
                    self.workers.append(await Worker(self.scheduler.address, nthreads=1))
                return "nonsense"
            def scale_down(self, workers):
                return 42
            def stopped_together(self, address):
                return None  # not a list of addresses
            async def close(self):
                await asyncio.gather(*(w.close() for w in self.workers))
        """))
    return root


@pytest.fixture
def broken(tmp_path, monkeypatch):
    root = write_broken_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing", r"backend entry point 'missing' = 'broken_backends_nosuch:Backend'"
                    r".*\(broken-backends 1.0\) failed to import: ModuleNotFoundError"),
        ("notaclass", r"entry point 'notaclass' = 'json:dumps'.*\(broken-backends 1.0\)"
                      r" is <function dumps.*>, not a class"),
        ("badmaximum", r"maximum='lots'; a backend's maximum must be a whole number"),
    ],
)  # fmt: skip
def test_a_broken_entry_point_names_itself_and_its_package(broken, name, message):
    with pytest.raises(ValueError, match=message):
        AdaptivePlugin(backend=name)


def test_a_broken_entry_point_stops_dask_scheduler_with_its_name(broken):
    env = {**os.environ, "PYTHONPATH": f"{broken}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dask"), "scheduler", "--preload",
         "dask_adaptive_plugin", "--adaptive-backend", "missing", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "'missing'" in last and "broken-backends 1.0" in last


def test_a_backend_that_fails_to_start_stops_dask_scheduler(broken):
    env = {**os.environ, "PYTHONPATH": f"{broken}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dask"), "scheduler", "--preload",
         "dask_adaptive_plugin", "--adaptive-backend", "failsinit", "--port", "0",
         "--dashboard-address", ":0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no cluster to talk to, on purpose" in proc.stderr.strip().splitlines()[-1]


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_a_backend_answering_nonsense_never_breaks_the_scheduler(broken):
    plugin = AdaptivePlugin(backend="nonsense", maximum=2, idle_timeout="100ms")
    async with Scheduler(dashboard_address=":0", host="127.0.0.1", plugins=[plugin]) as s:
        async with Client(s.address, asynchronous=True) as c:
            assert await c.submit(inc, 1) == 2  # scale_up's odd answer is ignored
            failing = lambda: [  # noqa: E731
                e for _, e in plugin.log if e["status"] == "error"
            ]
            await until(failing, timeout=20)  # retiring hits stopped_together's None
            assert failing()[0]["action"] == "retire"
            assert "TypeError" in failing()[0]["error"]
            assert await c.submit(inc, 2) == 3  # the scheduler keeps working


# -- no other way in -----------------------------------------------------------------------

#: What the plugin may add to the scheduler's HTTP server: the Adaptive page
#: (its Bokeh paths: the page, its websocket, metadata, autoload script,
#: static files) and its entry in /individual-plots.json.
READ_ONLY_PAGES = re.compile(
    r"^/(adaptive|individual-adaptive)(/|\$|$)"
    r"|^/static/|^/favicon\.ico|^/individual-plots\.json"
)


def entrances(s: Scheduler) -> dict[str, Counter[str]]:
    """Every way into the scheduler: comm handlers, stream handlers, and the
    HTTP routes of its HTTP application and of the applications it hands
    requests to (the dashboard's Bokeh applications), each path pattern counted."""
    app = s.http_application
    routes = http_routes(app)
    for application in app.applications:
        routes += http_routes(application)
    return {
        "handlers": Counter(s.handlers),
        "stream_handlers": Counter(s.stream_handlers),
        "routes": routes,
    }


def http_routes(app: Any) -> Counter[str]:
    """The path patterns a tornado application routes, nested routers included."""
    found: Counter[str] = Counter()
    routers = [app.default_router, app.wildcard_router]
    while routers:
        for rule in routers.pop().rules:
            if isinstance(rule.matcher, PathMatches):
                found[rule.matcher.regex.pattern] += 1
            if isinstance(rule.target, RuleRouter):
                routers.append(rule.target)
    return found


def example_path(pattern: str) -> str:
    """A path that ``pattern`` (a tornado route) matches."""
    return pattern.removesuffix("$").replace("/?", "").replace("(.*)", "x")


async def answer(url: str, method: str) -> int:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    response = await AsyncHTTPClient().fetch(
        url, method=method, body=body, raise_error=False, allow_nonstandard_methods=True
    )
    return response.code


@gen_test(timeout=60, clean_kwargs={"threads": False})
async def test_the_plugin_adds_no_handler_and_only_read_only_routes():
    """It is reached only through the scheduler's own comms (and their TLS);
    over HTTP it adds only its dashboard page, which answers nothing but GET."""
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0") as s:
        before = entrances(s)
        assert before["handlers"] and before["routes"]  # the check sees them
        plugin = AdaptivePlugin(
            backend=InProcessBackend, maximum=1, idle_timeout="100ms"
        )
        s.add_plugin(plugin)
        async with Client(s.address, asynchronous=True) as c:
            assert await c.submit(inc, 1) == 2  # one scale-up, one scale-down
            await until(lambda: not s.workers, what="scaled down")
        during = entrances(s)
        assert during["handlers"] == before["handlers"]
        assert during["stream_handlers"] == before["stream_handlers"]
        added = during["routes"] - before["routes"]
        assert "/adaptive/?$" in added  # the check sees the page
        assert all(READ_ONLY_PAGES.search(route) for route in added), added

        base = f"http://127.0.0.1:{s.http_server.port}"
        assert await answer(base + "/adaptive", "GET") == 200
        for route in added:
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                code = await answer(base + example_path(route), method)
                assert code == 405, (method, route, code)  # GET only

        await plugin.stop()
        assert entrances(s) == before  # and all of it goes with the plugin
