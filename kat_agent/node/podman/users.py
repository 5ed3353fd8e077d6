"""Workload users (SPEC section 8: workloads run rootless): unprivileged system users named
`kat_wl_<namespace>_<name>` with a subordinate uid/gid range each; see
`ensure_workload_user`. Usernames are limited to 32 characters: a longer name becomes
`kat_wl_<first 13 chars of "<namespace>_<name>">__<10 hex digits of a hash>`, which is
stable and cannot clash with a full name (DNS labels never contain `__`). The GECOS
field of the user records `kat workload <namespace>/<name>` so that a user of that name
created by anything else is never taken over.

Rootless Podman leaves a pause process (`catatonit -P`) per user, and conmon of every exec
session lingers for `exit_command_delay` (default 300 s, settable in containers.conf);
`remove_workload_user` ends all processes of the user before deleting it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from internal.host.files import write_atomic
from kat_agent.node.podman.errors import PodmanServiceError

log = logging.getLogger(__name__)

USERNAME_PREFIX = "kat_wl_"
# Another prefix for the workload users of this process (and its children). The test suite
# sets it, so that its agents never share a user (nor its Podman storage, runtime dir and
# processes) with a KAT running on the same machine, and never adopt that KAT's users.
USERNAME_PREFIX_ENV = "KAT_WORKLOAD_USER_PREFIX"
_PREFIX_RE = re.compile(r"^[a-z_][a-z0-9_]{1,10}_$")
MAX_USERNAME = 32
GECOS_PREFIX = "kat workload "
# A spare user (spares.py), made ahead of its workload: "kat spare <agent tag>".
SPARE_GECOS_PREFIX = "kat spare "
DEFAULT_HOME_BASE = Path("/var/lib/kat-workloads")
SUBID_COUNT = 65536
SUBID_MIN = 100_000
SUBID_MAX = 600_100_000
USER_LOCK = Path("/run/lock/kat-workload-users.lock")
RUNTIME_DIR_BASE = Path("/run/user")
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class WorkloadUser(NamedTuple):
    uid: int
    gid: int
    username: str

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.username).pw_dir)

    @property
    def runtime_dir(self) -> Path:
        return RUNTIME_DIR_BASE / str(self.uid)

    def env(self) -> dict[str, str]:
        """The environment a rootless Podman of this user runs with (nothing of ours)."""
        return {
            "HOME": str(self.home),
            "USER": self.username,
            "LOGNAME": self.username,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PATH": USER_PATH,
            "LANG": "C.UTF-8",
        }


def username_prefix() -> str:
    """`kat_wl_`, or $KAT_WORKLOAD_USER_PREFIX (3-12 characters of [a-z0-9_], ending in _)."""
    value = os.environ.get(USERNAME_PREFIX_ENV) or USERNAME_PREFIX
    if not _PREFIX_RE.match(value):
        raise PodmanServiceError(
            f"{USERNAME_PREFIX_ENV}={value!r}: want 3-12 characters of [a-z0-9_] ending in _"
        )
    return value


def workload_username(namespace: str, name: str, prefix: str | None = None) -> str:
    prefix = prefix or username_prefix()
    full = f"{prefix}{namespace}_{name}"
    if len(full) <= MAX_USERNAME:
        return full
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:10]
    keep = MAX_USERNAME - len(prefix) - 2 - len(digest)
    return f"{prefix}{f'{namespace}_{name}'[:keep]}__{digest}"


def _gecos(namespace: str, name: str) -> str:
    return f"{GECOS_PREFIX}{namespace}/{name}"


@contextlib.contextmanager
def users_lock() -> Iterator[None]:
    """Serialises user and subordinate-id changes between agents on one machine."""
    USER_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(USER_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip()
        raise PodmanServiceError(f"{' '.join(cmd)} failed (exit {res.returncode}): {detail}")


def _subid_ranges(path: Path) -> list[tuple[str, int, int]]:
    """(owner, start, count) of each line of /etc/subuid or /etc/subgid."""
    out: list[tuple[str, int, int]] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _free_subid_start(taken: list[tuple[int, int]]) -> int:
    start = SUBID_MIN
    for s, c in sorted(taken):
        if s + c <= start:
            continue
        if s >= start + SUBID_COUNT:
            break
        start = s + c
    if start + SUBID_COUNT - 1 > SUBID_MAX:
        raise PodmanServiceError("no free subordinate id range left in /etc/subuid, /etc/subgid")
    return start


def _ensure_subids(user: str, uid: int) -> None:
    files = [Path("/etc/subuid"), Path("/etc/subgid")]
    tables = [_subid_ranges(p) for p in files]
    have = [any(o in (user, str(uid)) for o, _, _ in t) for t in tables]
    if all(have):
        return
    taken = [(s, c) for t in tables for _, s, c in t]
    start = _free_subid_start(taken)
    span = f"{start}-{start + SUBID_COUNT - 1}"
    cmd = ["usermod"]
    if not have[0]:
        cmd += ["--add-subuids", span]
    if not have[1]:
        cmd += ["--add-subgids", span]
    _run([*cmd, user])
    log.info("gave workload user %s subordinate ids %s", user, span)


def ensure_workload_user(
    namespace: str, name: str, *, home_base: Path = DEFAULT_HOME_BASE
) -> WorkloadUser:
    """Create (or find) the unprivileged system user of workload namespace/name with
    its own group, a home under `home_base` (rootless Podman keeps its default storage
    and configuration there) and a subordinate uid/gid range of 65536 that overlaps no
    other range. Idempotent. Blocking: call it through asyncio.to_thread."""
    username = workload_username(namespace, name)
    gecos = _gecos(namespace, name)
    with users_lock():
        try:
            pw = pwd.getpwnam(username)
        except KeyError:
            pw = add_user(username, gecos, home_base)
            log.info(
                "created workload user %s (uid %d) for %s/%s", username, pw.pw_uid, namespace, name
            )
        else:
            if pw.pw_gecos != gecos:
                raise PodmanServiceError(
                    f"user {username} exists but is not KAT's user for workload "
                    f"{namespace}/{name} (its comment is {pw.pw_gecos!r}); not taking it over"
                )
        _ensure_subids(username, pw.pw_uid)
    user = WorkloadUser(pw.pw_uid, pw.pw_gid, username)
    ensure_runtime_dir(user)
    return user


def add_user(username: str, gecos: str, home_base: Path) -> pwd.struct_passwd:
    """useradd of a system user with its own group and a home under `home_base`; the
    caller holds users_lock."""
    home_base.mkdir(parents=True, exist_ok=True)
    home_base.chmod(0o755)
    _run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--create-home",
            "--home-dir",
            str(home_base / username),
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            gecos,
            username,
        ]
    )
    return pwd.getpwnam(username)


def ensure_runtime_dir(user: WorkloadUser) -> Path:
    """/run/user/<uid>, owned by the user, mode 0700 (XDG_RUNTIME_DIR of its Podman)."""
    d = user.runtime_dir
    d.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700)
    os.chown(d, user.uid, user.gid)
    d.chmod(0o700)
    return d


def _user_pids(uid: int) -> list[int]:
    """Live processes of `uid`. Zombies are not counted: a killed process whose parent
    is gone is reparented to PID 1, and where PID 1 does not reap (containers, this
    machine's sandbox) it stays a zombie for ever; it holds nothing, but counting it
    made the removal of every such user fail ("processes do not end")."""
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                zombie = False
                for line in f:
                    if line.startswith("State:"):
                        zombie = line.split()[1] in ("Z", "X")
                    elif line.startswith("Uid:"):
                        if int(line.split()[1]) == uid and not zombie:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _end_user_processes(uid: int, grace: float) -> None:
    """SIGTERM every process of `uid` (its Podman services, pause process, conmons,
    containers), then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in _user_pids(uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _user_pids(uid):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        else:
            return
    raise PodmanServiceError(f"processes of uid {uid} do not end: {_user_pids(uid)}")


def workload_of(username: str) -> tuple[str, str] | None:
    """(namespace, name) of a KAT workload user, from its GECOS; None for any other."""
    try:
        gecos = pwd.getpwnam(username).pw_gecos
    except KeyError:
        return None
    if not gecos.startswith(GECOS_PREFIX) or "/" not in gecos:
        return None
    namespace, name = gecos[len(GECOS_PREFIX) :].split("/", 1)
    return (namespace, name) if workload_username(namespace, name) == username else None


def remove_workload_user(
    namespace: str,
    name: str,
    *,
    grace: float = 5.0,
    keep_if: Callable[[Path], bool] | None = None,
    prefix: str | None = None,
) -> bool:
    """Delete the workload user of namespace/name: end all its processes, delete the
    user, its group, home directory (with its default Podman storage), subordinate ids
    and /run/user/<uid>. False if there was no such user, or `keep_if(home)` (called
    under the machine-wide users lock, so agents sharing the user decide one after the
    other) says it stays. Storage outside the home (a `PodmanStorage.for_user`) is the
    caller's to remove. `prefix`: another than this agent's (username_prefix). Blocking."""
    username = workload_username(namespace, name, prefix)
    with users_lock():
        try:
            pw = pwd.getpwnam(username)
        except KeyError:
            log.info("workload user %s is already gone", username)
            return False
        if pw.pw_gecos != _gecos(namespace, name):
            raise PodmanServiceError(f"user {username} is not KAT's; not removing it")
        if keep_if is not None and keep_if(Path(pw.pw_dir)):
            return False
        delete_user(pw, grace)
    log.info("removed workload user %s (uid %d)", username, pw.pw_uid)
    return True


def delete_user(pw: pwd.struct_passwd, grace: float) -> None:
    """End every process of the user, then delete it, its group, home, subordinate ids
    and /run/user/<uid>; the caller holds users_lock."""
    username = pw.pw_name
    log.debug("ending the processes of %s", username)
    _end_user_processes(pw.pw_uid, grace)
    log.debug("deleting user %s", username)
    res = subprocess.run(["userdel", "--remove", username], capture_output=True, text=True)
    if res.returncode == 8:  # "currently used by process N": a zombie, all else ended
        res = subprocess.run(
            ["userdel", "--force", "--remove", username], capture_output=True, text=True
        )
    # 12: the home directory could not be removed (it is removed below).
    if res.returncode not in (0, 12):
        raise PodmanServiceError(f"userdel {username} failed: {res.stderr.strip()}")
    shutil.rmtree(pw.pw_dir, ignore_errors=True)
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        if any(o in (username, str(pw.pw_uid)) for o, _, _ in _subid_ranges(path)):
            lines = [
                line
                for line in path.read_text().splitlines()
                if line.split(":", 1)[0] not in (username, str(pw.pw_uid))
            ]
            write_atomic(path, "".join(f"{line}\n" for line in lines).encode(), 0o644)
    shutil.rmtree(RUNTIME_DIR_BASE / str(pw.pw_uid), ignore_errors=True)


def remove_workload_users_with_prefix(prefix: str) -> list[str]:
    """Remove every workload user (spares too) whose name starts with `prefix` (a test
    session's or a dev cluster's own prefix, never the default one: those are a real
    KAT's). Returns the
    names removed; a user that cannot be removed is logged and left."""
    if prefix == USERNAME_PREFIX:
        return []
    removed: list[str] = []
    for pw in pwd.getpwall():
        if not pw.pw_name.startswith(prefix):
            continue
        if pw.pw_gecos.startswith(SPARE_GECOS_PREFIX):
            try:
                with users_lock():
                    delete_user(pwd.getpwuid(pw.pw_uid), 2.0)
                removed.append(pw.pw_name)
            except (OSError, KeyError, PodmanServiceError) as exc:
                log.warning("could not remove spare user %s: %s", pw.pw_name, exc)
            continue
        if not pw.pw_gecos.startswith(GECOS_PREFIX):
            continue
        namespace, _, name = pw.pw_gecos.removeprefix(GECOS_PREFIX).partition("/")
        try:
            if remove_workload_user(namespace, name, grace=2.0, prefix=prefix):
                removed.append(pw.pw_name)
        except (OSError, PodmanServiceError) as exc:
            log.warning("could not remove workload user %s: %s", pw.pw_name, exc)
    return removed
