"""Command line: ``dask scheduler --preload dask_adaptive_plugin --adaptive-...``.

distributed validates a preload's click options while it parses the command
line, and later catches any exception from ``dask_setup``, logs it and keeps
the scheduler running. A scheduler that silently does not scale is the worst
outcome, so every option is checked at parse time (a click usage error, exit
code 2, before the scheduler starts), and anything that still fails when the
plugin starts (the backend rejecting an option value) ends the process with
``SystemExit``, which distributed does not catch.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from dask_adaptive_plugin.config import merge_config_file, parse_key_value

if TYPE_CHECKING:
    from distributed import Scheduler

    from dask_adaptive_plugin.plugin import AdaptivePlugin

logger = logging.getLogger(__name__)


def plugin_from_cli(
    adaptive_config: str | None = None,
    adaptive_backend: str | None = None,
    adaptive_minimum: str | None = None,
    adaptive_maximum: str | None = None,
    adaptive_policy: str | None = None,
    adaptive_idle_timeout: str | None = None,
    adaptive_start_timeout: str | None = None,
    adaptive_retire_timeout: str | None = None,
    adaptive_option: tuple[str, ...] = (),
    adaptive_policy_option: tuple[str, ...] = (),
    adaptive_record_trace: str | None = None,
) -> AdaptivePlugin:
    """Build the plugin from command-line values; ``ValueError`` if one is bad."""
    from dask_adaptive_plugin.plugin import AdaptivePlugin

    if adaptive_config is not None:
        merge_config_file(adaptive_config)
    backend_options = dict(
        parse_key_value("--adaptive-option", o) for o in adaptive_option
    )
    policy_options = dict(
        parse_key_value("--adaptive-policy-option", o) for o in adaptive_policy_option
    )
    return AdaptivePlugin(
        backend=adaptive_backend,
        minimum=adaptive_minimum,
        maximum=adaptive_maximum,
        policy=adaptive_policy,
        idle_timeout=adaptive_idle_timeout,
        start_timeout=adaptive_start_timeout,
        retire_timeout=adaptive_retire_timeout,
        backend_options=backend_options or None,
        record_trace=adaptive_record_trace,
        **{k.replace("-", "_"): v for k, v in policy_options.items()},
    )


class _ValidatingCommand(click.Command):
    """Builds the plugin while parsing, so bad input fails before start-up."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        try:
            plugin_from_cli(**ctx.params)
        except ValueError as e:
            raise click.UsageError(f"dask-adaptive-plugin: {e}", ctx) from None
        return rest


@click.command(cls=_ValidatingCommand)
@click.option(
    "--adaptive-config",
    metavar="FILE.yaml",
    help="A dask config file merged first: pools, or the whole set-up.",
)
@click.option("--adaptive-backend", help="Backend name (default: config, 'local').")
@click.option("--adaptive-minimum", help="Fewest workers (default 0).")
@click.option("--adaptive-maximum", help="Most workers (default: the backend's bound).")
@click.option("--adaptive-policy", help="Policy name: adaptive (default) or fixed.")
@click.option("--adaptive-idle-timeout", help="Idle time before retiring (2s).")
@click.option("--adaptive-start-timeout", help="Time for a worker to connect (120s).")
@click.option("--adaptive-retire-timeout", help="Time a retirement may take (60s).")
@click.option(
    "--adaptive-option",
    multiple=True,
    metavar="KEY=VALUE",
    help="A backend option; repeatable. Example: nthreads=2",
)
@click.option(
    "--adaptive-policy-option",
    multiple=True,
    metavar="KEY=VALUE",
    help="A policy option; repeatable. Example: target-duration=5s",
)
@click.option(
    "--adaptive-record-trace",
    metavar="FILE.jsonl",
    help="Record a trace of the workload for 'dask adaptive simulate'.",
)
async def dask_setup(scheduler: Scheduler, **params: Any) -> None:
    """Add the adaptive plugin to a scheduler started with ``--preload``."""
    try:
        plugin = plugin_from_cli(**params)
        await scheduler.register_scheduler_plugin(plugin, idempotent=False)
    except Exception as e:
        logger.critical("dask-adaptive-plugin could not start: %s", e)
        raise SystemExit(f"dask-adaptive-plugin: {e}") from None


def dask_scheduler_main() -> None:
    """``dask-scheduler``: the older spelling of ``dask scheduler``."""
    from distributed.cli.dask_scheduler import main

    main(prog_name="dask-scheduler", args=sys.argv[1:])
