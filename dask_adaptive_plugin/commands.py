"""``dask adaptive``: a running scheduler's adaptive plugin, from a shell.

The ``dask`` command adds every click command or group of the entry-point
group ``dask_cli`` as a subcommand (``dask/cli.py``, ``run_cli``); the group
:data:`adaptive` is registered there in ``setup.cfg``. Everything is read
through channels the scheduler already has: ``client.run_on_scheduler`` for
the state (:mod:`dask_adaptive_plugin.status`) and the events of topic
``"adaptive"`` for the decisions. No handler is added to the scheduler.

To add a subcommand, give it the scheduler options and talk to the scheduler
inside :func:`run`::

    @adaptive.command()
    @scheduler_options
    @json_option
    def request(address, scheduler_file, timeout, as_json):
        \"\"\"One line of help.\"\"\"

        async def main() -> None:
            async with connect(address, scheduler_file, timeout) as (client, where):
                await require_plugin(client, where, timeout)
                ...

        run(main())

Failures raise :class:`click.ClickException` (the message on stderr, exit
code 1); bad usage is a :class:`click.UsageError` (exit code 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dask_adaptive_plugin.hints import DEFAULT_DURATION, request_workers

if TYPE_CHECKING:
    from distributed import Client

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The scheduler event topic of the plugin's decisions.
TOPIC = "adaptive"
DEFAULT_TIMEOUT = "10s"
NO_PLUGIN_HINT = (
    "start the scheduler with `dask scheduler --preload dask_adaptive_plugin`, "
    "or register one with client.register_plugin(AdaptivePlugin(...))"
)


@click.group(short_help="A running scheduler's adaptive plugin: status, log, request.")
def adaptive() -> None:
    """The adaptive plugin of a running scheduler: its pools and its decisions.

    Give the scheduler's ADDRESS or --scheduler-file to each subcommand.
    """


# -- what every subcommand that talks to a scheduler shares ----------------------------


class Duration(click.ParamType):
    """Seconds, as a number or a dask duration such as ``10s`` or ``1min``."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        from dask.utils import parse_timedelta

        try:
            seconds = parse_timedelta(value, default="seconds")
        except (TypeError, ValueError, KeyError):
            self.fail(
                f"{value!r} is not a duration; give seconds, e.g. 10 or 10s", param, ctx
            )
        if seconds <= 0:
            self.fail(f"{value!r} must be more than 0 seconds", param, ctx)
        return float(seconds)


def scheduler_options(command: F) -> F:
    """Add ``ADDRESS``, ``--scheduler-file`` and ``--timeout`` to a command."""
    command = click.option(
        "--timeout",
        type=Duration(),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="How long to wait for the scheduler to answer.",
    )(command)
    command = click.option(
        "--scheduler-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The JSON file the scheduler wrote (dask scheduler --scheduler-file).",
    )(command)
    return click.argument("address", required=False)(command)


def json_option(command: F) -> F:
    """Add ``--json`` (parameter ``as_json``) to a command."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON instead of a table."
    )(command)


def resolve_address(address: str | None, scheduler_file: Path | None) -> str:
    """The scheduler's address: ``ADDRESS``, the scheduler file's, or dask config's."""
    import dask

    if address and scheduler_file:
        raise click.UsageError(
            "give the scheduler's ADDRESS or --scheduler-file, not both"
        )
    if scheduler_file is not None:
        return address_in_file(scheduler_file)
    address = address or dask.config.get("scheduler-address", None)
    if not address:
        raise click.UsageError(
            "give the scheduler's ADDRESS (e.g. tcp://127.0.0.1:8786) or "
            "--scheduler-file PATH"
        )
    return str(address)


def address_in_file(path: Path) -> str:
    """The ``address`` in a scheduler file, or a message saying what is wrong."""
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise click.ClickException(
            f"the scheduler file {path} does not exist; is a scheduler running "
            f"with --scheduler-file {path}?"
        ) from None
    except (OSError, ValueError) as e:
        raise click.ClickException(
            f"cannot read the scheduler file {path}: {e}; it should be the JSON "
            "that `dask scheduler --scheduler-file` writes"
        ) from None
    if not isinstance(info, dict) or not info.get("address"):
        raise click.ClickException(
            f"the scheduler file {path} has no address; it should be the JSON "
            "that `dask scheduler --scheduler-file` writes"
        )
    return str(info["address"])


