"""Processes of a container that its Podman no longer knows as running.

A container's processes outlive Podman's record of them when Podman loses its view: its
runtime directory (a tmpfs under /run/user/<uid>) is removed and the next Podman
"refreshes" every container to stopped, or its storage is removed. The container's
monitor (`conmon -c <id>`) and the processes under it then keep running, invisible to
`podman ps`; a replacement would run next to them (and fight them for published ports).
When KAT removes a container (or finds it gone), it ends whatever still runs of it here.

Blocking (reads /proc): call through asyncio.to_thread.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")
SETTLE_SECONDS = 0.5  # how long a removed container's conmon may take to end by itself


def _cmdline(pid: int) -> list[bytes]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(e) for e in os.listdir(PROC) if e.isdigit()]


def container_monitors(container_id: str) -> list[int]:
    """Pids of the conmon processes that monitor container `container_id` (not those of
    exec sessions, which end on their own)."""
    cid = container_id.encode()
    found = []
    for pid in _pids():
        argv = _cmdline(pid)
        if not argv or not argv[0].endswith(b"conmon") or b"--exec" in argv:
            continue
        try:
            if argv[argv.index(b"-c") + 1] == cid:
                found.append(pid)
        except (ValueError, IndexError):
            continue
    return found


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out: dict[int, int] = {}
    for pid in _pids():
        try:
            stat = (PROC / str(pid) / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            out[pid] = int(fields[1])
    return out


def process_tree(roots: list[int]) -> list[int]:
    """`roots` and all their descendants, children before parents."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    order: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        order.append(pid)
        stack.extend(children.get(pid, []))
    return list(reversed(order))


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(pid)
    return alive


def end_container_processes(container_id: str, grace: float = 2.0) -> int:
    """End what still runs of container `container_id` here (its conmon and everything
    under it): SIGTERM, then SIGKILL after `grace` seconds. The number of processes
    found; 0 when nothing of it runs (the normal case, after Podman removed it)."""
    monitors = container_monitors(container_id)
    deadline = time.monotonic() + SETTLE_SECONDS
    while monitors and time.monotonic() < deadline:
        # Just removed by Podman: its conmon may still be finishing on its own.
        time.sleep(0.05)
        monitors = _alive(monitors)
    if not monitors:
        return 0
    pids = process_tree(monitors)
    log.warning(
        "container %s: %d process(es) still run that Podman no longer knows; ending them",
        container_id[:12],
        len(pids),
    )
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal(_alive(pids), signal.SIGKILL)
    return len(pids)
