"""Options from arguments, dask config and the environment; bad input errors."""

from __future__ import annotations

import os
import subprocess
import sys

import dask
import pytest

from dask_adaptive_plugin import AdaptivePlugin, FixedPolicy
from dask_adaptive_plugin.backends.local import LocalBackend
from dask_adaptive_plugin.config import parse_key_value, resolve_options
from dask_adaptive_plugin.plugin import pool_runtime


def test_defaults_come_from_the_shipped_yaml():
    options = resolve_options()
    assert options.backend == "local"
    assert options.policy == "adaptive"
    assert options.minimum == 0
    assert options.maximum is None
    assert options.idle_timeout == 2.0


def test_arguments_win_over_config():
    with dask.config.set({"adaptive-plugin.maximum": 3, "adaptive-plugin.idle-timeout": "1m"}):
        assert resolve_options().maximum == 3
        assert resolve_options().idle_timeout == 60.0
        assert resolve_options(maximum=5).maximum == 5


def test_maximum_none_takes_the_backends_bound():
    plugin = AdaptivePlugin()
    assert plugin.options.maximum is None
    cpus = os.cpu_count() or 1
    assert pool_runtime(plugin.pools[0], LocalBackend, None).maximum == cpus
    with pytest.raises(ValueError, match=f"above the backend's maximum {cpus}"):
        AdaptivePlugin(minimum=cpus + 1)


def test_a_given_maximum_goes_above_the_local_backends_one_per_core():
    """``local``'s CPU count is a default, as for ``LocalCluster``: sleeping
    or I/O-bound tasks may want more worker processes than cores."""
    cpus = os.cpu_count() or 1
    plugin = AdaptivePlugin(maximum=cpus + 1)
    assert pool_runtime(plugin.pools[0], LocalBackend, cpus + 1).maximum is None
    pools = {"a": {"backend": "local", "maximum": cpus + 2}}
    pool = AdaptivePlugin(pools=pools).pools[0]
    assert pool_runtime(pool, LocalBackend).maximum == cpus + 2


def test_option_keys_become_snake_case():
    options = resolve_options(backend_options={"memory-limit": "2GiB", "nthreads": 2})
    assert options.backend_options == {"memory_limit": "2GiB", "nthreads": 2}


def test_policy_options_from_config_and_arguments():
    with dask.config.set({"adaptive-plugin.policy-options": {"target-duration": "7s"}}):
        assert AdaptivePlugin().policy.target_duration == 7.0
        assert AdaptivePlugin(target_duration="2s").policy.target_duration == 2.0


def test_fixed_policy_by_name():
    plugin = AdaptivePlugin(policy="fixed", n=2, maximum=4)
    assert isinstance(plugin.policy, FixedPolicy)
    assert plugin.policy.n == 2


def test_environment_variables_reach_the_plugin():
    code = (
        "from dask_adaptive_plugin import AdaptivePlugin;"
        "p = AdaptivePlugin();"
        "print(p.options.maximum, p.options.idle_timeout, p.options.backend_options)"
    )
    env = {
        **os.environ,
        "DASK_ADAPTIVE_PLUGIN__MAXIMUM": "8",
        "DASK_ADAPTIVE_PLUGIN__IDLE_TIMEOUT": "3s",
        "DASK_ADAPTIVE_PLUGIN__BACKEND_OPTIONS": '{"memory-limit": "1GiB"}',
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[0] == "8 3.0 {'memory_limit': '1GiB'}"


def test_a_bad_environment_value_is_a_clear_error():
    env = {**os.environ, "DASK_ADAPTIVE_PLUGIN__MAXIMUM": "eight"}
    proc = subprocess.run(
        [sys.executable, "-c", "import dask_adaptive_plugin as d; d.AdaptivePlugin()"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "maximum" in last and "'eight'" in last and "whole number" in last


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"minimum": 5, "maximum": 2}, r"minimum .*: 5 is above maximum .*: 2"),
        ({"minimum": -1}, r"minimum .*: -1; expected a whole number >= 0"),
        ({"minimum": "two"}, r"minimum .*'two'"),
        ({"minimum": True}, r"minimum .*True"),
        ({"maximum": 2.5}, r"maximum .*2.5"),
        ({"idle_timeout": "soon"}, r"idle_timeout .*'soon'.*duration"),
        ({"idle_timeout": -3}, r"idle_timeout .*-3"),
        ({"backend": "nope"}, r"unknown backend 'nope'; installed backend names: .*local"),
        ({"policy": "nope"}, r"unknown policy 'nope'; installed policy names: adaptive, fixed"),
        ({"backend_options": {"nthreadz": 1}}, r"nthreadz.*it takes nthreads"),
        ({"backend_options": ["nthreads"]}, r"backend_options .*mapping"),
        ({"frobnicate": 1}, r"frobnicate.*it takes target_duration"),
        ({"minimum": 10_000}, r"above the backend's maximum"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptivePlugin(**kwargs)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nthreads=2", ("nthreads", 2)),
        ("memory-limit=2GiB", ("memory-limit", "2GiB")),
        ("hosts=a,b", ("hosts", "a,b")),
        ("args=--x=1", ("args", "--x=1")),
    ],
)
def test_key_value_parsing(text, expected):
    assert parse_key_value("--adaptive-option", text) == expected


def test_key_value_without_equals_is_an_error():
    with pytest.raises(ValueError, match=r"--adaptive-option 'nthreads'; expected KEY=VALUE"):
        parse_key_value("--adaptive-option", "nthreads")


def test_plugin_pickles_with_its_arguments():
    import pickle

    plugin = AdaptivePlugin(maximum=3, idle_timeout="4s", target_duration="2s")
    clone = pickle.loads(pickle.dumps(plugin))
    assert clone.options == plugin.options
    assert clone.policy.target_duration == 2.0
