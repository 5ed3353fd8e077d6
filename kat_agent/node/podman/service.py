"""The Podman API services the agent talks to.

`PodmanService` runs `podman system service --time=0 unix://<socket>` as a child of
kat-agent and restarts it if it dies. It serves either root's Podman (optionally with
a storage of its own: `PodmanStorage`, read from KAT_PODMAN_* by `PodmanStorage.from_env`)
or one workload user's rootless Podman (`user=`, a user of kat_agent/node/podman/users.py),
so every workload user has a socket of its own.

Notes on rootless Podman seen on Debian 12 / Podman 4.3:
- the service re-executes itself inside a user namespace: the process we start is only a
  waiter and does not pass SIGTERM on, so the whole process group is signalled;
- on cgroup v1 hosts rootless Podman ignores cpu/memory limits (it says so in the
  warnings of a container create).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from internal.host.children import RestartingChild, child_setup
from internal.host.unix_socket import exchange
from internal.observability.rotation import RotatingFile, pipe_into
from kat_agent.node.podman.errors import PodmanServiceError
from kat_agent.node.podman.users import RUNTIME_DIR_BASE, WorkloadUser, ensure_runtime_dir

log = logging.getLogger(__name__)

MAX_RUNROOT = 50  # podman: "the specified runroot is longer than 50 characters"
MAX_SOCKET_PATH = 107  # sun_path
START_MARK = "--- kat: starting "  # the service log's line before each start
# What rootless Podman says when its user namespace is gone (_reset_lost_pause_process).
PAUSE_LOST = "try resetting the pause process"

# ---------------------------------------------------------------- storage


@dataclass(frozen=True)
class PodmanStorage:
    """Podman's global storage flags; unset ones keep Podman's defaults."""

    root: Path | None = None
    runroot: Path | None = None
    tmpdir: Path | None = None
    network_config_dir: Path | None = None

    ENV_VARS: ClassVar[dict[str, str]] = {
        "root": "KAT_PODMAN_ROOT",
        "runroot": "KAT_PODMAN_RUNROOT",
        "tmpdir": "KAT_PODMAN_TMPDIR",
        "network_config_dir": "KAT_PODMAN_NETWORK_CONFIG_DIR",
    }
    FLAGS: ClassVar[dict[str, str]] = {
        "root": "--root",
        "runroot": "--runroot",
        "tmpdir": "--tmpdir",
        "network_config_dir": "--network-config-dir",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PodmanStorage:
        """From KAT_PODMAN_ROOT, _RUNROOT, _TMPDIR, _NETWORK_CONFIG_DIR (empty = unset)."""
        env = os.environ if environ is None else environ
        values = {attr: env.get(var) or None for attr, var in cls.ENV_VARS.items()}
        return cls(**{k: Path(v) if v else None for k, v in values.items()})

    def items(self) -> Iterator[tuple[str, Path]]:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value

    def global_args(self) -> list[str]:
        args: list[str] = []
        for name, path in self.items():
            args += [self.FLAGS[name], str(path)]
        return args

    def for_user(self, user: WorkloadUser) -> PodmanStorage:
        """A separate storage for one workload user next to this one: each set
        directory D becomes D/../users/<username>/<name of D>, e.g.
        <data>/podman/root -> <data>/podman/users/kat_wl_default_web/root, except the
        runroot, which Podman wants at most 50 characters long:
        /run/user/<uid>/kat-<hash of this runroot>."""
        out = {
            name: path.parent / "users" / user.username / path.name for name, path in self.items()
        }
        if self.runroot is not None:
            digest = hashlib.sha256(str(self.runroot).encode()).hexdigest()[:12]
            out["runroot"] = RUNTIME_DIR_BASE / str(user.uid) / f"kat-{digest}"
        return PodmanStorage(**out)

    def check(self) -> None:
        """Podman refuses a runroot longer than MAX_RUNROOT characters; say so early."""
        if self.runroot is not None and len(str(self.runroot)) > MAX_RUNROOT:
            raise PodmanServiceError(
                f"Podman's runroot may be at most {MAX_RUNROOT} characters long; "
                f"{self.runroot} has {len(str(self.runroot))}: choose a shorter path"
            )


# ---------------------------------------------------------------- the service


SETPRIV = shutil.which("setpriv")


def _setpriv_prefix(user: WorkloadUser | None) -> list[str]:
    """`setpriv [--reuid U --regid G --clear-groups] --pdeathsig KILL --` (util-linux):
    switch to the workload user and die with the agent, done by setpriv after the
    exec. Python would do either in the forked child (a preexec_fn, or user=/group=),
    which rules out vfork: a plain fork then runs gRPC's fork handlers in the child of
    an agent with gRPC threads running, and that child crashes now and then (SIGSEGV,
    or SIGABRT "Check failed: next_worker->state == KICKED")."""
    if not SETPRIV:
        return []
    who = []
    if user is not None:
        who = [f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
    return [SETPRIV, *who, "--pdeathsig", "KILL", "--"]


async def ping(socket_path: Path, max_seconds: float = 1.0) -> bool:
    """True if a Podman API answers `GET /_ping` with 200 on `socket_path`."""
    request = b"GET /_ping HTTP/1.1\r\nHost: podman\r\nConnection: close\r\n\r\n"
    status = await exchange(socket_path, request, max_seconds, read=asyncio.StreamReader.readline)
    if status is None:
        return False
    parts = status.split()
    return len(parts) >= 2 and parts[1] == b"200"


def _listener_pid(socket_path: Path) -> int | None:
    """The pid of the process listening on a unix socket (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(socket_path))
        except OSError:
            return None
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid = int.from_bytes(creds[:4], "little")
    return pid or None