@contextlib.asynccontextmanager
async def connect(
    address: str | None, scheduler_file: Path | None, timeout: float
) -> AsyncIterator[tuple[Client, str]]:
    """An asynchronous client of the scheduler, and the address it reached.

    Raises :class:`click.ClickException` naming the address if no scheduler
    answers within ``timeout`` seconds.
    """
    from distributed import Client

    where = resolve_address(address, scheduler_file)
    client = Client(where, asynchronous=True, timeout=timeout, set_as_default=False)
    try:
        await client
    except Exception as e:  # refused, timed out, or something else answered
        await client.close()
        raise click.ClickException(
            f"no scheduler answered at {where} within {timeout:g}s "
            f"({type(e).__name__}: {e}); check the address and that the "
            "scheduler runs, or wait longer with --timeout"
        ) from None
    try:
        yield client, where
    finally:
        await client.close()


async def call_on_scheduler(
    client: Client,
    function: Callable[..., T],
    where: str,
    timeout: float,
    **kwargs: Any,
) -> T:
    """``client.run_on_scheduler(function, **kwargs)``, bounded by ``timeout``.

    A scheduler that cannot import this package has no adaptive plugin.
    """
    try:
        return await asyncio.wait_for(
            client.run_on_scheduler(function, **kwargs), timeout
        )
    except asyncio.TimeoutError:
        raise click.ClickException(
            f"the scheduler at {where} did not answer within {timeout:g}s; "
            "it may be overloaded: try again, or wait longer with --timeout"
        ) from None
    except ImportError as e:
        raise click.ClickException(
            f"the scheduler at {where} has no adaptive plugin: it cannot import "
            f"dask_adaptive_plugin ({e}); {NO_PLUGIN_HINT}"
        ) from None
    except Exception as e:
        raise click.ClickException(
            f"the scheduler at {where} could not answer "
            f"{getattr(function, '__name__', function)}: {type(e).__name__}: {e}"
        ) from None


async def require_plugin(client: Client, where: str, timeout: float) -> None:
    """Raise a :class:`click.ClickException` if the scheduler has no adaptive plugin."""
    from dask_adaptive_plugin.status import has_plugin

    if not await call_on_scheduler(client, has_plugin, where, timeout):
        raise no_plugin(where)


def no_plugin(where: str) -> click.ClickException:
    return click.ClickException(
        f"the scheduler at {where} has no adaptive plugin; {NO_PLUGIN_HINT}"
    )


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a subcommand's coroutine; Ctrl-C or SIGTERM end it cleanly (exit 0)."""
    # the commands say what failed; a client's log lines (tracebacks of a lost
    # connection, reconnection attempts) would only bury that. This process
    # is the command's own, so it can be done globally.
    logging.disable(logging.ERROR)
    try:
        asyncio.run(_cancelled_by_sigterm(main))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass


async def _cancelled_by_sigterm(main: Coroutine[Any, Any, None]) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # not on Windows
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    await main


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], (int, float)) for row in cells[1:]) and len(cells) > 1
        for i in range(len(headers))
    ]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [
            str(v).rjust(w) if right else str(v).ljust(w)
            for v, w, right in zip(row, widths, numeric)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> Any:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- dask adaptive status --------------------------------------------------------------

STATUS_COLUMNS = (
    "POOL", "BACKEND", "MIN", "MAX", "DESIRED", "REQUESTED", "LAUNCHING",
    "RUNNING", "IDLE", "RETIRING", "START-UP median/p90", "AVAILABLE",
)  # fmt: skip


@adaptive.command()
@scheduler_options
@json_option
def status(
    address: str | None, scheduler_file: Path | None, timeout: float, as_json: bool
) -> None:
    """Per pool: bounds, desired, requested, running and idle workers,
    start-up latency, availability; and needs that no pool provides."""
    from dask_adaptive_plugin.status import on_scheduler

    async def main() -> None:
        async with connect(address, scheduler_file, timeout) as (client, where):
            data = await call_on_scheduler(client, on_scheduler, where, timeout)
        if data is None:
            raise no_plugin(where)
        click.echo(json.dumps(data, indent=2) if as_json else format_status(data))

    run(main())


def format_status(data: dict[str, Any]) -> str:
    """The status dict of :func:`dask_adaptive_plugin.status.status`, readable."""
    lines = [summary_line(data)]
    if not data["running"]:
        lines.append("The adaptive plugin is not running (starting, or stopped).")
        return "\n".join(lines)
    lines += ["", table(STATUS_COLUMNS, map(pool_row, data["pools"])), ""]
    lines.append(f"Demand: {data['demand'] or '-'}")
    for need in data["unsatisfiable"]:
        wanted = ", ".join(f"{r}={a:g}" for r, a in need["resources"].items())
        tasks = need["tasks"]
        lines.append(
            f"Unsatisfiable: {tasks} tasks need {wanted}, which no pool provides"
        )
    return "\n".join(lines)


def summary_line(data: dict[str, Any]) -> str:
    """The scheduler, its workers, the policy and the bounds over all pools."""
    maximum = data["maximum"]
    bounds = f"minimum {data['minimum']}, " + (
        "no maximum" if maximum is None else f"maximum {maximum}"
    )
    unmanaged = f" ({data['unmanaged']} in no pool)" if data["unmanaged"] else ""
    return (
        f"Scheduler {data['scheduler']}: {data['workers']} workers{unmanaged}; "
        f"policy {data['policy']}; all pools together: {bounds}"
    )


def pool_row(pool: dict[str, Any]) -> list[Any]:
    startup = pool["startup"]
    return [
        pool["name"], pool["backend"], pool["minimum"], _bound(pool["maximum"]),
        pool["desired"], pool["requested"], pool["launching"], pool["running"],
        pool["idle"], pool["retiring"],
        f"{_seconds(startup['median'])} / {_seconds(startup['p90'])}",
        "yes" if pool["available"] else f"no: {pool['unavailable']}",
    ]  # fmt: skip


def _bound(maximum: int | None) -> str | int:
    return "none" if maximum is None else maximum


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}s"


