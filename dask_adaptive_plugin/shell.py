"""The one way this project runs external commands (``sbatch``, ``qdel``...).

Every command goes through :func:`run_command`: no shell (arguments are passed
as they are, never interpreted), never blocking the event loop, always with a
timeout, and an error that shows what ran and what it said.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """An external command failed: it exited non-zero, timed out or was not found.

    Attributes
    ----------
    cmd
        The command, as a list of arguments.
    returncode
        Its exit code, or ``None`` if it did not exit by itself (timeout) or
        could not be started.
    stdout, stderr
        What it wrote (decoded, possibly empty).
    """

    def __init__(
        self,
        cmd: Sequence[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        problem: str,
    ) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{problem}\n"
            f"Command: {shlex.join(self.cmd)}\n"
            f"Exit code: {returncode}\n"
            f"stdout:\n{stdout}\n"
            f"stderr:\n{stderr}"
        )


async def run_command(
    cmd: Sequence[str],
    *,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> str:
    """Run ``cmd`` without a shell and return its standard output.

    Parameters
    ----------
    cmd
        The program and its arguments; each one reaches the program verbatim.
    timeout
        Seconds before the command is killed and :class:`CommandError` raised.
    env
        Variables added to (or replacing some of) this process's environment.
    stdin
        Text written to the command's standard input (``bsub < script``);
        ``None`` gives it an empty input.

    Raises
    ------
    CommandError
        if the command is not found, exits non-zero, or does not finish within
        ``timeout``; the message shows the command, exit code, stdout and stderr.

    Examples
    --------
    >>> await run_command(["squeue", "--noheader"])  # doctest: +SKIP
    """
    cmd = [str(arg) for arg in cmd]
    logger.debug("running %s", shlex.join(cmd))
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_environment(env),
            # its own process group: a timeout kills whatever it started too
            start_new_session=True,
        )
    except OSError as e:
        problem = f"Command could not be started: {e}"
        raise CommandError(cmd, None, "", str(e), problem) from e
    data = stdin.encode() if stdin else None
    # communicate() runs as a task of its own, so that a timeout does not lose
    # what the command has written so far
    talking = asyncio.ensure_future(proc.communicate(data))
    try:
        done, _ = await asyncio.wait({talking}, timeout=timeout)
    finally:
        if not talking.done():
            _kill(proc)
    if not done:
        out, err = await _output_after_kill(talking)
        raise CommandError(
            cmd, None, out, err, f"Command timed out after {timeout:g}s."
        )
    out, err = (_decode(b) for b in talking.result())
    if proc.returncode != 0:
        raise CommandError(
            cmd, proc.returncode, out, err, "Command exited with non-zero exit code."
        )
    return out


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    """This process's variables, ``PWD`` set to the working directory as a
    shell sets it, and ``extra`` over them.

    Some commands take their working directory from ``PWD``, not from the
    process: ``oarsub`` runs the job, and writes its ``OAR.*.stdout``, in
    ``$PWD``, which ``os.chdir`` (a preload script's, pytest's) leaves stale.
    """
    return {**os.environ, "PWD": os.getcwd(), **(extra or {})}


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _output_after_kill(talking: asyncio.Future) -> tuple[str, str]:
    """What a killed command wrote, unless a child of it holds its pipes open."""
    try:
        out, err = await asyncio.wait_for(talking, 5)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        return "", ""
    return _decode(out), _decode(err)


def _decode(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")
