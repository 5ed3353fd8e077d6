"""Run and supervise a real `etcd` member as a child of kat-agent.

The child gets its own process group, so a Ctrl-C in the terminal reaches only
kat-agent, which can still resign leadership through etcd before stopping it;
PR_SET_PDEATHSIG makes the kernel kill etcd if kat-agent dies without that.
etcd's stdout and stderr go to `etcd.log` in its data directory (etcd notes
the extra file there with a harmless warning at start), through a pipe that
kat-agent copies into the file, rotated by size like every log of KAT
(internal/observability/rotation.py: 20 MiB, 5 kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from internal.host.children import RestartingChild, child_setup
from internal.observability.rotation import LOG_MAX_BYTES, RotatingFile, pipe_into
from internal.state.etcd import EtcdClient

log = logging.getLogger(__name__)

DEFAULT_QUOTA_BYTES = 2 * 1024**3


class EtcdStartError(RuntimeError):
    """etcd could not be started or did not become healthy."""


@dataclass(frozen=True)
class EtcdTLS:
    """TLS files for one member, all issued by the CA in `ca_file`.

    `cert_file` serves clients and, unless `peer_cert_file` is given, peers; it
    needs serverAuth and clientAuth (peers are both, and so is etcd's own
    gateway). The supervisor probes health with `client_cert_file` (default:
    `cert_file`)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    peer_ca_file: Path | None = None
    peer_cert_file: Path | None = None
    peer_key_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    def args(self) -> list[str]:
        return [
            "--client-cert-auth",
            f"--trusted-ca-file={self.ca_file}",
            f"--cert-file={self.cert_file}",
            f"--key-file={self.key_file}",
            "--peer-client-cert-auth",
            f"--peer-trusted-ca-file={self.peer_ca_file or self.ca_file}",
            f"--peer-cert-file={self.peer_cert_file or self.cert_file}",
            f"--peer-key-file={self.peer_key_file or self.key_file}",
        ]


