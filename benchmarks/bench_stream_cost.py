"""What one streamed message costs a grpc.aio server over mTLS, apart from KAT's code.

    python3 benchmarks/bench_stream_cost.py [--streams 1000] [--messages 20000] [--workers 2]

The floor under bench_scale's leader CPU per placement (issue 14): with 100 replicas spread
over 1,000 nodes, every placed instance is one message on its own node's stream, so the
leader can place no faster than its gRPC layer can send messages. A bare grpc.aio server
(KAT's SERVER_OPTIONS and mTLS credentials) in a process of its own has one
server-streaming method whose handler writes what a queue gives it (`context.write`, as
KAT's stream writer does); `--streams` connections from `--workers` client processes each
hold one stream. The server then sends `--messages` messages, each an AssignmentSet delta
with one assignment (about 200 bytes, as in bench_scale), to one stream after another,
with every stream's writes in flight at once as in the leader. It prints the server
process's CPU seconds (all threads) per message and the rate.

Last line: `server_cpu_us_per_message=N messages_per_second=M`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

from api.v1alpha1 import kat_pb2  # noqa: E402
from benchmarks.bench_conn_memory import _make_pki  # noqa: E402
from internal.security import rpc  # noqa: E402

SERVICE, METHOD = "bench.Stream", "Watch"
_CTX = mp.get_context("spawn")


def message(i: int) -> kat_pb2.AssignmentSet:
    inst = kat_pb2.Instance(
        id=f"default.web-{i}.abcde", workload=f"web-{i // 100}", namespace="default",
        node=f"node-{i % 1000}", generation=1, phase=kat_pb2.Instance.SCHEDULED,
    )  # fmt: skip
    return kat_pb2.AssignmentSet(
        revision=i + 2, delta=True, base_revision=i + 1,
        assignments=[kat_pb2.Assignment(instance=inst)],
    )  # fmt: skip


def _serve(d: Path, port: Any, streams: int, messages: int, result: Any) -> None:
    async def main() -> None:
        queues: list[asyncio.Queue[kat_pb2.AssignmentSet | None]] = []
        all_open = asyncio.Event()

        async def watch(_request: bytes, context: grpc.aio.ServicerContext) -> None:
            q: asyncio.Queue[kat_pb2.AssignmentSet | None] = asyncio.Queue()
            queues.append(q)
            if len(queues) == streams:
                all_open.set()
            while (item := await q.get()) is not None:
                await context.write(item)
                q.task_done()

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.unary_stream_rpc_method_handler(
                    watch, response_serializer=kat_pb2.AssignmentSet.SerializeToString
                )
            },
        )
        server = grpc.aio.server(options=rpc.SERVER_OPTIONS)
        server.add_generic_rpc_handlers((handler,))
        creds = rpc.mtls_server_credentials(
            (d / "server.crt").read_bytes(), (d / "server.key").read_bytes(),
            (d / "ca.crt").read_bytes(),
        )  # fmt: skip
        port.value = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        await all_open.wait()
        await asyncio.sleep(1.0)  # the connect storm's handshakes are over (not measured)
        msgs = [message(i) for i in range(messages)]
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i, m in enumerate(msgs):
            queues[i % streams].put_nowait(m)
        await asyncio.gather(*(q.join() for q in queues))  # every write returned
        result[0] = time.process_time() - cpu0
        result[1] = time.perf_counter() - t0
        for q in queues:
            q.put_nowait(None)
        await server.stop(1)

    asyncio.run(main())


def _clients(d: Path, port: int, n: int, received: Any, index: int, stop: Any) -> None:
    async def main() -> None:
        creds = grpc.ssl_channel_credentials(
            (d / "ca.crt").read_bytes(), (d / "client.key").read_bytes(),
            (d / "client.crt").read_bytes(),
        )  # fmt: skip

        async def one(i: int) -> None:
            opts = [("grpc.ssl_target_name_override", "127.0.0.1"), ("bench.conn", i)]
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, opts) as ch:
                call = ch.unary_stream(
                    f"/{SERVICE}/{METHOD}", response_deserializer=kat_pb2.AssignmentSet.FromString
                )(b"")
                try:
                    async for _ in call:
                        received[index] += 1
                except grpc.aio.AioRpcError:
                    pass

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.to_thread(stop.wait)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kat-streamcost-") as tmp:
        d = Path(tmp)
        _make_pki(d)
        port = _CTX.Value("i", 0)
        result = _CTX.Array("d", 2)
        received = _CTX.Array("q", a.workers, lock=False)
        stop = _CTX.Event()
        server = _CTX.Process(target=_serve, args=(d, port, a.streams, a.messages, result))
        server.start()
        clients: list[Any] = []
        try:
            deadline = time.monotonic() + 60
            while port.value == 0:
                if time.monotonic() > deadline or not server.is_alive():
                    raise SystemExit("the server did not start")
                time.sleep(0.05)
            for w in range(a.workers):
                n = len(range(w, a.streams, a.workers))
                p = _CTX.Process(target=_clients, args=(d, port.value, n, received, w, stop))
                p.start()
                clients.append(p)
            deadline = time.monotonic() + 600
            while sum(received) < a.messages:
                if time.monotonic() > deadline or not server.is_alive() and result[1] == 0:
                    raise SystemExit(f"only {sum(received)} of {a.messages} messages arrived")
                time.sleep(0.05)
            server.join(30)
        finally:
            stop.set()
            for p in [*clients, server]:
                p.join(10)
                if p.is_alive():
                    p.kill()
        cpu, wall = result[0], result[1]
    print(
        f"{a.messages} messages over {a.streams} mTLS streams: server CPU {cpu:.2f} s "
        f"({cpu / a.messages * 1e6:.0f} us per message), written in {wall:.2f} s"
    )
    print(
        f"server_cpu_us_per_message={cpu / a.messages * 1e6:.0f} "
        f"messages_per_second={a.messages / wall:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
