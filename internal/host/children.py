"""Child processes of kat-agent (etcd, Podman services) that die with it and are
restarted with back-off when they die on their own."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

STABLE_AFTER = 60.0  # seconds of running after which the restart back-off resets

_PR_SET_PDEATHSIG = 1
try:
    # Resolved here, not in the child: only a plain libc call runs between fork and exec.
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def child_setup(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the kernel kills the child when kat-agent dies.

    It runs after a uid/gid switch (subprocess does that first), so the death
    signal set here is not cleared again by the credential change."""

    def setup() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def tail_file(path: Path, max_bytes: int = 2000) -> str:
    """The end of a log file, or "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


class RestartingChild:
    """Mixin for a supervisor of one child process: `_supervise()` waits for the
    child and, unless `_stopping`, starts it again with exponential back-off
    (reset once it ran for STABLE_AFTER seconds)."""

    restart_backoff: tuple[float, float]
    restarts: int
    log_file: Path
    _proc: asyncio.subprocess.Process | None
    _stopping: bool
    # What a failed restart may raise without ending supervision.
    _restart_errors: tuple[type[BaseException], ...] = (OSError,)

    def _describe(self) -> str:
        raise NotImplementedError

    async def _spawn(self) -> asyncio.subprocess.Process:
        raise NotImplementedError

    async def _after_exit(self, proc: asyncio.subprocess.Process) -> None:
        """Clean up after the child exited (e.g. what it left in its group)."""

    async def _before_restart(self) -> None:
        """Prepare the next start (e.g. stale sockets)."""

    def log_tail(self, max_bytes: int = 2000) -> str:
        return tail_file(self.log_file, max_bytes)

    async def _supervise(self) -> None:
        low, high = self.restart_backoff
        delay = low
        while True:
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = await proc.wait()
            if self._stopping:
                return
            await self._after_exit(proc)
            if time.monotonic() - started >= STABLE_AFTER:
                delay = low
            log.error(
                "%s (pid %d) exited with status %s; restarting in %.1fs. Last log lines:\n%s",
                self._describe(),
                proc.pid,
                code,
                delay,
                self.log_tail(1000),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, high)
            try:
                await self._before_restart()
                self._proc = await self._spawn()
                self.restarts += 1
            except self._restart_errors as exc:
                log.error("could not restart %s: %s", self._describe(), exc)
