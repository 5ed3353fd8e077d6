"""Renaming a user (and its own group) whose processes run: what `usermod --login` and
`groupmod --new-name` do, without their refusal of a busy user.

A spare workload user (spares.py) runs its Podman service before its workload is known;
`usermod --login` refuses any user with a running process. So the name is changed in
the account files themselves, as shadow's tools do: under glibc's `lckpwdf` lock (the
one useradd, usermod and passwd take), each file rewritten atomically with its owner
and mode. The uid, gid, home and subordinate id ranges do not change, so the running
processes, the files they own and the user namespace of the user's Podman are
unaffected.

The transforms are pure (text in, text out) and tested without root; `rename_account`
is the I/O. /etc/passwd is written last: it is where KAT reads a user's name from, so a
crash part-way leaves a spare that KAT still sees as the spare, with some of its other
entries already renamed (`pwck` would report them); the spare is then adopted as a
spare again and its next claim renames the rest when it is for the same workload.
Known gap: a claim for another workload after such a crash leaves those entries stale."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from internal.host.files import write_atomic

ETC = Path("/etc")


def _fields(line: str) -> list[str]:
    return line.split(":")


def _rename_in_list(value: str, old: str, new: str) -> str:
    return ",".join(new if m == old else m for m in value.split(",")) if value else value


def rename_passwd(text: str, old: str, new: str, gecos: str) -> str:
    """/etc/passwd: login name and comment (GECOS) of `old`."""
    out = []
    for line in text.splitlines():
        f = _fields(line)
        if len(f) == 7 and f[0] == old:
            f[0], f[4] = new, gecos
            line = ":".join(f)
        out.append(line)
    return "".join(f"{line}\n" for line in out)


def rename_first_field(text: str, old: str, new: str) -> str:
    """/etc/shadow, /etc/subuid, /etc/subgid: the owner is the first field."""
    out = []
    for line in text.splitlines():
        f = _fields(line)
        if len(f) > 1 and f[0] == old:
            f[0] = new
            line = ":".join(f)
        out.append(line)
    return "".join(f"{line}\n" for line in out)


def rename_group(text: str, old: str, new: str) -> str:
    """/etc/group (name:pw:gid:members) and /etc/gshadow (name:pw:admins:members): the
    group `old` and `old` in every member (and admin) list."""
    out = []
    for line in text.splitlines():
        f = _fields(line)
        if len(f) == 4:
            if f[0] == old:
                f[0] = new
            f[3] = _rename_in_list(f[3], old, new)
            if not f[2].isdigit():  # gshadow: the admins
                f[2] = _rename_in_list(f[2], old, new)
            line = ":".join(f)
        out.append(line)
    return "".join(f"{line}\n" for line in out)


@contextlib.contextmanager
def account_files_lock() -> Iterator[None]:
    """glibc's lock of the account files (/etc/.pwd.lock), as shadow's tools take it;
    lckpwdf waits up to 15 s for it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.lckpwdf() != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot lock the account files: {os.strerror(err)}")
    try:
        yield
    finally:
        libc.ulckpwdf()


def _rewrite(path: Path, transform: Callable[[str], str]) -> None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return  # /etc/gshadow may not exist
    new = transform(text)
    if new != text:
        st = path.stat()
        write_atomic(path, new.encode(), st.st_mode & 0o7777, (st.st_uid, st.st_gid))


def rename_account(old: str, new: str, gecos: str, etc: Path = ETC) -> None:
    """User `old` becomes `new` with comment `gecos`, its group `old` (useradd
    --user-group) becomes `new`. The caller holds the account files lock."""
    _rewrite(etc / "shadow", lambda t: rename_first_field(t, old, new))
    _rewrite(etc / "gshadow", lambda t: rename_group(t, old, new))
    _rewrite(etc / "group", lambda t: rename_group(t, old, new))
    _rewrite(etc / "subuid", lambda t: rename_first_field(t, old, new))
    _rewrite(etc / "subgid", lambda t: rename_first_field(t, old, new))
    _rewrite(etc / "passwd", lambda t: rename_passwd(t, old, new, gecos))
