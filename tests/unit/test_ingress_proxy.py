"""The ingress proxy with a real HAProxy on loopback: routes by Host header to every ready
instance, reloads on every change of the view without failing a request under load, and
stops when the node is no longer an ingress node. Skipped without `haproxy`."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
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