def find_etcd_binary(explicit: str | Path | None = None) -> Path:
    """The etcd binary: `explicit` if given, else `etcd` on PATH."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise EtcdStartError(f"etcd binary {path} does not exist")
        if not os.access(path, os.X_OK):
            raise EtcdStartError(f"etcd binary {path} is not executable")
        return path
    found = shutil.which("etcd")
    if found is None:
        raise EtcdStartError(
            "no etcd binary: none given and `etcd` is not on PATH "
            "(install it, e.g. `apt-get install etcd-server`)"
        )
    return Path(found)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"etcd URL {url!r} needs a host and a port")
    return parts.hostname, parts.port


def _endpoint(url: str) -> str:
    host, port = _host_port(url)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EtcdProcess(RestartingChild):
    """One etcd member: its command line, the child process and a supervisor
    that restarts it with back-off when it dies.

    `client_urls` and `peer_urls` are the advertised URLs (https). Listening
    defaults to those, plus https://127.0.0.1 on the client port so the local
    agent always reaches its own member. `initial_cluster` maps member names to
    peer URLs (default: just this member); use `initial_cluster_state="existing"`
    for a member joining a running cluster. Both only matter on the first start:
    etcd ignores them once its data directory has a member in it.
    """

    def __init__(
        self,
        *,
        name: str,
        data_dir: Path,
        client_urls: Sequence[str],
        peer_urls: Sequence[str],
        tls: EtcdTLS,
        listen_client_urls: Sequence[str] | None = None,
        listen_peer_urls: Sequence[str] | None = None,
        initial_cluster: Mapping[str, str | Sequence[str]] | None = None,
        initial_cluster_state: Literal["new", "existing"] = "new",
        initial_cluster_token: str = "kat",
        binary: str | Path | None = None,
        log_file: Path | None = None,
        log_max_bytes: int = LOG_MAX_BYTES,
        auto_compaction_retention: str = "1",  # hours of history kept for watches
        quota_backend_bytes: int = DEFAULT_QUOTA_BYTES,
        snapshot_count: int = 10_000,
        # etcd's defaults, kept: on a LAN a heartbeat is far below 100 ms, but a loaded
        # small node (edge hardware, a busy 2-core machine) stalls for hundreds of ms, and
        # a shorter timeout then means spurious raft elections, each of which stalls writes
        # and renews every lease. A crashed KAT leader no longer waits for a raft election
        # anyway (kat_agent/leader/raft_leader.py).
        heartbeat_interval_ms: int = 100,
        election_timeout_ms: int = 1000,
        # Pre-vote (etcd 3.5's default): a member that restarts or returns from a partition
        # does not force a raft election on a healthy cluster.
        pre_vote: bool = True,
        extra_args: Sequence[str] = (),
        restart_backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        if not client_urls or not peer_urls:
            raise ValueError("etcd needs at least one client URL and one peer URL")
        self.binary = find_etcd_binary(binary)
        self.name = name
        self.data_dir = Path(data_dir)
        self.log_file = Path(log_file) if log_file else self.data_dir / "etcd.log"
        self._log = RotatingFile(self.log_file, log_max_bytes)
        self.tls = tls
        self.client_urls = list(client_urls)
        self.peer_urls = list(peer_urls)
        if listen_client_urls is None:
            _, port = _host_port(self.client_urls[0])
            local = f"https://127.0.0.1:{port}"
            listen_client_urls = list(dict.fromkeys([*self.client_urls, local]))
        self.listen_client_urls = list(listen_client_urls)
        self.listen_peer_urls = list(listen_peer_urls or self.peer_urls)
        members = initial_cluster or {name: self.peer_urls}
        self.initial_cluster = ",".join(
            f"{member}={url}"
            for member, urls in members.items()
            for url in ([urls] if isinstance(urls, str) else urls)
        )
        self.initial_cluster_state = initial_cluster_state
        self.initial_cluster_token = initial_cluster_token
        self.auto_compaction_retention = auto_compaction_retention
        self.quota_backend_bytes = quota_backend_bytes
        self.snapshot_count = snapshot_count
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.election_timeout_ms = election_timeout_ms
        self.pre_vote = pre_vote
        self.extra_args = list(extra_args)
        self.restart_backoff = restart_backoff
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._was_healthy = False  # exits before that are start failures, not crashes

    # ------------------------------------------------------------ facts

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def client_endpoints(self) -> list[str]:
        """host:port of the advertised client URLs, for EtcdClient."""
        return [_endpoint(u) for u in self.client_urls]

    @property
    def local_endpoint(self) -> str:
        """The endpoint this host's own agent uses (a loopback one if listening there)."""
        for url in self.listen_client_urls:
            host, _ = _host_port(url)
            if host in ("127.0.0.1", "::1", "localhost"):
                return _endpoint(url)
        return self.client_endpoints[0]

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--advertise-client-urls={','.join(self.client_urls)}",
            f"--listen-client-urls={','.join(self.listen_client_urls)}",
            f"--initial-advertise-peer-urls={','.join(self.peer_urls)}",
            f"--listen-peer-urls={','.join(self.listen_peer_urls)}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-state={self.initial_cluster_state}",
            f"--initial-cluster-token={self.initial_cluster_token}",
            *self.tls.args(),
            "--auto-compaction-mode=periodic",
            f"--auto-compaction-retention={self.auto_compaction_retention}",
            f"--quota-backend-bytes={self.quota_backend_bytes}",
            f"--snapshot-count={self.snapshot_count}",
            f"--heartbeat-interval={self.heartbeat_interval_ms}",
            f"--election-timeout={self.election_timeout_ms}",
            f"--pre-vote={'true' if self.pre_vote else 'false'}",
            "--logger=zap",
            "--log-outputs=stderr",
            *self.extra_args,
        ]

    def client(self, *, timeout: float = 2.0) -> EtcdClient:
        """A client for this member's local endpoint, with the probe certificate."""
        return EtcdClient(
            [self.local_endpoint],
            ca_file=self.tls.ca_file,
            cert_file=self.tls.client_cert_file or self.tls.cert_file,
            key_file=self.tls.client_key_file or self.tls.key_file,
            timeout=timeout,
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start etcd and its supervisor; see `wait_healthy`."""
        if self._supervisor is not None:
            raise RuntimeError(f"etcd {self.name} is already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # etcd insists on a private data directory
        self._stopping = False
        try:
            self._proc = await self._spawn()
        except OSError as exc:
            raise EtcdStartError(f"cannot run {self.binary}: {exc}") from None
        self._supervisor = asyncio.create_task(self._supervise(), name=f"etcd-{self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._log.write(f"--- kat: starting etcd {self.name} at {stamp}\n".encode())
        log_out = pipe_into(self._log, f"etcd-{self.name}-log")
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_out,
                stderr=log_out,
                process_group=0,
                preexec_fn=child_setup(os.getpid()),
            )
        finally:
            os.close(log_out)  # the child has its own copy
        log.info("started etcd %s (pid %d), log in %s", self.name, proc.pid, self.log_file)
        return proc

    def _describe(self) -> str:
        return f"etcd {self.name}"

    async def wait_healthy(self, max_seconds: float = 30.0) -> None:
        """Wait until the member answers a linearizable read; raise EtcdStartError
        (with the end of its log) if it exits or is not healthy in time."""
        deadline = time.monotonic() + max_seconds
        async with self.client(timeout=1.0) as probe:
            while True:
                if self._proc is None:
                    raise EtcdStartError(f"etcd {self.name} is not started")
                if await probe.healthy():
                    self._was_healthy = True
                    return
                if self._proc.returncode is not None and not self._was_healthy:
                    raise EtcdStartError(
                        f"etcd {self.name} exited with status {self._proc.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    raise EtcdStartError(
                        f"etcd {self.name} not healthy after {max_seconds:g}s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.1)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, up to `grace` seconds to finish, then SIGKILL."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            log.warning("etcd %s did not stop within %.0fs; killing it", self.name, grace)
            proc.kill()
            await proc.wait()
        log.info("etcd %s stopped (status %s)", self.name, proc.returncode)

    async def __aenter__(self) -> EtcdProcess:
        await self.start()
        try:
            await self.wait_healthy()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
