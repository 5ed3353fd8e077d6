"""Processes of a container that its Podman no longer knows as running.

A container's processes outlive Podman's record of them when Podman loses its view: its
runtime directory (a tmpfs under /run/user/<uid>) is removed and the next Podman
"refreshes" every container to stopped, or its storage is removed. The container's
monitor (`conmon -c <id>`) and the processes under it then keep running, invisible to
`podman ps`; a replacement would run next to them (and fight them for published ports).
When KAT removes a container (or finds it gone), it ends whatever still runs of it here.

Such a container's network namespace outlives it too: Podman mounted it under /run/netns
when it started the container and would unmount it when it stops it, but it believes that
already happened. Once the processes are ended, the namespace they ran in (the one that is
not their conmon's) is unmounted and its file removed, unless some other process is still
in it; that also removes the container's veth from the node's bridge. Root's Podman only:
a rootless Podman's namespaces live in its user's own mount namespace, and go with the user.

Blocking (reads /proc): call through asyncio.to_thread.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

log = logging.getLogger(__name__)

PROC = Path("/proc")
NETNS_DIR = Path("/run/netns")  # where root's Podman (netavark) mounts container namespaces
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


def monitor_gone(container_id: str, monitor_pid: int) -> bool:
    """Whether the conmon Podman names for `container_id` (its ConmonPid) no longer runs:
    no such process, or another program under that pid by now."""
    if monitor_pid <= 0:
        return False  # Podman names none: nothing to tell
    argv = _cmdline(monitor_pid)
    if not argv or not argv[0].endswith(b"conmon"):
        return True
    try:
        return argv[argv.index(b"-c") + 1] != container_id.encode()
    except (ValueError, IndexError):
        return True


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


NamespaceId = tuple[int, int]  # (st_dev, st_ino) of a namespace file, as `ip netns identify`


def _netns_of(pid: int) -> NamespaceId | None:
    try:
        st = os.stat(PROC / str(pid) / "ns" / "net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def container_namespaces(monitors: list[int], tree: list[int]) -> set[NamespaceId]:
    """The network namespaces processes of `tree` run in that none of the `monitors`
    (conmons, which stay in the node's namespace) runs in: the container's own."""
    own = {_netns_of(pid) for pid in monitors}
    found = {_netns_of(pid) for pid in tree}
    return {ns for ns in found - own if ns is not None}


def remove_unused_namespaces(
    namespaces: set[NamespaceId], directory: Path = NETNS_DIR
) -> list[Path]:
    """Unmount and remove the files in `directory` that name one of `namespaces`, unless a
    process still runs in it. The files removed."""
    if not namespaces:
        return []
    in_use = {_netns_of(pid) for pid in _pids()}
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        ns = (st.st_dev, st.st_ino)
        if ns not in namespaces or ns in in_use:
            continue
        try:
            pyroute2_netns.remove(str(entry))
        except OSError as exc:
            log.warning("could not remove network namespace %s: %s", entry, exc)
            continue
        removed.append(entry)
    return removed


def end_container_processes(container_id: str, grace: float = 2.0) -> int:
    """End what still runs of container `container_id` here (its conmon and everything
    under it): SIGTERM, then SIGKILL after `grace` seconds; then remove the network
    namespace they ran in (see the module docstring). The number of processes found; 0
    when nothing of it runs (the normal case, after Podman removed it)."""
    # Just removed by Podman: its conmon may still be finishing on its own.
    monitors = _still_alive_after(container_monitors(container_id), SETTLE_SECONDS)
    if not monitors:
        return 0
    pids = process_tree(monitors)
    namespaces = container_namespaces(monitors, pids)
    log.warning(
        "container %s: %d process(es) still run that Podman no longer knows; ending them",
        container_id[:12],
        len(pids),
    )
    _signal(pids, signal.SIGTERM)
    _signal(_still_alive_after(pids, grace), signal.SIGKILL)
    _still_alive_after(pids, grace)
    for path in remove_unused_namespaces(namespaces):
        log.warning("container %s: removed its network namespace %s", container_id[:12], path)
    return len(pids)


def _still_alive_after(pids: list[int], seconds: float) -> list[int]:
    """Those of `pids` still alive once all ended or `seconds` passed (polled)."""
    deadline = time.monotonic() + seconds
    alive = _alive(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = _alive(alive)
    return alive