class PodmanService(RestartingChild):
    """`podman system service --time=0 unix://<socket_path>`, as root (with `storage`)
    or as a workload user (rootless; `storage` optional, e.g. `storage.for_user(...)`),
    restarted with back-off when it dies. Its output goes to `log_file` (default: next
    to the socket). `containers_conf` sets CONTAINERS_CONF for it, `storage_conf`
    CONTAINERS_STORAGE_CONF (a workload user's driver and shared image store).

        svc = PodmanService(Path("/run/kat/podman.sock"), storage=PodmanStorage.from_env())
        await svc.start(); await svc.wait_ready()
        ...
        await svc.stop()
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        storage: PodmanStorage | None = None,
        user: WorkloadUser | None = None,
        log_file: Path | None = None,
        containers_conf: Path | None = None,
        storage_conf: Path | None = None,
        binary: str | Path | None = None,
        log_level: str = "warning",
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        netns: Path | None = None,
    ) -> None:
        found = str(binary) if binary else shutil.which("podman")
        if not found:
            raise PodmanServiceError("`podman` is not on PATH (apt-get install podman)")
        self.binary = found
        # A network namespace (/var/run/netns/NAME) to run the service in, entered with
        # nsenter (root only): its bridge networks and their firewall rules live there.
        self.netns = netns
        if netns is not None and user is not None:
            raise PodmanServiceError("netns is for root's Podman service only")
        self.socket_path = Path(socket_path)
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise PodmanServiceError(
                f"socket path {self.socket_path} is longer than {MAX_SOCKET_PATH} characters"
            )
        self.storage = storage or PodmanStorage()
        self.storage.check()
        self.user = user
        self.log_file = log_file or self.socket_path.with_name(self.socket_path.name + ".log")
        self.containers_conf = containers_conf
        self.storage_conf = storage_conf  # CONTAINERS_STORAGE_CONF (workload users)
        self.log_level = log_level
        self.restart_backoff = restart_backoff
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------ facts

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def command(self) -> list[str]:
        enter = ["nsenter", f"--net={self.netns}"] if self.netns is not None else []
        return [
            *enter,
            self.binary,
            *self.storage.global_args(),
            f"--log-level={self.log_level}",
            "system",
            "service",
            "--time=0",
            self.url,
        ]

    # What a workload user's service (whose environment is otherwise minimal) takes over
    # from the agent's: where the registries are (the dev cluster's registries.conf; it
    # must be readable by the user, podman fails on an unreadable one). CONTAINERS_CONF
    # comes from `containers_conf`.
    PASS_TO_USERS: ClassVar[tuple[str, ...]] = ("CONTAINERS_REGISTRIES_CONF",)

    def environment(self) -> dict[str, str]:
        env = self.user.env() if self.user else dict(os.environ)
        if self.user:
            env.update({k: os.environ[k] for k in self.PASS_TO_USERS if os.environ.get(k)})
        if self.containers_conf:
            env["CONTAINERS_CONF"] = str(self.containers_conf)
        if self.storage_conf:
            env["CONTAINERS_STORAGE_CONF"] = str(self.storage_conf)
        return env

    async def start(self) -> None:
        """Prepare directories, clear a stale socket and start the service and its
        supervisor; see `wait_ready`."""
        if self._supervisor is not None:
            raise PodmanServiceError(f"Podman service on {self.socket_path} is already started")
        await asyncio.to_thread(self._prepare)
        self._stopping = False
        self._proc = await self._spawn()
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"podman-service-{self.socket_path}"
        )

    def _prepare(self) -> None:
        user = self.user
        if user is not None:
            ensure_runtime_dir(user)
            self._reset_lost_pause_process()
        for _, path in self.storage.items():
            path.mkdir(parents=True, exist_ok=True)
            if user is not None:
                os.chown(path, user.uid, user.gid)
        sock_dir = self.socket_path.parent
        if not sock_dir.exists():
            sock_dir.mkdir(parents=True)
            if user is not None:
                os.chown(sock_dir, user.uid, user.gid)
        elif user is not None and sock_dir.stat().st_uid != user.uid:
            raise PodmanServiceError(
                f"{sock_dir} is not owned by {user.username}: its Podman could not make "
                f"{self.socket_path.name} there"
            )
        self._clear_stale_socket()

    def _reset_lost_pause_process(self) -> None:
        """Rootless Podman keeps its user namespace alive in a pause process (and in the
        conmons of running containers). When all of them were killed (every process of
        the user ended by hand, an OOM kill) while its database still lists running
        containers, every Podman of that user refuses to start ("invalid internal
        status, try resetting the pause process with podman system migrate"), for ever.
        When the last run of this service ended so, do what the message says: `podman
        system migrate` as the user marks those containers stopped (their processes are
        gone already), and the node recreates them. Only after such a failure: migrate
        stops running containers, and a healthy service must never lose them."""
        last_run = self.log_tail(8000).rpartition(START_MARK)[2]
        if PAUSE_LOST not in last_run or self.user is None:
            return
        log.warning(
            "the Podman of %s lost its pause process; resetting it (podman system migrate)",
            self.user.username,
        )
        cmd = [
            *_setpriv_prefix(self.user),
            self.binary,
            *self.storage.global_args(),
            "system",
            "migrate",
        ]
        try:
            res = subprocess.run(
                cmd,
                env=self.environment(),
                cwd=str(self.user.home),
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PodmanServiceError(f"podman system migrate failed: {exc}") from None
        with open(self.log_file, "a") as f:
            f.write(f"--- kat: podman system migrate: status {res.returncode}\n")
        if res.returncode != 0:
            raise PodmanServiceError(f"podman system migrate failed: {res.stderr.strip()[-300:]}")

    def _clear_stale_socket(self) -> None:
        """Remove a socket file nothing answers on (left by a service killed with a
        crashed agent); refuse one that something still serves."""
        if not self.socket_path.exists() and not self.socket_path.is_symlink():
            return
        pid = _listener_pid(self.socket_path)
        if pid is not None:
            raise PodmanServiceError(
                f"{self.socket_path} is already served by process {pid} (another agent "
                "on the same socket?)"
            )
        self.socket_path.unlink(missing_ok=True)

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file = RotatingFile(self.log_file)
        log_file.write(f"{START_MARK}{' '.join(self.command())}\n".encode())
        # Through a pipe so that the file can be rotated by size (rotation.py).
        out = pipe_into(log_file, f"podman-{self.socket_path.name}-log")
        user = self.user
        try:
            # Python switches users and sets the death signal itself only where
            # setpriv is missing (not seen on Debian); see _setpriv_prefix.
            switch = user is not None and not SETPRIV
            proc = await asyncio.create_subprocess_exec(
                *_setpriv_prefix(user),
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.environment(),
                cwd=str(user.home) if user else "/",
                process_group=0,
                user=user.uid if switch and user else None,
                group=user.gid if switch and user else None,
                extra_groups=[] if switch else None,
                preexec_fn=None if SETPRIV else child_setup(os.getpid()),
            )
        finally:
            os.close(out)
        who = f" as {user.username}" if user else ""
        log.info("started Podman service%s on %s (pid %d)", who, self.socket_path, proc.pid)
        return proc

    _restart_errors = (OSError, PodmanServiceError)

    def _describe(self) -> str:
        return f"Podman service on {self.socket_path}"

    async def _after_exit(self, proc: asyncio.subprocess.Process) -> None:
        await self._end_group(proc.pid, 2.0)

    async def _before_restart(self) -> None:
        await asyncio.to_thread(self._prepare)

    async def wait_ready(self, max_seconds: float = 30.0) -> None:
        """Wait until the API answers on the socket; raise PodmanServiceError (with
        the end of its log) if the service exits or does not answer in time."""
        deadline = time.monotonic() + max_seconds
        while True:
            proc = self._proc
            if proc is None:
                raise PodmanServiceError(f"Podman service on {self.socket_path} is not started")
            if await ping(self.socket_path):
                return
            if proc.returncode is not None and self.restarts == 0:
                raise PodmanServiceError(
                    f"Podman service on {self.socket_path} exited with status "
                    f"{proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise PodmanServiceError(
                    f"Podman service on {self.socket_path} not answering after "
                    f"{max_seconds:g}s:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    async def _end_group(self, pgid: int, grace: float) -> None:
        """SIGTERM the service's process group (the rootless service runs in a child
        that does not get its parent's signals), SIGKILL after `grace` seconds."""
        if await _signal_group_until_gone(pgid, signal.SIGTERM, grace):
            return
        log.warning("Podman service group %d did not stop in %.0fs; killing it", pgid, grace)
        if not await _signal_group_until_gone(pgid, signal.SIGKILL, 5.0):
            log.error("processes of Podman service group %d do not end", pgid)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the service (and its process group), SIGKILL after `grace` seconds.
        Containers keep running: they do not depend on the service."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # noqa: BLE001 - a failed restart must not stop the stop
                # e.g. the workload user was deleted while its service was down
                log.warning(
                    "Podman service on %s: its supervisor had failed: %r", self.socket_path, exc
                )
            self._supervisor = None
        proc = self._proc
        if proc is None:
            return
        await self._end_group(proc.pid, grace)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self.socket_path.unlink(missing_ok=True)
        log.info("Podman service on %s stopped (status %s)", self.socket_path, proc.returncode)

    async def __aenter__(self) -> PodmanService:
        await self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _signal_group_until_gone(pgid: int, sig: int, wait: float) -> bool:
    """Send `sig` to process group `pgid`; True once no process of it is left
    (polled until `wait` seconds have passed)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
    return False
