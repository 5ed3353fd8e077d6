"""End-to-end placement throughput: apply -> persisted in etcd -> delivered to the node.

Starts a real single-member cluster on loopback (`kat-agent init`: real etcd, real mTLS),
joins N simulated nodes through the real Join RPC, and gives each a real `Heartbeats` stream
and a real `WatchAssignments` stream. It then applies W workloads of R replicas each (one
Apply per workload, in a row) and measures the time from the first Apply until every
instance is persisted in etcd (counted with etcdctl) and has reached its node's stream;
then scales every workload to 0 and measures the same way. Figures are printed at three
sizes (by default 1,000, 3,000 and 10,000 instances) so that super-linear steps show.

    python3 benchmarks/bench_scale.py [--nodes 1000] [--sizes 1000,3000,10000] [--replicas 100]

The last line is `placements_per_second=N leader_rss_mb=M` for the largest size
(scale-up), where M is the RSS of the kat-agent process (not etcd) with the nodes
connected. Targets (issue 14): >= 5,000 placements/s, leader < 150 MB.
All traffic goes to 127.0.0.1 only; every process is stopped and the temp dir removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.v1alpha1 import kat_pb2, kat_pb2_grpc  # noqa: E402
from benchmarks.bench_heartbeats import cpu_seconds, register, rss_mb, wait_for  # noqa: E402
from internal.core import tokens  # noqa: E402
from internal.manifests import bundle  # noqa: E402
from internal.security import clientconfig, rpc  # noqa: E402

PORTS = {
    "apiPort": 29115,
    "joinPort": 29117,
    "agentPort": 29116,
    "etcdClientPort": 22379,
    "etcdPeerPort": 22380,
}


def workload(name: str, replicas: int) -> bytes:
    text = f"""apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {{name: {name}}}
spec:
  type: SERVICE
  source: {{image: "registry.kat.local/busybox:latest"}}
  replicas: {replicas}
  container:
    name: {name}
    command: [sleep, "3600"]
    resources:
      requests: {{cpu: 1m, memory: 1Mi}}
"""
    return bundle.pack_files({"workload.kat": text.encode()})


class Delivered:
    """What every simulated node's assignments stream last said (instance ids per node)."""

    def __init__(self) -> None:
        self.per_node: dict[str, int] = {}
        self.messages = 0
        self.bytes = 0

    def total(self) -> int:
        return sum(self.per_node.values())


