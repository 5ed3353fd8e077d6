"""Memory the leader grows by under a flood of made-up joins on its certificate-
less join port: 20,000 joins with random 4 KB token ids, then three with 10 MB
ones (issue 10 asks for under 40 MB), and whether it still serves afterwards.

    python3 benchmarks/bench_join_flood.py [--joins 20000]

Brings up a 1-node dev cluster (scripts/dev-cluster, its own network namespace
and subnet: traffic goes only there) and reads the leader agent's VmRSS from
/proc before and after. scripts/probe-security uses flood() on a running cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.v1alpha1 import kat_pb2, kat_pb2_grpc  # noqa: E402
from benchmarks.bench_heartbeats import rss_mb  # noqa: E402
from internal.security import pki  # noqa: E402


async def _flood(target: str, ca: bytes, joins: int, big: int, concurrency: int) -> dict:
    opts = [
        ("grpc.ssl_target_name_override", pki.JOIN_SERVER_NAME),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    codes: dict[str, int] = {}
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca), opts) as ch:
        stub = kat_pb2_grpc.AgentAPIStub(ch)

        async def one(size: int) -> None:
            ident = "".join(secrets.choice(alphabet) for _ in range(min(size, 64)))
            ident = (ident * (size // len(ident) + 1))[:size]
            req = kat_pb2.JoinRequest(token=f"{ident}.{'s' * 32}", advertise_address="10.0.0.9")
            try:
                await stub.Join(req, timeout=30)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.aio.AioRpcError as err:
                codes[err.code().name] = codes.get(err.code().name, 0) + 1

        sem = asyncio.Semaphore(concurrency)

        async def limited(size: int) -> None:
            async with sem:
                await one(size)

        async with asyncio.TaskGroup() as tg:
            for _ in range(joins):
                tg.create_task(limited(4096))
        for _ in range(big):
            await one(10 << 20)
    return codes


def flood(target: str, ca: bytes, joins: int = 20_000, big: int = 3, concurrency: int = 32) -> dict:
    """Send the made-up joins; the answer codes and how many of each."""
    return asyncio.run(_flood(target, ca, joins, big, concurrency))


def main() -> int:
    from tests.devcluster import DevCluster

    ap = argparse.ArgumentParser()
    ap.add_argument("--joins", type=int, default=20_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kat-joinflood-") as tmp:
        with DevCluster(1, Path(tmp) / "c") as c:
            n1 = c.node("node1")
            ca = Path(n1["data_dir"], "pki", "ca.crt").read_bytes()
            target = f"{n1['address']}:9117"
            before = rss_mb(n1["pid"])
            t0 = time.monotonic()
            codes = flood(target, ca, a.joins)
            took = time.monotonic() - t0
            time.sleep(2)  # let gRPC free the last calls' buffers
            after = rss_mb(n1["pid"])
            serving = c.katcall("get", "nodes", timeout=20).returncode == 0
    print(f"{a.joins} joins with random 4 KB ids + 3 with 10 MB ids in {took:.1f} s: {codes}")
    print(
        f"leader agent RSS {before:.1f} MB -> {after:.1f} MB (grew {after - before:+.1f} MB); "
        f"still serving: {serving}"
    )
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
