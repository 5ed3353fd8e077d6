"""Benchmark: what the /metrics endpoint costs an agent, scraped once a second.

    python3 benchmarks/bench_metrics.py [--seconds 30]

A child process imports what an agent imports (gRPC, the protos), fills the registry
with a leader's worth of series (every ClusterAPI/AgentAPI method with two codes,
every etcd and Podman operation, all phases) and serves the real HTTPS endpoint on
loopback. The parent measures the child's CPU time (/proc/PID/stat) over an idle
window and over a window with one scrape a second on one kept-alive mTLS
connection (what Prometheus does), and its resident memory before the metrics code
is imported, once it serves, and after the scrapes.

Measured on the 2-core development machine (while other test suites ran, load
average about 30, so the latency is an upper bound), --seconds 30:
    series exposed: 867, response 75.8 KiB
    CPU idle: 0.00% of a core; scraped every 1s: 2.30% (23.00 ms CPU per scrape)
    scrape latency: median 387.6 ms, max 679.4 ms
    RSS: 35.8 MiB before the metrics code, 39.8 MiB serving (+4.0 MiB), 41.2 MiB after 30
    scrapes
"""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import asyncio, os, sys
from api.v1alpha1 import kat_pb2, kat_pb2_grpc  # what every agent holds anyway
import grpc
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
base = rss()
from internal.observability import metrics
from internal.observability.metrics_http import start_metrics_server
from internal.observability.grpc_metrics import split_method
for svc in ("ClusterAPI", "AgentAPI"):
    for m in kat_pb2.DESCRIPTOR.services_by_name[svc].methods:
        for code in ("OK", "NOT_FOUND"):
            metrics.API_REQUESTS.labels(svc, m.name, code).inc()
        metrics.API_SECONDS.labels(svc, m.name).observe(0.003)
for op in ("get", "range", "put", "txn", "lease_keepalive", "lease_grant", "watch", "status"):
    metrics.ETCD_SECONDS.labels(op).observe(0.002)
for op in ("POST containers/create", "POST containers/start", "inspect", "list", "remove", "pull"):
    metrics.PODMAN_SECONDS.labels(op).observe(0.05)
metrics.count_instances(metrics.NODE_INSTANCES, [kat_pb2.Instance.RUNNING] * 10)
metrics.count_instances(metrics.CLUSTER_INSTANCES, [kat_pb2.Instance.RUNNING] * 10)
metrics.count_nodes([kat_pb2.NodeStatus.READY] * 3)
metrics.SCHEDULING_SECONDS.observe(0.001)
metrics.APPLY_TO_SCHEDULED_SECONDS.observe(0.05)
metrics.set_version("bench")
d = sys.argv[1]
async def main():
    read = lambda n: open(os.path.join(d, n), "rb").read()
    pems = read("node.crt"), read("node.key"), read("ca.crt")
    server = await start_metrics_server("127.0.0.1", 0, *pems)
    print(server.sockets[0].getsockname()[1], base, rss(), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    from internal.security import pki

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ca = pki.create_ca()
        node = pki.issue_certificate(
            ca.cert_pem, ca.key_pem, common_name="n", role=pki.ROLE_NODE, ip_addresses=["127.0.0.1"]
        )
        mon = pki.issue_certificate(
            ca.cert_pem, ca.key_pem, common_name="p", role=pki.ROLE_MONITORING
        )
        for name, data in (
            ("ca.crt", ca.cert_pem),
            ("node.crt", node.cert_pem),
            ("node.key", node.key_pem),
            ("mon.crt", mon.cert_pem),
            ("mon.key", mon.key_pem),
        ):
            (d / name).write_bytes(data)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, tmp], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert child.stdout is not None
            port, base, serving = (int(x) for x in child.stdout.readline().split())
            ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
            ctx.load_cert_chain(d / "mon.crt", d / "mon.key")
            import http.client

            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
            conn.request("GET", "/metrics")
            body = conn.getresponse().read()
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))

            c0 = cpu_seconds(child.pid)
            time.sleep(args.seconds)
            idle = cpu_seconds(child.pid) - c0

            c0, took = cpu_seconds(child.pid), []
            for _ in range(args.seconds):
                start = time.perf_counter()
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                resp.read()
                took.append(time.perf_counter() - start)
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - start)))
            busy = cpu_seconds(child.pid) - c0
            after = rss_kib(child.pid)
            conn.close()
        finally:
            child.terminate()
            child.wait()
    took.sort()
    n = args.seconds
    print(f"series exposed: {series}, response {len(body) / 1024:.1f} KiB")
    print(
        f"CPU idle: {idle / n * 100:.2f}% of a core; scraped every 1s: {busy / n * 100:.2f}% "
        f"({(busy - idle) / n * 1000:.2f} ms CPU per scrape)"
    )
    print(f"scrape latency: median {took[n // 2] * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms")
    print(
        f"RSS: {base / 1024:.1f} MiB before the metrics code, {serving / 1024:.1f} MiB serving "
        f"(+{(serving - base) / 1024:.1f} MiB), {after / 1024:.1f} MiB after {n} scrapes"
    )


if __name__ == "__main__":
    main()
