"""The ingress proxy of a node labelled `kat.dws.rip/ingress=true`: a real HAProxy (Debian's
`haproxy`) that this agent configures from the endpoint view (haproxy_config.py).

HAProxy runs in master-worker mode as the agent's child (it dies with the agent). On every
change of the rendered configuration the file is replaced atomically, checked with
`haproxy -c`, and the master is sent SIGUSR2: it starts new workers on the same listening
sockets and lets the old ones finish their connections, so a reload drops nothing. A node
that loses the label stops its proxy. A configuration HAProxy refuses is logged and the
running one is kept.

HTTPS: the hosts of `tls: true` rules get their certificates (an operator's, else one from
the cluster CA) from the leader through `fetch_certs` (AgentAPI.GetIngressCertificates,
which answers only ingress nodes), fetched when the set of tls hosts changes and again
every CERT_REFRESH_SECONDS (a replaced certificate is served within that). Each is one
PEM file (chain + key, 0600) in `<work dir>/certs`, the directory HAProxy's HTTPS bind
loads; hosts no longer served lose their file. While the leader is unreachable the files
already there are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from api.v1alpha1 import kat_pb2
from internal.host.children import child_setup
from internal.host.files import write_atomic
from internal.security.ingress_certs import file_stem
from kat_agent.node.network import haproxy_config

log = logging.getLogger(__name__)

HAPROXY = "haproxy"
DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443
CERT_REFRESH_SECONDS = 10.0

CertFetcher = Callable[[Sequence[str]], Awaitable[Sequence[kat_pb2.IngressKeyPair]]]


class IngressProxy:
    """Runs (or not) HAProxy for the latest endpoint view."""

    def __init__(
        self,
        node_name: str,
        work_dir: Path,
        http_port: int,
        https_port: int,
        fetch_certs: CertFetcher | None = None,
    ) -> None:
        self.node_name = node_name
        self.dir = work_dir
        self.cert_dir = work_dir / "certs"
        self.fetch_certs = fetch_certs
        self.http_port = http_port or DEFAULT_HTTP_PORT
        self.https_port = https_port or DEFAULT_HTTPS_PORT
        self.config_file = work_dir / "haproxy.cfg"
        self.view = kat_pb2.EndpointSet()
        self._changed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._applied = ""
        self.reloads = 0
        self._cert_digest = ""  # of the PEM files served: a replaced one forces a reload

    def offer(self, view: kat_pb2.EndpointSet) -> None:
        self.view = view
        self._changed.set()

    def wanted(self) -> bool:
        return self.node_name in self.view.ingress_nodes

    async def forget(self) -> None:
        """The node left the cluster: HAProxy stops (run() is cancelled first) and the
        certificate files (keys) go."""
        await self._stop()
        if self.cert_dir.exists():
            await asyncio.to_thread(self._write_certs, {}, {})

    def plan(self) -> haproxy_config.IngressPlan:
        plan = haproxy_config.plan_routes(self.view.services)
        for problem in plan.problems:
            log.warning("ingress: %s", problem)
        return plan

    def render(self, plan: haproxy_config.IngressPlan, tls_ready: Sequence[str] = ()) -> str:
        return haproxy_config.render(
            plan,
            http_port=self.http_port,
            https_port=self.https_port,
            runtime_dir=str(self.dir),
            tls_ready=tls_ready,
            cert_dir=str(self.cert_dir),
        )

    async def run(self) -> None:
        """Follow the views until cancelled; HAProxy is stopped on the way out."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CERT_REFRESH_SECONDS):
                        await self._changed.wait()
                self._changed.clear()
                await self._apply()
        finally:
            await self._stop()

    async def sync_certs(self, hosts: Sequence[str]) -> list[str]:
        """Make <cert dir> hold one PEM per tls host the leader gives a certificate for;
        returns the hosts that have one there (old files serve while it is away)."""
        wanted = {file_stem(h): h for h in hosts}
        got: dict[str, bytes] = {}
        if hosts and self.fetch_certs is not None:
            try:
                for pair in await self.fetch_certs(sorted(hosts)):
                    c = pair.certificate
                    if c.host in hosts and c.cert_pem and pair.key_pem:
                        got[file_stem(c.host)] = c.cert_pem + pair.key_pem
            except Exception as exc:  # noqa: BLE001 - the files already there keep serving
                log.warning("ingress: cannot fetch certificates (keeping the current): %s", exc)
        return await asyncio.to_thread(self._write_certs, wanted, got)

    def _write_certs(self, wanted: dict[str, str], got: dict[str, bytes]) -> list[str]:
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.cert_dir.chmod(0o700)
        for stem, pem in got.items():
            path = self.cert_dir / f"{stem}.pem"
            if not path.exists() or path.read_bytes() != pem:
                write_atomic(path, pem, 0o600)
                log.info("ingress: certificate for %s installed", wanted[stem])
        ready = []
        digest = hashlib.sha256()
        for path in sorted(self.cert_dir.iterdir()):
            stem = path.name.removesuffix(".pem")
            if path.suffix == ".pem" and stem in wanted:
                ready.append(wanted[stem])
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
            else:
                path.unlink()  # a host no longer served over HTTPS (or a stray temp file)
        self._cert_digest = digest.hexdigest()[:16] if ready else ""
        return sorted(ready)

    async def _apply(self) -> None:
        if not self.wanted():
            if self._proc is not None:
                log.info("not an ingress node (any more): stopping HAProxy")
            await self._stop()
            if self.cert_dir.exists():  # no ingress keys on a node that serves none
                await asyncio.to_thread(self._write_certs, {}, {})
            return
        if shutil.which(HAPROXY) is None:
            log.error("this node is an ingress node but `haproxy` is not installed")
            return
        plan = self.plan()
        tls_ready = await self.sync_certs(plan.tls_hosts)
        text = self.render(plan, tls_ready)
        if self._cert_digest:
            text += f"# certificates {self._cert_digest}\n"
        running = self._proc is not None and self._proc.returncode is None
        if running and text == self._applied:
            return
        await asyncio.to_thread(self._write, text)
        if not await self._check():
            return
        if running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGUSR2)
            self.reloads += 1
            log.info("ingress: HAProxy reloaded (%d routes)", text.count("use_backend"))
        else:
            await self._start()
        self._applied = text

    def _write(self, text: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        write_atomic(self.config_file, text.encode(), 0o600)

    async def _check(self) -> bool:
        proc = await asyncio.create_subprocess_exec(
            HAPROXY, "-c", "-q", "-f", str(self.config_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            log.error("ingress: HAProxy refused the new configuration: %s", out.decode()[-2000:])
            return False
        return True

    async def _start(self) -> None:
        logf = await asyncio.to_thread(open, self.dir / "haproxy.log", "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                HAPROXY, "-W", "-db", "-f", str(self.config_file),
                stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                preexec_fn=child_setup(os.getpid()),
            )  # fmt: skip
        finally:
            logf.close()
        log.info("ingress: HAProxy started (pid %d) on :%d", self._proc.pid, self.http_port)
        proc = self._proc

        async def watch() -> None:
            await proc.wait()
            if self._proc is proc:
                log.error("ingress: HAProxy exited (%s); starting it again", proc.returncode)
                self._proc = None
                self._applied = ""
                await asyncio.sleep(1.0)
                self._changed.set()

        self._watch = asyncio.get_running_loop().create_task(watch())

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        self._applied = ""
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
