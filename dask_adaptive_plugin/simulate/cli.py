"""``dask adaptive simulate``: the simulator from a shell.

A subcommand of the ``dask adaptive`` group
(:mod:`dask_adaptive_plugin.commands`); ``python -m
dask_adaptive_plugin.simulate`` runs the same command on its own.
"""

from __future__ import annotations

from pathlib import Path

import click

from dask_adaptive_plugin.simulate.workload import SOURCES


@click.command(short_help="Simulate adaptive scaling of a workload, in virtual time.")
@click.argument(
    "workload", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A dask config YAML: 'adaptive-plugin:' (pools, policy, bounds) and "
    "'simulate:' (each pool's latency, never-deliver, nthreads). "
    "Default: the current dask config.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write a PNG of workers against demand over time, per pool (needs matplotlib).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--kind",
    type=click.Choice(SOURCES),
    help="What WORKLOAD is, if its content should not decide.",
)
def simulate(
    workload: Path,
    config: Path | None,
    plot: Path | None,
    as_json: bool,
    seed: int,
    kind: str | None,
) -> None:
    """Run the plugin's policy, ledger and planner against simulated pools
    and a simulated scheduler, in virtual time.

    WORKLOAD is a YAML of phases, a trace recorded with the plugin's
    record-trace option, or a saved client.get_task_stream() (JSON).
    """
    from dask_adaptive_plugin.simulate import simulate as run

    try:
        result = run(workload, config, seed, kind=kind)
    except ValueError as e:  # WorkloadError, TraceError, ConfigError
        raise click.ClickException(str(e)) from None
    if plot is not None:
        try:
            result.plot(plot)
        except (ImportError, ValueError) as e:
            raise click.ClickException(str(e)) from None
    click.echo(result.to_json() if as_json else result.summary())


if __name__ == "__main__":  # pragma: no cover
    simulate()
