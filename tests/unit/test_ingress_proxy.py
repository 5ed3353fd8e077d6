"""The ingress proxy with a real HAProxy on loopback: routes by Host header to every ready
instance, reloads on every change of the view without failing a request under load, and
stops when the node is no longer an ingress node. Skipped without `haproxy`."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import shutil
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from internal.observability import metrics
from kat_agent.node.network import ingress
from kat_agent.node.network.ingress import IngressProxy

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")

BACKENDS = ("127.0.0.2", "127.0.0.3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.server.server_address[0]}\n".encode()  # type: ignore[index]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[int]:
    port = free_port()
    servers = [http.server.ThreadingHTTPServer((ip, port), Hello) for ip in BACKENDS]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield port
    for s in servers:
        s.shutdown()
        s.server_close()


def view(port: int, ips: tuple[str, ...], ingress: bool = True) -> kat_pb2.EndpointSet:
    svc = kat_pb2.ServiceEndpoints(
        namespace="default",
        workload="web",
        endpoints=[kat_pb2.Endpoint(instance_id=f"web-{i}", ip=ip) for i, ip in enumerate(ips)],
        ports=[kat_pb2.ServicePort(name="http", container_port=port)],
        ingress=[kat_pb2.IngressRule(host="web.kat.local", path="/", service_port_name="http")],
    )
    return kat_pb2.EndpointSet(services=[svc], ingress_nodes=["n1"] if ingress else [])


def get(port: int, host: str = "web.kat.local") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def reload_failures_metric() -> float:
    return metrics.REGISTRY.get_sample_value("kat_ingress_reload_failures_total") or 0.0


async def until(fn, within: float = 20.0):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            v = await asyncio.to_thread(fn)
            if v:
                return v
        except OSError:
            pass
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.1)


@pytest.mark.async_timeout(90)
async def test_routes_reloads_without_loss_and_stops(tmp_path: Path, backends: int) -> None:
    http_port = free_port()
    proxy = IngressProxy("n1", tmp_path / "ingress", http_port, free_port())
    task = asyncio.create_task(proxy.run())
    try:
        proxy.offer(view(backends, BACKENDS))
        await until(lambda: get(http_port)[0] == 200)
        answers = [await asyncio.to_thread(get, http_port) for _ in range(20)]
        assert all(code == 200 for code, _ in answers)
        assert {body.strip() for _, body in answers} == {f"hello from {ip}" for ip in BACKENDS}
        assert (await asyncio.to_thread(get, http_port, "other.kat.local"))[0] == 404

        # Steady load while the view changes (an instance goes, comes back): no failure.
        failures: list[str] = []
        done = threading.Event()
        count = 0

        def load() -> None:
            nonlocal count
            while not done.is_set():
                try:
                    code, _ = get(http_port)
                    if code != 200:
                        failures.append(str(code))
                except OSError as e:
                    failures.append(repr(e))
                count += 1

        t = threading.Thread(target=load)
        t.start()
        try:
            for i in range(6):
                proxy.offer(view(backends, BACKENDS[: 1 + i % 2]))
                await until(lambda i=i: proxy.reloads >= i + 1)
                await asyncio.sleep(0.3)
        finally:
            done.set()
            await asyncio.to_thread(t.join)
        assert proxy.reloads >= 6
        assert count > 20 and not failures, failures[:5]

        # No longer an ingress node: HAProxy goes, the port closes.
        proxy.offer(view(backends, BACKENDS, ingress=False))
        await until(lambda: closed(http_port))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def https_get(port: int, ca: bytes, host: str = "web.kat.local") -> tuple[str, bytes]:
    """(status line and body, the DER certificate served) over TLS with SNI `host`,
    verified against `ca` (the supplied self-signed certificate itself)."""
    ctx = ssl.create_default_context(cadata=ca.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            der = tls.getpeercert(binary_form=True) or b""
    return data.decode(errors="replace"), der


def redirect_of(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/a?b=1", headers={"Host": "web.kat.local"})
        r = conn.getresponse()
        return r.status, r.getheader("Location") or ""
    finally:
        conn.close()


@pytest.mark.async_timeout(90)
async def test_tls_host_serves_the_supplied_certificate_and_redirects(
    tmp_path: Path, backends: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.unit.test_ingress_certs import self_signed

    monkeypatch.setattr(ingress, "CERT_REFRESH_SECONDS", 0.5)
    first, second = self_signed(["web.kat.local"]), self_signed(["web.kat.local"])
    serving = [first]
    asked: list[list[str]] = []

    async def fetch(hosts):  # type: ignore[no-untyped-def]
        asked.append(list(hosts))
        cert, key = serving[0]
        c = kat_pb2.IngressCertificate(host="web.kat.local", cert_pem=cert)
        return [kat_pb2.IngressKeyPair(certificate=c, key_pem=key)]

    http_port, https_port = free_port(), free_port()
    work = tmp_path / "ingress"
    proxy = IngressProxy("n1", work, http_port, https_port, fetch)
    v = view(backends, BACKENDS)
    v.services[0].ingress[0].tls = True
    task = asyncio.create_task(proxy.run())
    try:
        proxy.offer(v)
        reply, der = await until(lambda: https_get(https_port, first[0]))
        assert reply.split("\r\n")[0].endswith("200 OK") and "hello from" in reply, reply
        assert der == x509.load_pem_x509_certificate(first[0]).public_bytes(Encoding.DER)
        assert asked[0] == ["web.kat.local"]
        pem = work / "certs" / "web.kat.local.pem"
        assert pem.stat().st_mode & 0o777 == 0o600
        assert (work.stat().st_mode & 0o777) == 0o700
        status, location = await asyncio.to_thread(redirect_of, http_port)
        assert status == 301 and location == f"https://web.kat.local:{https_port}/a?b=1"
        # Another host (no tls rule) stays on plain HTTP; unknown SNI gets no route.
        assert (await asyncio.to_thread(get, http_port, "other.kat.local"))[0] == 404

        # The operator replaces the certificate: served after the next refresh.
        serving[0] = second
        await until(lambda: https_get(https_port, second[0]))
        assert proxy.reloads >= 1
        # A key file removed behind the agent's back comes back at the next refresh.
        pem.unlink()
        await until(pem.exists)
        assert pem.read_bytes() == second[0] + second[1]

        # No longer an ingress node: HAProxy stops and the keys go with it.
        proxy.offer(view(backends, BACKENDS, ingress=False))
        await until(lambda: closed(https_port))
        await until(lambda: not pem.exists())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def serves_all(port: int) -> bool:
    answers = [get(port) for _ in range(10)]
    return {body.strip() for _, body in answers} == {f"hello from {ip}" for ip in BACKENDS}


@pytest.mark.async_timeout(120)
async def test_a_view_changed_while_haproxy_starts_is_served(tmp_path: Path, backends: int) -> None:
    """HAProxy's master acts on a reload only once it is up: measured with HAProxy 2.6, a
    SIGUSR2 within ~20 ms of its start killed it, and one 50-100 ms after (even once its
    stats socket answered) was lost, leaving it on the first configuration for good. This
    is what the first ready instance of a workload does (HAProxy starts) when the others
    become ready a few ms later. Each trial changes the view at another moment of HAProxy's
    start (the sleep is the fault being injected, not a wait for something): the second
    backend must be served, by the HAProxy first started."""
    for trial, delay in enumerate((0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15)):
        http_port = free_port()
        proxy = IngressProxy("n1", tmp_path / f"ingress{trial}", http_port, free_port())
        task = asyncio.create_task(proxy.run())
        try:
            proxy.offer(view(backends, BACKENDS[:1]))
            await until(lambda proxy=proxy: proxy.starts == 1)
            await asyncio.sleep(delay)
            proxy.offer(view(backends, BACKENDS))
            await until(lambda port=http_port: serves_all(port), within=15)
            assert proxy.starts == 1, f"HAProxy started {proxy.starts} times (delay {delay})"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def answered(port: int, tries: int) -> set[tuple[int, str]]:
    """The distinct answers of those of `tries` requests that got one."""
    got = set()
    for _ in range(tries):
        try:
            got.add(get(port))
        except OSError:
            continue
    return got


def test_retry_delay_doubles_up_to_the_cap() -> None:
    delays = [ingress.retry_delay(n) for n in range(8)]
    assert delays[:3] == [ingress.RELOAD_RETRY_SECONDS * f for f in (1, 2, 4)]
    assert max(delays) == delays[-1] == ingress.RELOAD_RETRY_MAX_SECONDS


@dataclass
class HeldHttps:
    """An HTTPS port another process holds (no SO_REUSEPORT), a free HTTP port, and the
    certificate the leader hands out for web.kat.local (`fetch`, as the agent's)."""

    http_port: int
    https_port: int
    holder: socket.socket
    cert: bytes
    fetch: Callable[[Sequence[str]], Awaitable[list[kat_pb2.IngressKeyPair]]]


@pytest.fixture
def held_https(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldHttps]:
    """Also: reloads that HAProxy does not act on are asked for again within a second."""
    from tests.unit.test_ingress_certs import self_signed

    monkeypatch.setattr(ingress, "RELOAD_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(ingress, "RELOAD_RETRY_MAX_SECONDS", 1.0)
    cert, key = self_signed(["web.kat.local"])

    async def fetch(hosts: Sequence[str]) -> list[kat_pb2.IngressKeyPair]:
        c = kat_pb2.IngressCertificate(host="web.kat.local", cert_pem=cert)
        return [kat_pb2.IngressKeyPair(certificate=c, key_pem=key)]

    https_port = free_port()
    holder = socket.socket()
    holder.bind(("0.0.0.0", https_port))
    holder.listen()
    try:
        yield HeldHttps(free_port(), https_port, holder, cert, fetch)
    finally:
        holder.close()


def tls_view(backends: int) -> kat_pb2.EndpointSet:
    """Every backend, its ingress rule served over HTTPS: a view that needs the HTTPS port."""
    v = view(backends, BACKENDS)
    v.services[0].ingress[0].tls = True
    return v


@pytest.mark.async_timeout(90)
async def test_a_reload_haproxy_cannot_take_keeps_the_old_one_serving_until_it_can(
    tmp_path: Path,
    backends: int,
    held_https: HeldHttps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A configuration `haproxy -c` accepts but the master cannot load: the first TLS
    host adds the HTTPS bind, on a port another process holds. The workers running keep
    serving the previous configuration, the reload is asked for again with HAProxy's own
    reason in the log and growing pauses, and once the port is free the new configuration
    is served, by the same HAProxy."""
    h = held_https
    http_port, https_port, cert = h.http_port, h.https_port, h.cert
    failures_before = reload_failures_metric()
    proxy = IngressProxy("n1", tmp_path / "ingress", http_port, https_port, h.fetch)
    task = asyncio.create_task(proxy.run())
    try:
        proxy.offer(view(backends, BACKENDS[:1]))
        await until(lambda: get(http_port)[0] == 200)
        proxy.offer(tls_view(backends))
        await until(lambda: proxy.reload_failures >= 3, within=30)
        # Still the first configuration: one backend, plain HTTP answered (no redirect).
        # (Each failed reload pauses the old worker's listeners for about a second: not
        # every try is answered; hence the growing pauses between retries.)
        answers = await until(lambda: answered(http_port, 6))
        assert answers == {(200, f"hello from {BACKENDS[0]}\n")}, answers
        retries = [r.getMessage() for r in caplog.records if "reloading again" in r.message]
        assert retries and "cannot bind" in retries[0].lower(), retries[:1]
        # what the heartbeats tell the leader (its IngressDegraded condition), and the metric
        status = proxy.status()
        assert status is not None and "cannot bind" in status.problem.lower(), status
        assert status.reload_failures >= 3
        assert reload_failures_metric() >= failures_before + 3
        h.holder.close()
        reply, _ = await until(lambda: https_get(https_port, cert), within=30)
        assert reply.split("\r\n")[0].endswith("200 OK"), reply
        assert proxy.starts == 1
        await until(lambda: proxy.status() == kat_pb2.IngressStatus(
            serving=True, reload_failures=proxy.reload_failures))  # fmt: skip
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.async_timeout(120)
async def test_an_agent_restarted_while_haproxy_cannot_take_the_view_serves_the_last_good_one(
    tmp_path: Path, backends: int, held_https: HeldHttps
) -> None:
    """The agent stops (its HAProxy with it) while the newest view cannot load: its HTTPS
    port is held. The next agent's HAProxy cannot start with that view, so it is started
    with the configuration last seen serving: the routes it had keep being served, the
    problem is reported, and once the port is free the newest view is served."""
    h = held_https
    http_port, https_port, fetch = h.http_port, h.https_port, h.fetch
    tls = tls_view(backends)
    first = IngressProxy("n1", tmp_path / "ingress", http_port, https_port, fetch)
    task = asyncio.create_task(first.run())
    try:
        first.offer(view(backends, BACKENDS[:1]))
        await until(lambda: get(http_port)[0] == 200)
        await until(lambda: first.good_config_file.exists())  # seen serving
        first.offer(tls)
        await until(lambda: first.reload_failures >= 1, within=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(OSError):
        get(http_port)  # the agent is gone and its HAProxy with it
    problems: list[str] = []
    again = IngressProxy("n1", tmp_path / "ingress", http_port, https_port, fetch)
    again.on_problem = lambda: problems.append(again.problem)
    task = asyncio.create_task(again.run())
    try:
        again.offer(tls)
        answers = await until(lambda: answered(http_port, 6), within=40)
        assert answers == {(200, f"hello from {BACKENDS[0]}\n")}, answers
        assert problems and problems[0].startswith("HAProxy exited at start"), problems
        assert "cannot bind" in problems[0].lower(), problems
        status = again.status()
        assert status is not None and status.problem, status  # not the newest view yet
        h.holder.close()
        reply, _ = await until(lambda: https_get(https_port, h.cert), within=30)
        assert reply.split("\r\n")[0].endswith("200 OK"), reply
        await until(lambda: again.status() == kat_pb2.IngressStatus(
            serving=True, reload_failures=again.reload_failures))  # fmt: skip
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.async_timeout(90)
async def test_haproxy_killed_behind_the_agents_back_comes_back_with_the_current_view(
    tmp_path: Path, backends: int
) -> None:
    """`kill -9` of HAProxy's master and workers: the agent starts it again and it
    serves the view as it is now, including a change offered while it was down."""
    import os
    import signal

    from kat_agent.node.podman.orphans import process_tree

    http_port = free_port()
    proxy = IngressProxy("n1", tmp_path / "ingress", http_port, free_port())
    task = asyncio.create_task(proxy.run())
    try:
        proxy.offer(view(backends, BACKENDS[:1]))
        await until(lambda: get(http_port)[0] == 200)
        assert proxy._proc is not None
        master = proxy._proc.pid
        for pid in process_tree([master]):  # workers first, then the master
            os.kill(pid, signal.SIGKILL)
        proxy.offer(view(backends, BACKENDS))  # while it is down (restarted after 1 s)
        await until(lambda: serves_all(http_port), within=20)
        assert proxy.starts == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
