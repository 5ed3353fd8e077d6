"""Benchmark: queries per second and p99 latency of a node's DNS server for cluster names,
measured with `dnsperf` (Debian) against the agent's real DNS code on loopback.

    python3 benchmarks/bench_dns.py [--seconds 10] [--clients 8]

The server (kat_agent/node/network/dns.py) runs in a process of its own, as in the agent,
with a view of one workload of three ready instances and a named port; the query mix is
the service name (A), an instance name (A), the SRV name, and an unknown name (NXDOMAIN).
Prints qps and latency percentiles; targets: >= 10,000 queries/s, p99 < 5 ms. Only
loopback addresses are used; nothing is forwarded (no upstream).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.v1alpha1 import kat_pb2  # noqa: E402 - needs the path set above
from kat_agent.node.network import records  # noqa: E402
from kat_agent.node.network.dns import DnsServer  # noqa: E402

DOMAIN = "kat.cluster.local"
TARGET_QPS = 10_000
TARGET_P99_MS = 5.0
QUERIES = [
    f"web.default.svc.{DOMAIN} A",
    f"web-1.web.default.svc.{DOMAIN} A",
    f"_http._tcp.web.default.svc.{DOMAIN} SRV",
    f"web.default.svc.{DOMAIN} A",
    f"nope.default.svc.{DOMAIN} A",
]


def view() -> kat_pb2.ServiceEndpoints:
    return kat_pb2.ServiceEndpoints(
        namespace="default",
        workload="web",
        endpoints=[kat_pb2.Endpoint(instance_id=f"web-{i}", ip=f"10.100.{i}.5") for i in range(3)],
        ports=[kat_pb2.ServicePort(name="http", container_port=8080, protocol=1)],
    )


def serve(port: int) -> None:
    async def run() -> None:
        server = DnsServer("127.0.0.1", port, DOMAIN, [])
        server.update(records.ZoneTable.build(DOMAIN, [view()]))
        await server.serve()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--outstanding", type=int, default=20, help="queries in flight (dnsperf -q)"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if shutil.which("dnsperf") is None:
        print("dnsperf not installed (apt-get install dnsperf)", file=sys.stderr)
        return 2
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "queries"
            data.write_text("\n".join(QUERIES) + "\n")
            probe = subprocess.run(
                ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-n", "1"],
                capture_output=True, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 20
            while "Queries completed:    5" not in probe.stdout and time.monotonic() < deadline:
                time.sleep(0.2)
                probe = subprocess.run(
                    ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-n", "1",
                     "-t", "1"],
                    capture_output=True, text=True,
                )  # fmt: skip
            out = subprocess.run(
                ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data),
                 "-l", str(args.seconds), "-c", str(args.clients),
                 "-q", str(args.outstanding), "-v"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
    finally:
        child.terminate()
        child.wait()
    latencies = []
    qps = 0.0
    lost = ""
    for line in out.splitlines():
        if line.startswith(">"):  # "> NOERROR name type seconds" (lost ones have no time)
            try:
                latencies.append(float(line.split()[-1]) * 1000)
            except ValueError:
                pass
        elif "Queries per second:" in line:
            qps = float(line.split()[-1])
        elif "Queries lost:" in line:
            lost = line.split(":", 1)[1].strip()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    ok = qps >= TARGET_QPS and p99 < TARGET_P99_MS
    print(
        f"dns: {qps:,.0f} queries/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, lost {lost} "
        f"({len(latencies)} answers, {args.clients} clients, {os.cpu_count()} cores) "
        f"target >= {TARGET_QPS:,}/s and p99 < {TARGET_P99_MS} ms: {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
