"""The ingress proxy of a node labelled `kat.dws.rip/ingress=true`: a real HAProxy (Debian's
`haproxy`) that this agent configures from the endpoint view (haproxy_config.py).

HAProxy runs in master-worker mode as the agent's child (it dies with the agent). On every
change of the rendered configuration the file is replaced atomically, checked with
`haproxy -c`, and the master is sent SIGUSR2: it starts new workers on the same listening
sockets and lets the old ones finish their connections, so a reload drops nothing. A node
that loses the label stops its proxy. A configuration HAProxy refuses is logged and the
running one is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

from api.v1alpha1 import kat_pb2
from internal.host.children import child_setup
from internal.host.files import write_atomic
from kat_agent.node.network import haproxy_config

log = logging.getLogger(__name__)

HAPROXY = "haproxy"
DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443


class IngressProxy:
    """Runs (or not) HAProxy for the latest endpoint view."""

    def __init__(self, node_name: str, work_dir: Path, http_port: int, https_port: int) -> None:
        self.node_name = node_name
        self.dir = work_dir
        self.http_port = http_port or DEFAULT_HTTP_PORT
        self.https_port = https_port or DEFAULT_HTTPS_PORT
        self.config_file = work_dir / "haproxy.cfg"
        self.view = kat_pb2.EndpointSet()
        self._changed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._applied = ""
        self.reloads = 0

    def offer(self, view: kat_pb2.EndpointSet) -> None:
        self.view = view
        self._changed.set()

    def wanted(self) -> bool:
        return self.node_name in self.view.ingress_nodes

    def render(self) -> str:
        plan = haproxy_config.plan_routes(self.view.services)
        for problem in plan.problems:
            log.warning("ingress: %s", problem)
        return haproxy_config.render(
            plan,
            http_port=self.http_port,
            https_port=self.https_port,
            runtime_dir=str(self.dir),
            certs={},
        )

    async def run(self) -> None:
        """Follow the views until cancelled; HAProxy is stopped on the way out."""
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                await self._apply()
        finally:
            await self._stop()

    async def _apply(self) -> None:
        if not self.wanted():
            if self._proc is not None:
                log.info("not an ingress node (any more): stopping HAProxy")
            await self._stop()
            return
        if shutil.which(HAPROXY) is None:
            log.error("this node is an ingress node but `haproxy` is not installed")
            return
        text = self.render()
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
