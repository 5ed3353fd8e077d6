"""What one connected node costs a gRPC server in memory, apart from KAT's own code.

    python3 benchmarks/bench_conn_memory.py [--connections 300]

A bare grpc.aio server (KAT's SERVER_OPTIONS, KAT's mTLS credentials, one trivial
bidirectional streaming method) in a process of its own; another process opens
`--connections` connections (each its own channel), then holds 0, 1 or 2 open streams
on each. The server's RSS before and after, divided by the connections, is the cost per
connection of gRPC's C core, BoringSSL and grpc.aio's per-call objects, with no KAT
handler code at all: the floor under bench_scale's `leader_rss_mb` (issue 14). The same
without TLS shows TLS's share.

Last line: `mtls_conn_kb=A stream_kb=B plaintext_conn_kb=C`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

from internal.security import pki, rpc  # noqa: E402

METHOD = "/bench.Conn/Stream"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _make_pki(d: Path) -> None:
    ca = pki.create_ca("bench-ca")
    server = pki.issue_serving_certificate(
        ca.cert_pem, ca.key_pem, node_name="bench", advertise_ip="127.0.0.1"
    )
    client = pki.issue_certificate(ca.cert_pem, ca.key_pem, common_name="node", role=pki.ROLE_ADMIN)
    pki.write_pair(d / "ca.crt", d / "ca.key", ca)
    pki.write_pair(d / "server.crt", d / "server.key", server)
    pki.write_pair(d / "client.crt", d / "client.key", client)


async def _serve(port: int, d: Path, tls: bool) -> None:
    async def stream(requests, context):  # type: ignore[no-untyped-def]
        async for _ in requests:
            pass
        return
        yield  # a generator handler, like KAT's streams

    handler = grpc.method_handlers_generic_handler(
        "bench.Conn", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server(options=rpc.SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    if tls:
        creds = rpc.mtls_server_credentials(
            (d / "server.crt").read_bytes(),
            (d / "server.key").read_bytes(),
            (d / "ca.crt").read_bytes(),
        )
        server.add_secure_port(f"127.0.0.1:{port}", creds)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


async def _connect(port: int, d: Path, tls: bool, n: int, streams: int) -> None:
    creds = grpc.ssl_channel_credentials(
        (d / "ca.crt").read_bytes(),
        (d / "client.key").read_bytes(),
        (d / "client.crt").read_bytes(),
    )
    held = []
    for i in range(n):
        # a distinct channel argument: a connection of its own, not a shared subchannel
        opts = [("grpc.ssl_target_name_override", "127.0.0.1"), ("bench.conn", i)]
        ch = (
            grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts)
            if tls
            else grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts[1:])
        )
        await ch.channel_ready()
        held.append(ch)
        for _ in range(streams):
            call = ch.stream_stream(METHOD)()
            await call.write(b"x" * 100)
            held.append(call)
    print("CONNECTED", flush=True)
    await asyncio.sleep(3600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(d: Path, tls: bool, n: int, streams: int) -> float:
    """KB of server RSS per connection holding `streams` streams."""
    port = _free_port()
    me = [sys.executable, __file__]
    flag = "tls" if tls else "plain"
    srv = subprocess.Popen(
        [*me, "serve", str(port), str(d), flag], stdout=subprocess.PIPE, text=True
    )
    cl = None
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "READY"
        time.sleep(1.0)  # the server's own start-up settles (measuring, not synchronising)
        before = _rss_kb(srv.pid)
        args = [*me, "connect", str(port), str(d), flag, str(n), str(streams)]
        cl = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert cl.stdout is not None and cl.stdout.readline().strip() == "CONNECTED"
        time.sleep(2.0)
        return (_rss_kb(srv.pid) - before) / n
    finally:
        for p in (cl, srv):
            if p is not None:
                p.kill()
                p.wait()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve", "connect"):
        port, d, tls = int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "tls"
        if sys.argv[1] == "serve":
            asyncio.run(_serve(port, d, tls))
        else:
            asyncio.run(_connect(port, d, tls, int(sys.argv[5]), int(sys.argv[6])))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=300)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kat-connmem-") as tmp:
        d = Path(tmp)
        _make_pki(d)
        got = {}
        for tls, streams in ((False, 0), (True, 0), (True, 1), (True, 2)):
            kb = measure(d, tls, a.connections, streams)
            got[(tls, streams)] = kb
            print(
                f"{'mTLS' if tls else 'plaintext'} connection with {streams} open stream(s): "
                f"{kb:.1f} KB of server RSS each ({a.connections} connections)",
                flush=True,
            )
    stream = (got[(True, 2)] - got[(True, 0)]) / 2
    print(json.dumps({"grpc": grpc.__version__, "load": os.getloadavg()[0]}))
    print(
        f"mtls_conn_kb={got[(True, 0)]:.0f} stream_kb={stream:.0f} "
        f"plaintext_conn_kb={got[(False, 0)]:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
