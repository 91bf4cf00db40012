"""Processes on this machine that belong to one scheduler, read from ``/proc``.

Every ``dask worker`` is started with its scheduler's address on its command
line, whatever starts it (a backend, a batch job, a stand-in kubelet). The
kit's scheduler listens on a port of its own, so a process whose command line
holds that address and outlives ``close()`` is one the backend left behind.
Only Linux has ``/proc``; elsewhere nothing is found.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterable

PROC = "/proc"


def processes_of(address: str) -> dict[int, str]:
    """The processes whose command line holds ``address``: PID -> command line.

    ``tcp://127.0.0.1:4000`` does not match ``tcp://127.0.0.1:40001``.
    """
    pattern = re.compile(re.escape(address) + r"(?![0-9])")
    found = {}
    for pid, command in _command_lines():
        if pid != os.getpid() and pattern.search(command):
            found[pid] = command
    return found


def kill_trees(pids: Iterable[int]) -> None:
    """SIGKILL these processes and all their descendants."""
    children = _children()
    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid == os.getpid():
            continue
        seen.add(pid)
        todo += children.get(pid, [])
    for pid in seen:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def describe(processes: dict[int, str], limit: int = 200) -> str:
    """``pid 12: python -m ...`` for each, command lines cut at ``limit``."""
    return "; ".join(
        f"pid {pid}: {command[:limit]}" for pid, command in sorted(processes.items())
    )


def _command_lines() -> Iterable[tuple[int, str]]:
    try:
        entries = os.listdir(PROC)
    except OSError:  # not Linux
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{PROC}/{entry}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if raw:  # a zombie's is empty: it has ended
            yield int(entry), raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _children() -> dict[int, list[int]]:
    """Parent PID -> child PIDs, for every process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir(PROC) if os.path.isdir(PROC) else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"{PROC}/{entry}/stat") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and ")"
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children