async def node_streams(
    api: str, ca: bytes, node: tuple[str, bytes, bytes], seen: Delivered, stop: asyncio.Event
) -> None:
    name, cert, key = node
    creds = rpc.client_credentials(ca, cert, key)
    async with grpc.aio.secure_channel(api, creds, rpc.api_channel_options()) as ch:
        stub = kat_pb2_grpc.AgentAPIStub(ch)
        beat = kat_pb2.HeartbeatRequest(
            node_name=name,
            capacity=kat_pb2.NodeResources(cpu_millis=64000, memory_bytes=64 << 30),
            allocatable=kat_pb2.NodeResources(cpu_millis=64000, memory_bytes=64 << 30),
        )
        beats = stub.Heartbeats()
        watch = stub.WatchAssignments(kat_pb2.AssignmentsRequest(node_name=name))

        async def heartbeat() -> None:
            while not stop.is_set():
                await beats.write(beat)
                await beats.read()
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass

        async def follow() -> None:
            async for snapshot in watch:
                seen.messages += 1
                seen.bytes += snapshot.ByteSize()
                seen.per_node[name] = len(snapshot.assignments)

        tasks = [asyncio.create_task(heartbeat()), asyncio.create_task(follow())]
        await stop.wait()
        beats.cancel()
        watch.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def etcd_count(data: Path, prefix: str) -> int:
    p = data / "pki" / "etcd"
    out = subprocess.run(
        [
            "etcdctl",
            f"--endpoints=https://127.0.0.1:{PORTS['etcdClientPort']}",
            f"--cacert={p / 'ca.crt'}",
            f"--cert={p / 'client.crt'}",
            f"--key={p / 'client.key'}",
            "get",
            "--prefix",
            "--limit=1",
            "--write-out=json",
            prefix,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"etcdctl: {out.stderr.strip()}")
    return int(json.loads(out.stdout).get("count", 0))


def etcd_metrics(data: Path) -> dict[str, float]:
    """etcd's own write counters (its /metrics over the client port, with client certs)."""
    import ssl
    import urllib.request

    p = data / "pki" / "etcd"
    ctx = ssl.create_default_context(cafile=str(p / "ca.crt"))
    ctx.load_cert_chain(str(p / "client.crt"), str(p / "client.key"))
    ctx.check_hostname = False
    url = f"https://127.0.0.1:{PORTS['etcdClientPort']}/metrics"
    text = urllib.request.urlopen(url, context=ctx, timeout=10).read().decode()
    want = {
        "etcd_mvcc_put_total": 0.0,
        "etcd_mvcc_txn_total": 0.0,
        "etcd_debugging_mvcc_db_total_size_in_bytes": 0.0,
        "etcd_server_proposals_committed_total": 0.0,
    }
    for line in text.splitlines():
        name = line.split(" ", 1)[0].split("{", 1)[0]
        if name in want and not line.startswith("#"):
            want[name] += float(line.rsplit(" ", 1)[1])
    return want


async def measure(
    client: kat_pb2_grpc.ClusterAPIStub,
    names: list[str],
    replicas: int,
    data: Path,
    seen: Delivered,
    want_total: int,
    limit: float = 600,
) -> float:
    t0 = time.perf_counter()
    for n in names:
        await client.Apply(kat_pb2.ApplyRequest(bundle=workload(n, replicas)), timeout=120)
    deadline = t0 + limit
    persisted_at = delivered_at = None
    while persisted_at is None or delivered_at is None:
        now = time.perf_counter()
        if now > deadline:
            raise SystemExit(
                f"timed out: persisted={etcd_count(data, '/kat/instances/')} "
                f"delivered={seen.total()} want={want_total}"
            )
        if persisted_at is None:
            count = await asyncio.to_thread(etcd_count, data, "/kat/instances/")
            if count == want_total:
                persisted_at = time.perf_counter()
        if delivered_at is None and seen.total() == want_total:
            delivered_at = time.perf_counter()
        await asyncio.sleep(0.05)
    return max(persisted_at, delivered_at) - t0


async def run(a: argparse.Namespace, data: Path, leader_pid: int) -> int:
    ctx = clientconfig.load(data / "admin.katconfig").context()
    creds = rpc.client_credentials(ctx.ca, ctx.cert, ctx.key)
    api = ctx.endpoints[0]
    async with grpc.aio.secure_channel(api, creds, rpc.api_channel_options()) as ch:
        client = kat_pb2_grpc.ClusterAPIStub(ch)
        deadline = time.monotonic() + 60
        while True:  # UNAVAILABLE until the election is won
            try:
                created = await client.CreateToken(kat_pb2.CreateTokenRequest(), timeout=10)
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        credential = tokens.parse(created.join_token).credential
        # The leader's own node runs real Podman: keep placements on the simulated nodes.
        for n in (await client.ListNodes(kat_pb2.ListRequest(), timeout=10)).items:
            await client.CordonNode(kat_pb2.NodeRequest(name=n.metadata.name), timeout=10)
        join = f"127.0.0.1:{PORTS['joinPort']}"
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> tuple[str, bytes, bytes]:
            async with sem:
                return await register(join, ctx.ca, credential, i)

        t0 = time.perf_counter()
        nodes = list(await asyncio.gather(*(one(i) for i in range(a.nodes))))
        print(f"joined {len(nodes)} simulated nodes in {time.perf_counter() - t0:.1f} s")
        seen = Delivered()
        stop = asyncio.Event()
        streams = [asyncio.create_task(node_streams(api, ctx.ca, n, seen, stop)) for n in nodes]
        # wait until every stream delivered its first (empty) snapshot
        deadline = time.monotonic() + 120
        while len(seen.per_node) < len(nodes):
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(seen.per_node)} streams opened")
            await asyncio.sleep(0.1)
        print(f"{len(nodes)} nodes connected: leader RSS {rss_mb(leader_pid):.1f} MB")

        last = ""
        try:
            for size in a.sizes:
                count = max(1, size // a.replicas)
                names = [f"s{size}-{i}" for i in range(count)]
                total = count * a.replicas
                m0, cpu0, e0 = seen.messages, cpu_seconds(leader_pid), etcd_metrics(data)
                wall0 = time.perf_counter()
                up = await measure(client, names, a.replicas, data, seen, total)
                cpu_up = cpu_seconds(leader_pid) - cpu0
                e1 = etcd_metrics(data)
                rss = rss_mb(leader_pid)
                down = await measure(client, names, 0, data, seen, 0)
                cpu_all = (cpu_seconds(leader_pid) - cpu0) / (time.perf_counter() - wall0)
                e2 = etcd_metrics(data)
                print(
                    f"{total:>6} instances on {len(nodes)} nodes: scale-up {up:.2f} s "
                    f"({total / up:.0f}/s), scale-down {down:.2f} s ({total / down:.0f}/s); "
                    f"leader CPU {cpu_up:.1f} s for the scale-up, {cpu_all:.2f} cores average; "
                    f"RSS {rss:.1f} MB; stream messages {seen.messages - m0}"
                )

                def delta(key: str, a: dict[str, float], b: dict[str, float]) -> float:
                    return b[key] - a[key]

                print(
                    f"       etcd: scale-up {delta('etcd_mvcc_put_total', e0, e1):.0f} puts in "
                    f"{delta('etcd_mvcc_txn_total', e0, e1):.0f} txns; scale-down "
                    f"{delta('etcd_mvcc_put_total', e1, e2):.0f} puts; proposals "
                    f"{delta('etcd_server_proposals_committed_total', e0, e2):.0f}; db "
                    f"{e2['etcd_debugging_mvcc_db_total_size_in_bytes'] / 1e6:.1f} MB"
                )
                for n in names:
                    await client.DeleteWorkload(
                        kat_pb2.DeleteWorkloadRequest(namespace="default", name=n), timeout=60
                    )
                last = f"placements_per_second={total / up:.0f} leader_rss_mb={rss:.0f}"
        finally:
            stop.set()
            await asyncio.gather(*streams, return_exceptions=True)
        print(last)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--sizes", default="1000,3000,10000")
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    for tool in ("etcd", "etcdctl", "kat-agent"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool} on PATH (scripts/setup.sh)")
    tmp = Path(tempfile.mkdtemp(prefix="kat-bench-scale-"))
    leader: subprocess.Popen[bytes] | None = None
    try:
        spec = "\n".join(f"  {k}: {v}" for k, v in PORTS.items())
        (tmp / "cluster.kat").write_text(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\n"
            f"metadata: {{name: scale}}\nspec:\n{spec}\n  nodeSubnetBits: 11\n"
            "  agentTickSeconds: 1\n  nodeLossTimeoutSeconds: 60\n"
        )
        data = tmp / "leader"
        log = open(tmp / "leader.log", "wb")
        leader = subprocess.Popen(
            ["kat-agent", "init", "--config", str(tmp / "cluster.kat"), "--data-dir", str(data)]
            + ["--advertise-address", "127.0.0.1", "--log-level", "warning"],
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "KAT_NODE_NETWORK": "off"},  # host namespace: no overlay or DNS
        )
        wait_for(data / "admin.katconfig", leader)
        return asyncio.run(run(a, data, leader.pid))
    finally:
        if leader is not None and leader.poll() is None:
            os.killpg(leader.pid, signal.SIGTERM)
            try:
                leader.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(leader.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
