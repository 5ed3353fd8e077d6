"""End-to-end placement throughput: apply -> persisted in etcd -> delivered to the node.

Starts a real single-member cluster on loopback (`kat-agent init`: real etcd, real mTLS),
joins N simulated nodes through the real Join RPC, and gives each a real `Heartbeats` stream
and a real `WatchAssignments` stream (benchmarks/sim_nodes.py: in `--workers` processes of
their own, so that the Apply client here does not queue behind a thousand streams on one
event loop). Once every node is READY and etcd has been quiet for a few seconds (the joins'
writes are done), it applies W workloads of R replicas each (one
Apply per workload, in a row; `--concurrency N`: N in flight at once) and measures the
time from the first Apply until every instance is persisted in etcd (counted with etcdctl)
and has reached its node's stream; then scales every workload to 0 and measures the same
way. Figures are printed at three sizes (by default 1,000, 3,000 and 10,000 instances) so
that super-linear steps show, with how long one Apply took (median, p90) and the CPU
seconds of the leader, its etcd and the simulated nodes.

    python3 benchmarks/bench_scale.py [--nodes 1000] [--sizes 1000,3000,10000] [--replicas 100]
        [--tick 1] [--concurrency 1] [--workers 2] [--profile FILE]

`--tick` is every node's heartbeat period (agentTickSeconds): 1 s by default, a stress
setting (1,000 beats/s); the cluster default is 15 s.

The last line is `placements_per_second=N leader_rss_mb=M` for the largest size
(scale-up), where M is the RSS of the kat-agent process (not etcd) with the nodes
connected. Targets (issue 14): >= 5,000 placements/s, leader < 150 MB.
All traffic goes to 127.0.0.1 only; every process is stopped and the temp dir removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.v1alpha1 import kat_pb2, kat_pb2_grpc  # noqa: E402
from benchmarks import sim_nodes  # noqa: E402
from benchmarks.bench_heartbeats import (  # noqa: E402
    agent_env,
    cpu_seconds,
    register,
    remove_bench_users,
    rss_mb,
    wait_for,
)
from internal.core import tokens  # noqa: E402
from internal.manifests import bundle  # noqa: E402
from internal.security import clientconfig, rpc  # noqa: E402
from internal.state.etcd import EtcdClient  # noqa: E402
from internal.state.etcd_values import EtcdError  # noqa: E402

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


class Applies:
    """How the last row of Applies went."""

    def __init__(self) -> None:
        self.seconds = 0.0  # until the last one returned
        self.latencies: list[float] = []  # each Apply, seconds


def etcd_client(data: Path) -> EtcdClient:
    p = data / "pki" / "etcd"
    return EtcdClient(
        [f"https://127.0.0.1:{PORTS['etcdClientPort']}"],
        ca_file=p / "ca.crt",
        cert_file=p / "client.crt",
        key_file=p / "client.key",
        timeout=30,
    )


async def etcd_count(etcd: EtcdClient, prefix: str) -> int:
    """How many keys are under `prefix` (keys only: cheap enough to poll); -1 when etcd
    did not answer this time (a loaded machine)."""
    try:
        return len((await etcd.get_prefix(prefix, keys_only=True)).kvs)
    except EtcdError:
        return -1


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
        "etcd_network_client_grpc_received_bytes_total": 0.0,
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
    etcd: EtcdClient,
    seen: sim_nodes.SharedCounts,
    applies: Applies,
    want_total: int,
    concurrency: int = 1,
    limit: float = 600,
) -> float:
    t0 = time.perf_counter()
    queue = list(reversed(names))
    applies.latencies = []

    async def applier() -> None:  # `concurrency` of these: Applies in flight at once
        while queue:
            n = queue.pop()
            a0 = time.perf_counter()
            await client.Apply(kat_pb2.ApplyRequest(bundle=workload(n, replicas)), timeout=120)
            applies.latencies.append(time.perf_counter() - a0)

    await asyncio.gather(*(applier() for _ in range(concurrency)))
    applies.seconds = time.perf_counter() - t0
    deadline = t0 + limit
    persisted_at = delivered_at = None
    while persisted_at is None or delivered_at is None:
        now = time.perf_counter()
        if now > deadline:
            raise SystemExit(
                f"timed out: persisted={await etcd_count(etcd, '/kat/instances/')} "
                f"delivered={seen.total()} want={want_total}"
            )
        if persisted_at is None:
            if await etcd_count(etcd, "/kat/instances/") == want_total:
                persisted_at = time.perf_counter()
        if delivered_at is None and seen.total() == want_total:
            delivered_at = time.perf_counter()
        await asyncio.sleep(0.05)
    return max(persisted_at, delivered_at) - t0


async def run(a: argparse.Namespace, data: Path, leader_pid: int) -> str:
    ctx = clientconfig.load(data / "admin.katconfig").context()
    creds = rpc.client_credentials(ctx.ca, ctx.cert, ctx.key)
    api = ctx.endpoints[0]
    channel = grpc.aio.secure_channel(api, creds, rpc.api_channel_options())
    async with channel as ch, etcd_client(data) as etcd:
        client = kat_pb2_grpc.ClusterAPIStub(ch)
        deadline = time.monotonic() + 60
        while True:  # UNAVAILABLE until the election is won
            try:
                # the simulated nodes join from 127.0.0.1 with other addresses
                request = kat_pb2.CreateTokenRequest(approved_addresses=["127.0.0.0/8"])
                created = await client.CreateToken(request, timeout=10)
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
        print(
            f"joined {len(nodes)} simulated nodes in {time.perf_counter() - t0:.1f} s "
            f"(leader RSS {rss_mb(leader_pid):.1f} MB before they connect)",
            flush=True,
        )
        seen, workers = sim_nodes.start(api, ctx.ca, nodes, a.tick, a.workers)
        applies = Applies()
        # wait until every stream delivered its first (empty) snapshot
        t0 = time.perf_counter()
        deadline = time.monotonic() + 600
        next_note = time.monotonic() + 30
        while seen.opened() < len(nodes):
            if time.monotonic() > next_note:
                print(f"  {seen.opened()} streams open; errors {seen.error_counts()}")
                next_note += 30
            if time.monotonic() > deadline:
                sim_nodes.stop(seen, workers)
                raise SystemExit(
                    f"only {seen.opened()} streams opened; errors {seen.error_counts()}"
                )
            await asyncio.sleep(0.1)
        print(
            f"{len(nodes)} nodes connected in {time.perf_counter() - t0:.1f} s: "
            f"leader RSS {rss_mb(leader_pid):.1f} MB (load average {load()})",
            flush=True,
        )
        settled = await settle(client, data, len(nodes) + 1)
        print(f"settled in {settled:.1f} s (every node READY, etcd quiet for {QUIET_SECONDS} s)")

        etcd_pid = child_pid(leader_pid, "etcd")
        if a.profile:
            os.kill(leader_pid, signal.SIGUSR1)  # profile the measured phase only
        last = ""
        try:
            for size in a.sizes:
                count = max(1, size // a.replicas)
                names = [f"s{size}-{i}" for i in range(count)]
                total = count * a.replicas
                b0 = seen.byte_count()
                m0, cpu0, e0 = seen.message_count(), cpu_seconds(leader_pid), etcd_metrics(data)
                others0 = cpu_seconds(etcd_pid), nodes_cpu(workers)
                wall0 = time.perf_counter()
                up = await measure(
                    client, names, a.replicas, etcd, seen, applies, total, a.concurrency
                )
                applies_up = applies.seconds
                latencies = sorted(applies.latencies)
                cpu_up = cpu_seconds(leader_pid) - cpu0
                etcd_up = cpu_seconds(etcd_pid) - others0[0]
                nodes_up = nodes_cpu(workers) - others0[1]
                e1 = etcd_metrics(data)
                rss = rss_mb(leader_pid)
                down = await measure(client, names, 0, etcd, seen, applies, 0, a.concurrency)
                applies_down = applies.seconds
                cpu_all = (cpu_seconds(leader_pid) - cpu0) / (time.perf_counter() - wall0)
                e2 = etcd_metrics(data)
                print(
                    f"{total:>6} instances on {len(nodes)} nodes: scale-up {up:.2f} s "
                    f"({total / up:.0f}/s), scale-down {down:.2f} s ({total / down:.0f}/s); "
                    f"leader CPU {cpu_up:.1f} s for the scale-up, {cpu_all:.2f} cores average; "
                    f"RSS {rss:.1f} MB; stream messages {seen.message_count() - m0} "
                    f"({(seen.byte_count() - b0) / 1e6:.1f} MB); the {count} Applies returned "
                    f"after {applies_up:.2f} s (scale-down {applies_down:.2f} s); "
                    f"stream errors so far {seen.error_counts()}; "
                    f"load average {load()}"
                )
                print(
                    f"       scale-up: one Apply took {percentile(latencies, 0.5) * 1000:.0f} ms "
                    f"(median; p90 {percentile(latencies, 0.9) * 1000:.0f} ms); CPU seconds: "
                    f"leader {cpu_up:.1f}, etcd {etcd_up:.1f}, the simulated nodes "
                    f"({a.workers} processes) {nodes_up:.1f}, in {up:.1f} s on "
                    f"{os.cpu_count()} cores"
                )

                def delta(key: str, a: dict[str, float], b: dict[str, float]) -> float:
                    return b[key] - a[key]

                print(
                    f"       etcd: scale-up {delta('etcd_mvcc_put_total', e0, e1):.0f} puts in "
                    f"{delta('etcd_mvcc_txn_total', e0, e1):.0f} txns; scale-down "
                    f"{delta('etcd_mvcc_put_total', e1, e2):.0f} puts in "
                    f"{delta('etcd_mvcc_txn_total', e1, e2):.0f} txns; proposals "
                    f"{delta('etcd_server_proposals_committed_total', e0, e2):.0f}; bytes "
                    "received "
                    f"{delta('etcd_network_client_grpc_received_bytes_total', e0, e2) / 1e6:.1f}"
                    " MB; db "
                    f"{e2['etcd_debugging_mvcc_db_total_size_in_bytes'] / 1e6:.1f} MB"
                )
                for n in names:
                    await client.DeleteWorkload(
                        kat_pb2.DeleteWorkloadRequest(namespace="default", name=n), timeout=60
                    )
                last = f"placements_per_second={total / up:.0f} leader_rss_mb={rss:.0f}"
        finally:
            sim_nodes.stop(seen, workers)
    return last


QUIET_SECONDS = 3.0


async def settle(client: kat_pb2_grpc.ClusterAPIStub, data: Path, want: int) -> float:
    """Wait until every node is READY and etcd took no proposal for QUIET_SECONDS: the
    joins' and first heartbeats' writes (node status) are done before anything is
    measured. Returns how long that took."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    ready = kat_pb2.NodeStatus.READY
    while True:
        nodes = (await client.ListNodes(kat_pb2.ListRequest(), timeout=30)).items
        if sum(1 for n in nodes if n.status.condition == ready) >= want:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(nodes)} nodes READY after 300 s")
        await asyncio.sleep(0.5)
    proposals = etcd_metrics(data)["etcd_server_proposals_committed_total"]
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < QUIET_SECONDS:
        if time.monotonic() > deadline:
            raise SystemExit("etcd never went quiet")
        await asyncio.sleep(0.5)
        now = etcd_metrics(data)["etcd_server_proposals_committed_total"]
        if now != proposals:
            proposals, quiet_since = now, time.monotonic()
    return time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def nodes_cpu(workers: list[Any]) -> float:
    return sum(cpu_seconds(p.pid) for p in workers if p.pid is not None)


