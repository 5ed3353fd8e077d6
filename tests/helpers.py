"""Shared test helpers: free ports, a throwaway PKI, real etcd members, polling."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from internal.security import pki
from internal.state.etcd import EtcdClient
from internal.state.etcd_process import EtcdProcess, EtcdTLS

T = TypeVar("T")

HAVE_ETCD = shutil.which("etcd") is not None
NO_ETCD_REASON = "needs a real etcd: `etcd` is not on PATH (install etcd-server)"
requires_etcd = pytest.mark.skipif(not HAVE_ETCD, reason=NO_ETCD_REASON)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- PKI


@dataclass(frozen=True)
class PkiFiles:
    """A CA and certificates for 127.0.0.1, written to `dir`."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    etcd_cert: Path  # role kat:etcd: etcd serving, peer and client certificate
    etcd_key: Path
    node_cert: Path  # role kat:node, CN node1
    node_key: Path
    admin_cert: Path  # role kat:admin, CN admin
    admin_key: Path

    def ca(self) -> pki.CertAndKey:
        return pki.read_pair(self.ca_cert, self.ca_key)


def make_pki(directory: Path) -> PkiFiles:
    d = Path(directory)
    ca = pki.create_ca("kat-test-ca")
    pki.write_pair(d / "ca.crt", d / "ca.key", ca)
    etcd = pki.issue_serving_certificate(
        ca.cert_pem, ca.key_pem, node_name="etcd-test", advertise_ip="127.0.0.1", role=pki.ROLE_ETCD
    )
    pki.write_pair(d / "etcd.crt", d / "etcd.key", etcd)
    node = pki.issue_serving_certificate(
        ca.cert_pem, ca.key_pem, node_name="node1", advertise_ip="127.0.0.1"
    )
    pki.write_pair(d / "node.crt", d / "node.key", node)
    admin = pki.issue_certificate(ca.cert_pem, ca.key_pem, common_name="admin", role=pki.ROLE_ADMIN)
    pki.write_pair(d / "admin.crt", d / "admin.key", admin)
    return PkiFiles(
        d,
        d / "ca.crt",
        d / "ca.key",
        d / "etcd.crt",
        d / "etcd.key",
        d / "node.crt",
        d / "node.key",
        d / "admin.crt",
        d / "admin.key",
    )


# ---------------------------------------------------------------- etcd


@dataclass(frozen=True)
class EtcdEnv:
    """How to reach a test etcd: endpoints and the client TLS files."""

    endpoints: list[str]
    ca_file: Path
    cert_file: Path
    key_file: Path
    process: EtcdProcess

    def client(self, timeout: float = 2.0) -> EtcdClient:
        return EtcdClient(
            self.endpoints,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            timeout=timeout,
        )


def make_etcd_process(
    directory: Path, pkif: PkiFiles, name: str = "etcd-test", **kw: Any
) -> EtcdProcess:
    """An etcd member on free loopback ports with TLS, tuned for quick tests
    (fast elections allow leases down to 1 s)."""
    kw.setdefault("heartbeat_interval_ms", 50)
    kw.setdefault("election_timeout_ms", 500)
    kw.setdefault("restart_backoff", (0.2, 1.0))
    kw.setdefault("client_urls", [f"https://127.0.0.1:{free_port()}"])
    kw.setdefault("peer_urls", [f"https://127.0.0.1:{free_port()}"])
    return EtcdProcess(
        name=name,
        data_dir=Path(directory) / "etcd",
        tls=EtcdTLS(pkif.ca_cert, pkif.etcd_cert, pkif.etcd_key),
        **kw,
    )


def env_of(process: EtcdProcess, pkif: PkiFiles) -> EtcdEnv:
    return EtcdEnv(process.client_endpoints, pkif.ca_cert, pkif.etcd_cert, pkif.etcd_key, process)


def kill_if_still_running(process: EtcdProcess) -> None:
    """Last-resort cleanup after a test whose event loop is gone: SIGKILL the
    member if a process with its pid still runs its command line."""
    pid = process.pid
    if pid is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if f"--data-dir={process.data_dir}".encode() in cmdline:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def served_serial(host: str, port: int, cert: Path | None = None, key: Path | None = None) -> str:
    """The serial of the certificate a TLS server presents on a new connection (with a
    client certificate for servers that require one; the server's is not verified)."""
    import ssl

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    if cert is not None and key is not None:
        tls.load_cert_chain(cert, key)
    with socket.create_connection((host, port), timeout=5) as raw:
        with tls.wrap_socket(raw) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der, f"{host}:{port} presented no certificate"
    return pki.cert_info(ssl.DER_cert_to_PEM_cert(der).encode()).serial


# ---------------------------------------------------------------- async


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> float:
    """Poll `predicate` until true; returns the seconds it took. Fails the test
    on timeout."""
    start = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            pytest.fail(f"timed out after {within:g}s waiting for {message}")
        await asyncio.sleep(interval)


class LoopThread:
    """An event loop on a background thread, for session-scoped async resources
    (each test runs its own loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# ---------------------------------------------------------------- Podman

BUSYBOX_IMAGE = "localhost/busybox:latest"
BUSYBOX_TARBALL = Path("/usr/local/share/kat/images/busybox-rootfs.tar")
# What ENVIRONMENT.md says works here, plus a short exit_command_delay: Podman keeps the
# conmon of every API exec session for that long (default 300 s).
TEST_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
exit_command_delay = 1
"""


def podman_unavailable(*tools: str) -> str | None:
    """Why tests with private Podman services cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman)"
    if os.geteuid() != 0:
        return "needs root: Podman services with their own storage, and workload users"
    if not BUSYBOX_TARBALL.is_file():
        return f"{BUSYBOX_TARBALL} missing (run scripts/build-images.sh)"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    return None
