"""The ingress proxy of a node labelled `kat.dws.rip/ingress=true`: a real HAProxy (Debian's
`haproxy`) that this agent configures from the endpoint view (haproxy_config.py).

HAProxy runs in master-worker mode as the agent's child (it dies with the agent). On every
change of the rendered configuration the file is replaced atomically, checked with
`haproxy -c`, and the master is asked to reload: it starts new workers on the same
listening sockets and lets the old ones finish their connections, so a reload drops
nothing. A node that loses the label stops its proxy. A configuration HAProxy refuses is
logged and the running one is kept.

The reload is asked for on the master's CLI socket, not with SIGUSR2, and then confirmed:
HAProxy 2.6 killed by a SIGUSR2 that came within ~20 ms of its start, and lost one that came
50-100 ms after (its stats socket already answering), staying on the first configuration for
good (tests/unit/test_ingress_proxy.py). The master CLI answers only once the master can act
on a reload. Every configuration carries a marker backend named after its digest; until the
worker's stats socket lists it, the reload is asked for again (level-triggered), after
RELOAD_RETRY_SECONDS and then twice as long each time (`retry_delay`): a configuration that
`haproxy -c` accepts can still fail in the master (a port another process holds), and then
the workers already running keep serving the previous one while each retry logs HAProxy's
own reason. The configuration last seen serving is kept (`haproxy.good.cfg`): when HAProxy
cannot even start with the newest one (an agent restarted while such a reload was pending),
it is started with that one, so the routes it served are served again, and the newest is
then asked for as a reload as above. A HAProxy that exits before it served is started again
after the same growing pauses; every such problem is in `status()`, which the heartbeats
carry to the leader (the node's IngressDegraded condition).

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
import math
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from api.v1alpha1 import kat_pb2
from internal.host.children import child_setup
from internal.host.files import write_atomic
from internal.host.unix_socket import exchange
from internal.observability import metrics
from internal.security.ingress_certs import file_stem
from kat_agent.node.network import haproxy_config

log = logging.getLogger(__name__)

HAPROXY = "haproxy"
DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443
CERT_REFRESH_SECONDS = 10.0
CONFIRM_POLL_SECONDS = 0.2  # how often an unconfirmed configuration is checked
RELOAD_RETRY_SECONDS = 3.0  # a reload not served within this is asked for again ...
RELOAD_RETRY_MAX_SECONDS = 60.0  # ... then after twice as long each time, up to this

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
        # The last configuration HAProxy was seen serving: what it is started with, after
        # a start with the newest one failed (a port another process holds), so that the
        # routes it served keep being served across an agent restart.
        self.good_config_file = work_dir / "haproxy.good.cfg"
        self._good: str | None = None  # its text (None: not read yet)
        self._good_failed = False  # a start with it failed too: only the newest is tried
        self._wanted = ""  # the newest configuration rendered (and accepted by haproxy -c)
        self._failed_starts = 0  # HAProxy exits before it served, in a row
        self._confirmed: asyncio.subprocess.Process | None = None  # seen serving
        self._started_good = False  # the running HAProxy was started with the good one
        self._log_offset = 0  # haproxy.log's size when HAProxy was last started
        self.view = kat_pb2.EndpointSet()
        self._changed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._applied = ""  # the configuration HAProxy was started or reloaded with
        self._serving = False  # ... and its worker was seen serving it
        self._asked_at = -math.inf  # when HAProxy was last started or asked to reload
        self._unconfirmed = 0  # reloads of the applied configuration not acted on so far
        self.reloads = 0
        self.reload_failures = 0  # reloads HAProxy did not act on (asked for again)
        self.problem = ""  # why the newest view is not served (IngressStatus.problem)
        self.on_problem: Callable[[], None] = lambda: None  # it changed: beat early
        self.starts = 0
        self._cert_digest = ""  # of the PEM files served: a replaced one forces a reload

    def offer(self, view: kat_pb2.EndpointSet) -> None:
        self.view = view
        self._changed.set()

    def wanted(self) -> bool:
        return self.node_name in self.view.ingress_nodes

    def _set_problem(self, problem: str) -> None:
        if problem != self.problem:
            self.problem = problem
            self.on_problem()

    def status(self) -> kat_pb2.IngressStatus | None:
        """What the heartbeats report (None on a node that serves no ingress)."""
        if not self.wanted():
            return None
        return kat_pb2.IngressStatus(
            serving=self._serving, problem=self.problem, reload_failures=self.reload_failures
        )

    async def forget(self) -> None:
        """The node left the cluster: HAProxy stops (run() is cancelled first) and the
        certificate files (keys) go."""
        await self._stop()
        if self.cert_dir.exists():
            await asyncio.to_thread(self._write_certs, {}, {})
        self.good_config_file.unlink(missing_ok=True)
        self._good = None

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

    @property
    def master_socket(self) -> Path:
        return self.dir / "master.sock"

    @property
    def stats_socket(self) -> Path:
        return self.dir / "admin.sock"

    async def run(self) -> None:
        """Follow the views until cancelled; HAProxy is stopped on the way out."""
        loop = asyncio.get_running_loop()
        refresh_at = -math.inf
        try:
            while True:
                now = loop.time()
                if self._changed.is_set() or now >= refresh_at:
                    self._changed.clear()
                    refresh_at = now + CERT_REFRESH_SECONDS
                    await self._apply()
                await self._confirm()
                wait = refresh_at - loop.time()
                if self._applied and not self._serving:
                    wait = min(wait, CONFIRM_POLL_SECONDS)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.0)):
                        await self._changed.wait()
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
            self._set_problem("")
            await self._stop()
            if self.cert_dir.exists():  # no ingress keys on a node that serves none
                await asyncio.to_thread(self._write_certs, {}, {})
            return
        if shutil.which(HAPROXY) is None:
            log.error("this node is an ingress node but `haproxy` is not installed")
            self._set_problem("haproxy is not installed on this node")
            return
        plan = self.plan()
        tls_ready = await self.sync_certs(plan.tls_hosts)
        text = self.render(plan, tls_ready)
        if self._cert_digest:
            text += f"# certificates {self._cert_digest}\n"
        text = haproxy_config.with_marker(text)
        running = self._proc is not None and self._proc.returncode is None
        if running and text == self._applied:
            return
        if running and self._started_good and not self._serving:
            return  # HAProxy is still reading the last good file: the newest comes after
        await asyncio.to_thread(self._write, text)
        if not await self._check():
            return
        self._wanted = text
        if not running and self._failed_starts and not self._good_failed:
            if self._good is None:
                self._good = await asyncio.to_thread(_read_text, self.good_config_file)
            if self._good and self._good != text:
                log.warning("ingress: starting HAProxy with the last configuration it served")
                await asyncio.to_thread(self._write, self._good)
                self._applied, self._serving, self._unconfirmed = self._good, False, 0
                await self._start(good=True)  # the newest follows once it serves
                return
        self._applied, self._serving, self._unconfirmed = text, False, 0
        if running:
            self._asked_at = -math.inf  # _confirm asks for the reload at once
        else:
            await self._start()

    async def _confirm(self) -> None:
        """Until HAProxy's worker serves the configuration last applied, ask its master to
        reload (again after RELOAD_RETRY_SECONDS, if a reload was not acted on)."""
        proc = self._proc
        if proc is None or proc.returncode is not None or not self._applied or self._serving:
            return
        if haproxy_config.marker_of(self._applied) in await _backends(self.stats_socket):
            self._serving = True
            self._confirmed, self._failed_starts, self._good_failed = proc, 0, False
            self._started_good = False  # (it served: what comes next is asked as reloads)
            if self._applied == self._wanted:
                self._set_problem("")
            else:  # started with the last good configuration: now the newest, as a reload
                self._changed.set()
            if self._good != self._applied:
                self._good = self._applied
                await asyncio.to_thread(
                    write_atomic, self.good_config_file, self._good.encode(), 0o600
                )
            routes = _routes(self._applied)
            log.info("ingress: HAProxy serves the new configuration (%d routes)", routes)
            return
        now = asyncio.get_running_loop().time()
        if now - self._asked_at < retry_delay(self._unconfirmed):
            return
        retry = self._asked_at != -math.inf
        # (read before asking again: the new try's own lines follow at once)
        why = await asyncio.to_thread(_last_alert, self.dir / "haproxy.log") if retry else ""
        if await _ask(self.master_socket, "reload") is None:
            return  # the master is not up yet (or is re-executing): asked on a later pass
        if retry:
            self._unconfirmed += 1
            self.reload_failures += 1
            metrics.INGRESS_RELOAD_FAILURES.inc()
            self._set_problem(
                "HAProxy did not take the new configuration: " + (why or "no reason in haproxy.log")
            )
            log.warning(
                "ingress: HAProxy did not take the new configuration (%s); reloading again, "
                "next try in %.0fs if this one fails too",
                why or "no reason in haproxy.log",
                retry_delay(self._unconfirmed),
            )
        self._asked_at = now
        self.reloads += 1
        log.info("ingress: HAProxy asked to reload (%d routes)", _routes(self._applied))

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
            text = out.decode(errors="replace")
            log.error("ingress: HAProxy refused the new configuration: %s", text[-2000:])
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            reason = lines[0][:300] if lines else f"exit code {proc.returncode}"
            self._set_problem(f"HAProxy refused the new configuration: {reason}")
            return False
        return True

    async def _start(self, good: bool = False) -> None:
        logf = await asyncio.to_thread(open, self.dir / "haproxy.log", "ab")
        self._log_offset = logf.tell()
        self._started_good = good
        try:
            self._proc = await asyncio.create_subprocess_exec(
                HAPROXY, "-W", "-db", "-S", f"{self.master_socket},mode,600",
                "-f", str(self.config_file),
                stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                preexec_fn=child_setup(os.getpid()),
            )  # fmt: skip
        finally:
            logf.close()
        self.starts += 1
        self._asked_at = asyncio.get_running_loop().time()
        log.info("ingress: HAProxy started (pid %d) on :%d", self._proc.pid, self.http_port)
        proc = self._proc

        async def watch() -> None:
            await proc.wait()
            if self._proc is not proc:
                return
            self._proc, self._applied, self._serving = None, "", False
            if self._confirmed is proc:  # it had served: killed, or crashed
                log.error("ingress: HAProxy exited (%s); starting it again", proc.returncode)
                await asyncio.sleep(1.0)
            else:  # it never served: it cannot start with that configuration
                self._failed_starts += 1
                self._good_failed = self._good_failed or self._started_good
                log_file = self.dir / "haproxy.log"
                why = await asyncio.to_thread(_last_alert, log_file, since=self._log_offset)
                self._set_problem(
                    f"HAProxy exited at start (exit code {proc.returncode}): "
                    + (why or "no reason in haproxy.log")
                )
                delay = retry_delay(self._failed_starts - 1)
                log.error("ingress: %s; starting it again in %.0fs", self.problem, delay)
                await asyncio.sleep(delay)
            self._changed.set()

        self._watch = asyncio.get_running_loop().create_task(watch())

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        self._applied, self._serving = "", False
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


def retry_delay(unconfirmed: int) -> float:
    """Seconds from a reload (or start) to asking again, after `unconfirmed` reloads of
    the same configuration that HAProxy did not act on."""
    return min(RELOAD_RETRY_SECONDS * 2.0**unconfirmed, RELOAD_RETRY_MAX_SECONDS)


def _last_alert(log_file: Path, tail: int = 8192, since: int | None = None) -> str:
    """Why HAProxy's last reload failed, from its log: the first ALERT since it last
    logged "Reloading HAProxy" (the specific one: "cannot bind socket ... for [:443]";
    the ones after it only say that it gave up), "" if none. With `since` (an offset in
    the log): why its start failed, the first ALERT after that offset."""
    try:
        with log_file.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(since or 0, end - tail))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    if since is None:  # from the last reload on (with `since`, all was read from the start)
        starts = [i for i, line in enumerate(lines) if "Reloading HAProxy" in line]
        lines = lines[starts[-1] if starts else 0 :]
    alerts = [line for line in lines if "[ALERT]" in line]
    if not alerts:
        return ""
    text = alerts[0].split("[ALERT]", 1)[1].strip()
    return text.split(" : ", 1)[-1][:300]  # without "(pid) : "


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _routes(text: str) -> int:
    return text.count("use_backend")


async def _ask(socket_path: Path, command: str, within: float = 2.0) -> str | None:
    """`command`'s answer on one of HAProxy's CLI sockets; None when nothing listens
    there (yet) or it does not answer within `within` seconds."""
    answer = await exchange(socket_path, command.encode() + b"\n", within)
    return None if answer is None else answer.decode(errors="replace")


async def _backends(stats_socket: Path) -> set[str]:
    """The backends HAProxy's current worker serves (none when it does not answer)."""
    answer = await _ask(stats_socket, "show backend", within=1.0)
    return {line.strip() for line in (answer or "").splitlines() if not line.startswith("#")}
