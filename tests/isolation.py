"""What the test suite must leave alone: workload users of a KAT running on the same
machine (the default `kat_wl_` prefix; the tests' agents use a prefix of their own, see
tests/conftest.py) and their long-lived processes (the conmon of every container)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from kat_agent.node.podman.users import (
    DEFAULT_HOME_BASE,
    GECOS_PREFIX,
    USERNAME_PREFIX,
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


def foreign_workload_state() -> dict[str, set[str]]:
    """username -> ids of the running containers of that user, for every foreign
    workload user."""
    containers = _containers_by_uid()
    return {name: containers.get(uid, set()) for name, uid in foreign_workload_users().items()}