# -- dask adaptive log -----------------------------------------------------------------

LOG_COLUMNS = ("TIME", "POOL", "STATUS", "N/WORKERS", "REASON")
#: Column widths while following, before the rows to come are known: an ISO
#: time, a pool name, "unsatisfiable", one worker address.
FOLLOW_WIDTHS = (19, 10, 13, 21)


@adaptive.command()
@scheduler_options
@json_option
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing new decisions until Ctrl-C."
)
def log(
    address: str | None,
    scheduler_file: Path | None,
    timeout: float,
    as_json: bool,
    follow: bool,
) -> None:
    """The plugin's decisions, oldest first, with their reasons."""

    async def main() -> None:
        async with connect(address, scheduler_file, timeout) as (client, where):
            await print_log(client, where, timeout, as_json, follow)

    run(main())


async def print_log(
    client: Client, where: str, timeout: float, as_json: bool, follow: bool
) -> None:
    """Print the past decisions, then, with ``follow``, each new one."""
    from dask_adaptive_plugin.status import log_on_scheduler

    live: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    if follow:  # the handler; the scheduler subscribes this client below
        client.subscribe_topic(TOPIC, live.put_nowait)
    subscriber = client.id if follow else None
    state = await call_on_scheduler(
        client, log_on_scheduler, where, timeout, subscriber=subscriber
    )
    past = [tuple(event) for event in state["events"]]
    printer = LogPrinter(as_json, past, FOLLOW_WIDTHS if follow else ())
    printer.print_all(past)
    if not state["plugin"]:
        raise no_plugin(where)  # after the past: it may say why it was removed
    if not past and not follow and not as_json:
        click.echo("No decisions yet.")
    if follow:
        printer.header()  # at once, even with no past: it shows it follows
        await follow_log(client, where, live, printer)


async def follow_log(
    client: Client,
    where: str,
    live: asyncio.Queue[tuple[float, dict[str, Any]]],
    printer: LogPrinter,
) -> None:
    """Print events as they arrive until cancelled or the scheduler is gone."""
    while True:
        try:
            event = await asyncio.wait_for(live.get(), 1.0)
        except asyncio.TimeoutError:
            # distributed does not subscribe again after a reconnection
            if client.status != "running":
                raise click.ClickException(
                    f"lost the connection to the scheduler at {where}"
                ) from None
            continue
        printer.print(event)


class LogPrinter:
    """Prints decisions as one JSON object per line, or as a table whose
    columns fit the headers, the rows of ``widths_from`` and ``minimum``."""

    def __init__(
        self,
        as_json: bool,
        widths_from: Iterable[tuple[float, dict[str, Any]]] = (),
        minimum: Sequence[int] = (),
    ) -> None:
        self.as_json = as_json
        rows = [LOG_COLUMNS] + [log_row(t, r) for t, r in widths_from]
        # the reason is last: it is never padded
        self.widths = [
            max([len(row[i]) for row in rows] + list(minimum[i : i + 1]))
            for i in range(len(LOG_COLUMNS) - 1)
        ]
        self.header_printed = False

    def print_all(self, events: Iterable[tuple[float, dict[str, Any]]]) -> None:
        for event in events:
            self.print(event)

    def print(self, event: tuple[float, dict[str, Any]]) -> None:
        timestamp, record = event
        if self.as_json:
            line = {"timestamp": timestamp, "record": record}
            click.echo(json.dumps(line, default=str))
            return
        self.header()
        click.echo(self.line(log_row(timestamp, record)))

    def header(self) -> None:
        """The table's header, once (none for JSON)."""
        if not self.as_json and not self.header_printed:
            click.echo(self.line(LOG_COLUMNS))
            self.header_printed = True

    def line(self, row: Sequence[str]) -> str:
        cells = [c.ljust(w) for c, w in zip(row, self.widths)] + [row[-1]]
        return "  ".join(cells).rstrip()


