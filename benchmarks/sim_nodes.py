"""Simulated nodes for bench_scale.py, in worker processes of their own.

Each simulated node holds what a real agent holds on the leader: a `Heartbeats` stream
(beating every tick, opened again when it fails) and a `WatchAssignments` stream with
deltas (opened again when it fails). They run in `--workers` processes beside the bench,
so that the Apply client, whose latency is part of what is measured, does not wait behind
a thousand streams on one event loop; what they saw is shared through `SharedCounts`.

A node here keeps only the ids of its assignments: it checks that every delta is based on
the revision it has (as kat_agent/node/assignments.py does) and counts the instances. The
real agent also rebuilds the full set, peers included (about 1 ms per message with 1,000
peers); that cost belongs to 1,000 separate machines, not to the leader's.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.v1alpha1 import kat_pb2, kat_pb2_grpc  # noqa: E402
from internal.security import rpc  # noqa: E402

Node = tuple[str, bytes, bytes]  # name, certificate, key

_CTX = mp.get_context("spawn")  # the bench holds gRPC channels: never fork them


@dataclass
class SharedCounts:
    """What the simulated nodes saw, readable from the bench process."""

    nodes: int
    workers: int
    # per node: how many assignments its stream last said (-1: no snapshot yet)
    per_node: Any = None
    messages: Any = None  # per worker
    bytes: Any = None  # per worker
    errors: Any = None  # a queue of error names (stream failures, out-of-sync deltas)
    stop: Any = None
    _errors_seen: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.per_node is None:
            self.per_node = _CTX.Array("i", [-1] * self.nodes, lock=False)
            self.messages = _CTX.Array("q", self.workers, lock=False)
            self.bytes = _CTX.Array("q", self.workers, lock=False)
            self.errors = _CTX.Queue()
            self.stop = _CTX.Event()

    def total(self) -> int:
        return sum(c for c in self.per_node if c > 0)

    def opened(self) -> int:
        return sum(1 for c in self.per_node if c >= 0)

    def message_count(self) -> int:
        return sum(self.messages)

    def byte_count(self) -> int:
        return sum(self.bytes)

    def error_counts(self) -> dict[str, int]:
        while True:
            try:
                name = self.errors.get_nowait()
            except queue.Empty:
                return dict(self._errors_seen)
            self._errors_seen[name] = self._errors_seen.get(name, 0) + 1


def start(
    api: str, ca: bytes, nodes: list[Node], tick: float, workers: int
) -> tuple[SharedCounts, list[Any]]:
    """Start the simulated nodes in `workers` processes; stop with `stop`."""
    shared = SharedCounts(len(nodes), workers)
    procs = []
    for w in range(workers):
        chunk = [(i, nodes[i]) for i in range(w, len(nodes), workers)]
        p = _CTX.Process(
            target=_worker,
            args=(w, api, ca, chunk, tick, shared.per_node, shared.messages, shared.bytes)
            + (shared.errors, shared.stop),
            daemon=True,
        )
        p.start()
        procs.append(p)
    return shared, procs


def stop(shared: SharedCounts, procs: list[Any]) -> None:
    shared.stop.set()
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()


def _worker(
    index: int,
    api: str,
    ca: bytes,
    chunk: list[tuple[int, Node]],
    tick: float,
    per_node: Any,
    messages: Any,
    nbytes: Any,
    errors: Any,
    stop_event: Any,
) -> None:
    async def main() -> None:
        stop = asyncio.Event()

        async def watch_stop() -> None:
            await asyncio.to_thread(stop_event.wait)
            stop.set()

        def error(name: str) -> None:
            errors.put(name)

        async def node(i: int, n: Node) -> None:
            name, cert, key = n
            creds = rpc.client_credentials(ca, cert, key)
            async with grpc.aio.secure_channel(api, creds, rpc.api_channel_options()) as ch:
                stub = kat_pb2_grpc.AgentAPIStub(ch)
                tasks = [
                    asyncio.create_task(_heartbeat(stub, name, tick, stop, error)),
                    asyncio.create_task(_follow(stub, name, i, stop, error, counts)),
                ]
                await stop.wait()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        counts = _Counts(per_node, messages, nbytes, index)
        watcher = asyncio.create_task(watch_stop())
        await asyncio.gather(*(node(i, n) for i, n in chunk))
        watcher.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


@dataclass
class _Counts:
    per_node: Any
    messages: Any
    nbytes: Any
    worker: int


async def _heartbeat(
    stub: kat_pb2_grpc.AgentAPIStub, name: str, tick: float, stop: asyncio.Event, error: Any
) -> None:
    # What kat_agent/node/agent.py does: beat every tick, and open the stream again when
    # it fails (a failed TLS handshake in the connect storm).
    beat = kat_pb2.HeartbeatRequest(
        node_name=name,
        capacity=kat_pb2.NodeResources(cpu_millis=64000, memory_bytes=64 << 30),
        allocatable=kat_pb2.NodeResources(cpu_millis=64000, memory_bytes=64 << 30),
    )
    while not stop.is_set():
        beats = stub.Heartbeats()
        try:
            while not stop.is_set():
                await beats.write(beat)
                await beats.read()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick)
        except grpc.aio.AioRpcError as err:
            if stop.is_set():
                return
            error(f"heartbeats {err.code().name}")
            await asyncio.sleep(0.5)
        finally:
            beats.cancel()


async def _follow(
    stub: kat_pb2_grpc.AgentAPIStub,
    name: str,
    i: int,
    stop: asyncio.Event,
    error: Any,
    counts: _Counts,
) -> None:
    # What kat_agent/node/assignments.py does with deltas, on ids only: each stream starts
    # with a full snapshot, every delta must be based on the revision held.
    request = kat_pb2.AssignmentsRequest(node_name=name, accept_deltas=True)
    while not stop.is_set():
        watch = stub.WatchAssignments(request)
        ids: set[str] = set()
        revision = None
        try:
            async for update in watch:
                counts.messages[counts.worker] += 1
                counts.nbytes[counts.worker] += update.ByteSize()
                if not update.delta:
                    ids = {a.instance.id for a in update.assignments}
                elif update.base_revision != revision:
                    error("delta out of sync")
                    break
                else:
                    ids.difference_update(update.removed)
                    ids.update(a.instance.id for a in update.assignments)
                revision = update.revision
                counts.per_node[i] = len(ids)
        except grpc.aio.AioRpcError as err:
            if stop.is_set():
                return
            error(f"{err.code().name}: {err.details()}")
            await asyncio.sleep(0.5)
        finally:
            watch.cancel()
