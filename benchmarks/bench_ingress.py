"""Benchmark: requests per second through an ingress node's HAProxy against requests
straight to one instance, in the same run, measured with `wrk` (Debian).

    python3 benchmarks/bench_ingress.py [--seconds 10] [--connections 32] [--https]

The instance is busybox httpd on 127.0.0.2 (as in examples/web); the proxy is configured
by the agent's real ingress code (kat_agent/node/network/ingress.py) from an endpoint view
routing web.kat.local to that one instance. Prints both rates and their ratio; the target
is at least 0.7. Only loopback addresses are used. With --https the rule is `tls: true`
and the proxied requests go over HTTPS (keep-alive connections; a certificate from a
throw-away cluster CA, as an ingress node gets without a supplied one).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.v1alpha1 import kat_pb2  # noqa: E402 - needs the path set above
from internal.security import ingress_certs, pki  # noqa: E402
from kat_agent.node.network.ingress import IngressProxy  # noqa: E402

TARGET_RATIO = 0.7
BACKEND = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} does not answer")


def wrk(url: str, seconds: int, connections: int, host: str | None = None) -> float:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"warning: {errors.group(1)} non-2xx answers from {url}", file=sys.stderr)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert m, out
    return float(m.group(1))


async def run(seconds: int, connections: int, https: bool) -> None:
    port, http_port, https_port = free_port(), free_port(), free_port()
    ca = pki.create_ca()
    pair = ingress_certs.issue(ca.cert_pem, ca.key_pem, "web.kat.local")

    async def fetch(hosts):  # type: ignore[no-untyped-def]
        return [pair]

    with tempfile.TemporaryDirectory() as tmp:
        www = Path(tmp) / "www"
        www.mkdir()
        (www / "index.html").write_text("hello from the benchmark\n")
        httpd = await asyncio.create_subprocess_exec(
            "busybox", "httpd", "-f", "-p", f"{BACKEND}:{port}", "-h", str(www)
        )  # fmt: skip
        proxy = IngressProxy("bench", Path(tmp) / "ingress", http_port, https_port, fetch)
        task = asyncio.create_task(proxy.run())
        try:
            svc = kat_pb2.ServiceEndpoints(
                namespace="default",
                workload="web",
                endpoints=[kat_pb2.Endpoint(instance_id="web-0", ip=BACKEND)],
                ports=[kat_pb2.ServicePort(name="http", container_port=port)],
                ingress=[
                    kat_pb2.IngressRule(host="web.kat.local", service_port_name="http", tls=https)
                ],
            )
            proxy.offer(kat_pb2.EndpointSet(services=[svc], ingress_nodes=["bench"]))
            await asyncio.to_thread(wait_port, BACKEND, port)
            await asyncio.to_thread(wait_port, "127.0.0.1", https_port if https else http_port)
            await asyncio.sleep(1.0)  # HAProxy's first health check of the instance
            direct = await asyncio.to_thread(wrk, f"http://{BACKEND}:{port}/", seconds, connections)
            url = f"https://127.0.0.1:{https_port}/" if https else f"http://127.0.0.1:{http_port}/"
            proxied = await asyncio.to_thread(wrk, url, seconds, connections, "web.kat.local")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            httpd.terminate()
            await httpd.wait()
    ratio = proxied / direct if direct else 0.0
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(
        f"ingress{' (HTTPS)' if https else ''}: {proxied:,.0f} req/s through HAProxy vs "
        f"{direct:,.0f} req/s direct to one "
        f"instance: ratio {ratio:.2f} ({connections} connections, {seconds}s each) "
        f"target >= {TARGET_RATIO}: {verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--https", action="store_true", help="proxied requests over HTTPS")
    args = parser.parse_args()
    for tool in ("wrk", "haproxy", "busybox"):
        if shutil.which(tool) is None:
            print(f"{tool} not installed (scripts/setup.sh)", file=sys.stderr)
            return 2
    asyncio.run(run(args.seconds, args.connections, args.https))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
