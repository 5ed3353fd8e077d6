"""What the test suite must leave alone: workload users of a KAT running on the same
machine (the default `kat_wl_` prefix; the tests' agents use a prefix of their own, see
tests/conftest.py), their long-lived processes (the conmon of every container) and what
their Podman says runs (a container can vanish from Podman's view while its processes
keep running: that happened once, when tests shared workload users with the quickstart)."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import socket
from pathlib import Path

from kat_agent.node.podman.users import (
    DEFAULT_HOME_BASE,
    GECOS_PREFIX,
    RUNTIME_DIR_BASE,
    USERNAME_PREFIX,
    remove_workload_users_with_prefix,
    username_prefix,
)


def foreign_workload_users() -> dict[str, int]:
    """username -> uid of the workload users of KATs other than the tests': the default
    prefix, with the agent's default home (as a cluster started by the README's
    quickstart has them). Users with a home elsewhere (e.g. under /tmp) belong to other
    test sessions, which may come and go while this one runs."""
    ours = username_prefix()
    return {
        pw.pw_name: pw.pw_uid
        for pw in pwd.getpwall()
        if pw.pw_gecos.startswith(GECOS_PREFIX)
        and pw.pw_name.startswith(USERNAME_PREFIX)
        and not pw.pw_name.startswith(ours)
        and Path(pw.pw_dir).parent == DEFAULT_HOME_BASE
    }


def _containers_by_uid() -> dict[int, set[str]]:
    """uid -> ids of the containers whose conmon (the container's monitor; not that of
    an exec session, which ends on its own) runs as that uid."""
    found: dict[int, set[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if not argv or not argv[0].endswith(b"conmon") or b"--exec" in argv:
                continue
            cid = argv[argv.index(b"-c") + 1].decode()
            uid = Path(f"/proc/{entry}").stat().st_uid
        except (OSError, ValueError, IndexError):
            continue
        found.setdefault(uid, set()).add(cid)
    return found


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def podman_running(uid: int) -> set[str]:
    """Ids of the running containers that the KAT Podman services of `uid` list (the
    sockets /run/user/<uid>/kat-*.sock; none when no service runs)."""
    ids: set[str] = set()
    for sock in sorted((RUNTIME_DIR_BASE / str(uid)).glob("kat-*.sock")):
        conn = _UnixConnection(sock)
        try:
            conn.request("GET", "/v4.0.0/libpod/containers/json")
            resp = conn.getresponse()
            if resp.status == 200:
                ids |= {c["Id"] for c in json.loads(resp.read())}
        except OSError:
            continue  # no service behind this socket (stopped): nothing to compare
        finally:
            conn.close()
    return ids


def foreign_workload_state() -> dict[str, set[str]]:
    """username -> ids of the running containers of that user, for every foreign
    workload user: `conmon:<id>` for each container process, `podman:<id>` for each
    container its Podman lists as running."""
    containers = _containers_by_uid()
    return {
        name: {f"conmon:{c}" for c in containers.get(uid, set())}
        | {f"podman:{c}" for c in podman_running(uid)}
        for name, uid in foreign_workload_users().items()
    }


def remove_own_workload_users() -> list[str]:
    """Remove the workload users that this session's agents made and left behind (an
    agent killed by a test does not remove its users). Returns their names."""
    return remove_workload_users_with_prefix(username_prefix())