def log_row(timestamp: float, record: dict[str, Any]) -> tuple[str, ...]:
    """Time (local, ISO), pool, status, ``n`` or the workers, and the reason."""
    when = datetime.datetime.fromtimestamp(timestamp).isoformat(timespec="seconds")
    reason = str(record.get("reason", ""))
    if record.get("error"):
        reason = f"{reason} ({record['error']})"
    return (
        when,
        str(record.get("pool") or "-"),
        str(record.get("status", "?")),
        detail(record),
        reason,
    )


def detail(record: dict[str, Any]) -> str:
    """What a record is about: the total asked for, the workers, the fallback."""
    kind = record.get("status")
    if kind == "up":
        return str(record.get("n", ""))
    if kind == "fallback":
        return f"to {record.get('to', '?')}"
    if kind == "unsatisfiable":
        return f"{record.get('tasks', '?')} tasks"
    if kind == "error":
        return str(record.get("action", ""))
    workers = record.get("workers")
    if isinstance(workers, (list, tuple)):  # a list arrives as a tuple
        return ", ".join(map(str, workers))
    return "" if workers is None else str(workers)


# -- dask adaptive request -------------------------------------------------------------


@adaptive.command()
@click.argument("n", type=click.IntRange(min=0))
@scheduler_options
@json_option
@click.option(
    "--pool", default=None, help="The pool to keep them in (default: any pool)."
)
@click.option(
    "--for",
    "duration",
    type=Duration(),
    default=DEFAULT_DURATION,
    show_default=True,
    help="How long the request lasts.",
)
def request(
    n: int,
    address: str | None,
    scheduler_file: Path | None,
    timeout: float,
    as_json: bool,
    pool: str | None,
    duration: float,
) -> None:
    """Keep at least N workers for a while, ahead of work you know is coming.

    The same request as ``dask_adaptive_plugin.request_workers``; this prints
    the plugin's answer, or says why it refused.
    """

    async def main() -> None:
        async with connect(address, scheduler_file, timeout) as (client, where):
            answer = await send_request(client, where, timeout, n, pool, duration)
        if answer["status"] == "error":
            raise click.ClickException(f"the plugin refused: {answer['error']}")
        if as_json:
            click.echo(json.dumps(answer, default=str))
        else:
            click.echo(f"{answer['reason']}; it expires in {duration:g}s")

    run(main())


async def send_request(
    client: Client,
    where: str,
    timeout: float,
    n: int,
    pool: str | None,
    duration: float,
) -> dict[str, Any]:
    """Ask for workers and return the plugin's answer: a ``request`` event, or
    an ``error`` event of action ``request``."""
    from dask_adaptive_plugin.status import log_on_scheduler

    answers: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    client.subscribe_topic(TOPIC, answers.put_nowait)
    # subscribed on the scheduler before the request is sent: no answer is missed
    state = await call_on_scheduler(
        client, log_on_scheduler, where, timeout, subscriber=client.id
    )
    if not state["plugin"]:
        raise no_plugin(where)
    await request_workers(client, n, pool=pool, duration=duration)
    try:
        return await asyncio.wait_for(_answer(answers), timeout)
    except asyncio.TimeoutError:
        raise click.ClickException(
            f"the plugin at {where} did not answer the request within {timeout:g}s"
        ) from None


async def _answer(
    events: asyncio.Queue[tuple[float, dict[str, Any]]],
) -> dict[str, Any]:
    while True:
        _, record = await events.get()
        if record.get("status") == "request" or (
            record.get("status") == "error" and record.get("action") == "request"
        ):
            return record


# -- simulate: no scheduler needed; virtual time (dask_adaptive_plugin.simulate) ---------

from dask_adaptive_plugin.simulate.cli import simulate  # noqa: E402

adaptive.add_command(simulate)