def child_pid(parent: int, comm: str) -> int:
    """The pid of `parent`'s child process named `comm` (the leader's supervised etcd)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            if name == comm and int(text.rsplit(")", 1)[1].split()[1]) == parent:
                return int(stat.parent.name)
    raise SystemExit(f"no {comm} process under pid {parent}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_profile(path: Path, top: int = 30) -> None:
    import pstats

    if not path.exists():
        print(f"no profile written ({path})")
        return
    print(f"leader profile (event-loop thread), top {top} by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time:")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(top)


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="Applies in flight at once (1: one after the other, as one user would)",
    )
    ap.add_argument(
        "--tick",
        type=int,
        default=1,
        help="agentTickSeconds: every node heartbeats this often (1: 1,000 beats/s with "
        "1,000 nodes, a stress setting; the cluster default is 15)",
    )
    ap.add_argument("--sizes", default="1000,3000,10000")
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes the simulated nodes run in (beside this one, which applies)",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        help="run the leader under cProfile (KAT_PROFILE), keep the stats here, print a summary",
    )
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    for tool in ("etcd", "kat-agent"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool} on PATH (scripts/setup.sh)")
    tmp = Path(tempfile.mkdtemp(prefix="kat-bench-scale-"))
    leader: subprocess.Popen[bytes] | None = None
    last = ""
    try:
        spec = "\n".join(f"  {k}: {v}" for k, v in PORTS.items())
        (tmp / "cluster.kat").write_text(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\n"
            f"metadata: {{name: scale}}\nspec:\n{spec}\n  nodeSubnetBits: 11\n"
            f"  agentTickSeconds: {a.tick:g}\n  nodeLossTimeoutSeconds: {max(60, 4 * a.tick):g}\n"
        )
        data = tmp / "leader"
        log = open(tmp / "leader.log", "wb")
        leader = subprocess.Popen(
            ["kat-agent", "init", "--config", str(tmp / "cluster.kat"), "--data-dir", str(data)]
            + ["--advertise-address", "127.0.0.1", "--log-level", "warning"],
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=agent_env() | ({"KAT_PROFILE": str(a.profile.resolve())} if a.profile else {}),
        )
        print(
            f"load average at start: {load()}; agentTickSeconds {a.tick}, "
            f"Applies in flight {a.concurrency}"
        )
        wait_for(data / "admin.katconfig", leader, tmp / "leader.log")
        last = asyncio.run(run(a, data, leader.pid))
    finally:
        if leader is not None and leader.poll() is None:
            os.killpg(leader.pid, signal.SIGTERM)
            try:
                leader.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(leader.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
        remove_bench_users()
        if a.profile:
            print_profile(a.profile)
    print(last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
