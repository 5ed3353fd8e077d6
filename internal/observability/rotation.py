"""Size-based rotation of every file KAT writes logs to: the agent's log (through
logs.PrivateRotatingFileHandler), the leader's audit.log, and the output of the
children it supervises (etcd, Podman services). One policy: when a write would
pass `max_bytes`, FILE becomes FILE.1, FILE.1 FILE.2, ... up to FILE.<keep>
(the oldest is dropped); every file 0600.

A child's stdout and stderr cannot be rotated under it (it holds the file open),
so they go into a pipe that a thread of kat-agent copies into a RotatingFile
(`pipe_into`). A thread, not the event loop: a busy loop must not fill the pipe
and block etcd in a write to its own log."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_KEEP = 5
_CHUNK = 64 * 1024


def rotate(path: Path, keep: int) -> None:
    """FILE -> FILE.1 -> ... -> FILE.<keep>; with keep 0 FILE is just removed."""
    if keep <= 0:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    for i in range(keep - 1, 0, -1):
        src = path.with_name(f"{path.name}.{i}")
        if src.exists():
            src.replace(path.with_name(f"{path.name}.{i + 1}"))
    with contextlib.suppress(FileNotFoundError):
        path.replace(path.with_name(f"{path.name}.1"))


class RotatingFile:
    """Append-only bytes, 0600, rotated by size; safe to share between threads."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> None:
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """Append; a chunk larger than the room left is split, at a line end if it
        has one, so that no file passes max_bytes."""
        with self._lock:
            while data:
                try:
                    size = self.path.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(data) > self.max_bytes:
                    rotate(self.path, self.keep)
                    size = 0
                piece = data[: max(1, self.max_bytes - size)]
                if len(piece) < len(data) and (cut := piece.rfind(b"\n") + 1):
                    piece = piece[:cut]
                self._append(piece)
                data = data[len(piece) :]

    def _append(self, data: bytes) -> None:
        # Opened per write: a file removed or rotated behind our back is recreated.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def pipe_into(target: RotatingFile, name: str = "log-pipe") -> int:
    """The write end of a pipe whose data a daemon thread appends to `target`, until
    every holder of the write end has closed it. Give it to the child as stdout and
    stderr, then close it in kat-agent."""
    read_fd, write_fd = os.pipe()  # both non-inheritable: only the child's stdio gets it

    def copy() -> None:
        try:
            while chunk := os.read(read_fd, _CHUNK):
                try:
                    target.write(chunk)
                except OSError:
                    pass  # a full disk must not stop the copy (the child would block)
        finally:
            os.close(read_fd)

    threading.Thread(target=copy, name=name, daemon=True).start()
    return write_fd
