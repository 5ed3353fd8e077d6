"""Leader load under heartbeats, and resident memory of the agents.

Starts a real single-node cluster (`kat-agent init`, real etcd, mTLS) on
loopback in a temp dir, registers N simulated agents through the real Join RPC
(each with its own key and certificate), then has every simulated agent send a
Heartbeat each tick for a while and reports:

  - p50/p99 heartbeat latency seen by the agents,
  - the leader process's CPU use (kat-agent only, not its etcd child),
  - resident memory of the leader process and of one real, idle joined agent.

    python3 benchmarks/bench_heartbeats.py [--agents 1000] [--seconds 30]

Targets (issue 3): p99 < 50 ms and < 1 core at 1,000 agents / 1 s tick;
idle agent < 60 MB; leader without etcd < 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.v1alpha1 import kat_pb2, kat_pb2_grpc  # noqa: E402
from internal.core import tokens
from internal.security import clientconfig, pki, rpc

PORTS = {
    "apiPort": 19115,
    "joinPort": 19117,
    "agentPort": 19116,
    "etcdClientPort": 12379,
    "etcdPeerPort": 12380,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# The workload users of this bench's agents: never those of a KAT running on this machine
# (the README's quickstart uses kat_wl_). With the default prefix, an agent of a bench once
# adopted the quickstart's workload user, and its Podman service was lost when the bench
# ended. Removed at the end (remove_bench_users).
# One given in the environment (the test suite's) is its owner's to clean up.
_GIVEN_PREFIX = os.environ.get("KAT_WORKLOAD_USER_PREFIX")
BENCH_USER_PREFIX = _GIVEN_PREFIX or f"kb{os.getpid() % 10000:04d}_"


def agent_env() -> dict[str, str]:
    """The environment of a kat-agent this bench starts: the host namespace (no overlay or
    DNS), its own workload-user prefix, no spare workload user (killed with its data dir,
    the agent would leave it behind: kat_agent/node/podman/spares.py)."""
    return {
        **os.environ,
        "KAT_NODE_NETWORK": "off",
        "KAT_WORKLOAD_USER_PREFIX": BENCH_USER_PREFIX,
        "KAT_SPARE_WORKLOAD_USERS": "0",
    }


def remove_bench_users() -> None:
    from kat_agent.node.podman.users import remove_workload_users_with_prefix

    if not _GIVEN_PREFIX:
        remove_workload_users_with_prefix(BENCH_USER_PREFIX)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            # The log, not the command line: that holds the join token.
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise SystemExit("kat-agent did not come up; its log ends:\n" + "\n".join(tail))
        time.sleep(0.1)


async def register(join_addr: str, ca: bytes, credential: str, i: int) -> tuple[str, bytes, bytes]:
    key = pki.generate_private_key()
    req = kat_pb2.JoinRequest(
        token=credential,
        csr_pem=pki.create_csr(key),
        advertise_address=f"127.0.{i // 250}.{i % 250 + 2}",
        hostname=f"sim-{i}",
        capacity=kat_pb2.NodeResources(cpu_millis=4000, memory_bytes=8 << 30),
    )
    opts = [("grpc.ssl_target_name_override", pki.JOIN_SERVER_NAME)]
    async with grpc.aio.secure_channel(join_addr, rpc.client_credentials(ca), options=opts) as ch:
        resp = await kat_pb2_grpc.AgentAPIStub(ch).Join(req, timeout=60)
    return resp.node.metadata.name, resp.certificate_pem, key


async def simulate(
    api: str,
    ca: bytes,
    nodes: list[tuple[str, bytes, bytes]],
    seconds: float,
    warmup: float,
    tick: float,
    live: list[int] | None = None,
) -> tuple[list[float], list[float]]:
    """Every node beats on its own stream until warm-up + seconds; `live[0]` counts the
    streams that have had an answer and are still open."""
    live = live if live is not None else [0]
    latencies: list[float] = []
    reopened: list[float] = []  # when a failed stream was opened again (s after start)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def agent(name: str, cert: bytes, key: bytes) -> None:
        creds = rpc.client_credentials(ca, cert, key)
        ch = grpc.aio.secure_channel(api, creds, options=rpc.api_channel_options())
        stub = kat_pb2_grpc.AgentAPIStub(ch)
        req = kat_pb2.HeartbeatRequest(
            node_name=name,
            capacity=kat_pb2.NodeResources(cpu_millis=4000, memory_bytes=8 << 30),
            allocatable=kat_pb2.NodeResources(cpu_millis=3900, memory_bytes=7 << 30),
            labels={"sim": "true"},
        )
        await asyncio.sleep(random.random() * tick)
        try:
            while loop.time() - start < warmup + seconds:
                # Open again after a failure, as the agent does: in the connect storm of
                # a thousand TLS handshakes some time out ("before receiving SETTINGS").
                stream = stub.Heartbeats()  # what kat-agent uses: one stream per agent
                counted = False
                try:
                    while (now := loop.time()) - start < warmup + seconds:
                        t0 = time.perf_counter()
                        await stream.write(req)
                        await stream.read()
                        if not counted:
                            counted = True
                            live[0] += 1
                        if now - start >= warmup:
                            latencies.append(time.perf_counter() - t0)
                        await asyncio.sleep(max(0.0, tick - (loop.time() - now)))
                except grpc.aio.AioRpcError as err:
                    # CANCELLED: the leader ended the stream (e.g. it counted a node
                    # that registered long before its first beat as lost).
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                        raise
                    reopened.append(loop.time() - start)
                    await asyncio.sleep(0.5 + random.random())
                finally:
                    if counted:
                        live[0] -= 1
                    stream.cancel()
        finally:
            await ch.close()

    async with asyncio.TaskGroup() as tg:
        for n in nodes:
            tg.create_task(agent(*n))
    return latencies, reopened


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=8)
    ap.add_argument("--tick", type=int, default=1)
    a = ap.parse_args()
    if not shutil.which("etcd") or not shutil.which("kat-agent"):
        raise SystemExit("needs etcd and kat-agent on PATH (scripts/setup.sh)")
    tmp = Path(tempfile.mkdtemp(prefix="kat-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        spec = "\n".join(f"  {k}: {v}" for k, v in PORTS.items())
        (tmp / "cluster.kat").write_text(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\n"
            f"metadata: {{name: bench}}\nspec:\n{spec}\n  nodeSubnetBits: 10\n"
            f"  agentTickSeconds: {a.tick}\n  nodeLossTimeoutSeconds: 30\n"
        )
        data = tmp / "leader"
        log = open(tmp / "leader.log", "wb")
        leader = subprocess.Popen(
            [
                "kat-agent",
                "init",
                "--config",
                str(tmp / "cluster.kat"),
                "--data-dir",
                str(data),
                "--advertise-address",
                "127.0.0.1",
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=agent_env(),
        )
        procs.append(leader)
        wait_for(data / "admin.katconfig", leader, tmp / "leader.log")
        ctx = clientconfig.load(data / "admin.katconfig").context()
        ca = ctx.ca
        # a real token, created through the API like `katcall token create`
        creds = rpc.client_credentials(ca, ctx.cert, ctx.key)
        deadline = time.monotonic() + 60
        with grpc.secure_channel(ctx.endpoints[0], creds, rpc.api_channel_options()) as ch:
            while True:  # the API answers UNAVAILABLE until the election is won
                try:
                    created = kat_pb2_grpc.ClusterAPIStub(ch).CreateToken(
                        # the simulated nodes join from 127.0.0.1 with other addresses
                        kat_pb2.CreateTokenRequest(approved_addresses=["127.0.0.0/8"]),
                        timeout=10,
                    )
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        token = created.join_token
        credential = tokens.parse(token).credential

        # one real joined agent, left idle, for its memory figure
        agent_log = open(tmp / "agent.log", "wb")
        agent = subprocess.Popen(
            [
                "kat-agent",
                "join",
                "--leader",
                "127.0.0.1:19115",
                "--token",
                token,
                "--data-dir",
                str(tmp / "agent"),
                # its own address (the leader has 127.0.0.1, the simulated nodes 127.0.x.y): a join
                # that takes another node's address is refused
                "--advertise-address",
                "127.1.0.1",
                "--log-level",
                "warning",
            ],
            stdout=agent_log,
            stderr=agent_log,
            start_new_session=True,
            env=agent_env(),
        )
        procs.append(agent)
        wait_for(tmp / "agent" / "agent" / "node.json", agent, tmp / "agent.log")

        idle_leader_rss = rss_mb(leader.pid)
        join_addr = f"127.0.0.1:{PORTS['joinPort']}"

        async def register_all() -> list[tuple[str, bytes, bytes]]:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> tuple[str, bytes, bytes]:
                async with sem:
                    return await register(join_addr, ca, credential, i)

            return list(await asyncio.gather(*(one(i) for i in range(a.agents))))

        t0 = time.perf_counter()
        nodes = asyncio.run(register_all())
        print(
            f"registered {len(nodes)} simulated agents through Join "
            f"in {time.perf_counter() - t0:.1f} s"
        )

        live = [0]
        at_end: dict[str, float] = {}

        async def run() -> tuple[list[float], list[float]]:
            async def mark() -> None:
                # Measuring points, not synchronisation: CPU over the window, and RSS and
                # open streams one second before its end, while every node is connected
                # (after the window the nodes hang up, and RSS then says nothing).
                await asyncio.sleep(a.warmup)
                cpu0, wall0 = cpu_seconds(leader.pid), time.monotonic()
                await asyncio.sleep(max(0.0, a.seconds - 1))
                at_end["cpu"] = (cpu_seconds(leader.pid) - cpu0) / (time.monotonic() - wall0)
                at_end["rss"] = rss_mb(leader.pid)
                at_end["live"] = live[0]

            marker = asyncio.create_task(mark())
            got = await simulate(ctx.endpoints[0], ca, nodes, a.seconds, a.warmup, a.tick, live)
            await marker
            return got

        lat, reopened = asyncio.run(run())
        cpu = at_end["cpu"]
        lat.sort()
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        rate = len(lat) / a.seconds
        print(
            f"heartbeats: {a.agents} agents, tick {a.tick}s, {rate:.0f}/s over {a.seconds:.0f}s: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (target < 50 ms)"
        )
        late = sum(1 for t in reopened if t >= a.warmup)
        print(
            f"heartbeat streams opened again after a failure: {len(reopened)} "
            f"({late} after the warm-up)"
        )
        print(f"leader CPU (kat-agent process, not etcd): {cpu:.2f} cores (target < 1)")
        print(
            f"leader RSS (kat-agent without etcd) with {a.agents + 2} nodes, "
            f"{at_end['live']:.0f} of {a.agents} simulated streams open: "
            f"{at_end['rss']:.1f} MB (target < 150 MB)"
        )
        print(f"idle leader RSS (kat-agent without etcd), 2 nodes: {idle_leader_rss:.1f} MB")
        print(f"idle joined agent RSS: {rss_mb(agent.pid):.1f} MB (target < 60 MB)")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
        remove_bench_users()


if __name__ == "__main__":
    sys.exit(main())
