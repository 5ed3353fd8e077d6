"""The NodeAgent service every agent serves on `<advertise address>:<agentPort>` (mTLS
with the node's certificate): logs, exec and status of this node's instances, for the
leader only. A caller must present a `kat:node` certificate whose common name is the
node the last heartbeat answer named as leader (`agent.leader_node`); the leader relays
`katcall logs/exec` here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.security import rpc
from internal.security.certfiles import KeyPairFile
from kat_agent.node.instances import NodeRuntime
from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind
from kat_agent.node.podman.runtime import RuntimeBackend
from kat_agent.node.stats import instance_stats

log = logging.getLogger(__name__)

MAX_EXEC_QUEUE = 64


class NodeAgentService(kat_pb2_grpc.NodeAgentServicer):
    def __init__(
        self,
        runtime: NodeRuntime,
        leader_node: Callable[[], str],
        status: Callable[[], kat_pb2.HeartbeatRequest],
    ) -> None:
        self.runtime = runtime
        self.leader_node = leader_node
        self.status = status

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        cn = await rpc.require_role(context, rpc.ROLE_NODE)
        leader = self.leader_node()
        if not leader or cn != leader:
            who = f"the leader ({leader})" if leader else "the leader (not known yet)"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"only {who} may use this node's agent API; {cn!r} is not the leader",
            )

    async def _targets(
        self, context: grpc.aio.ServicerContext, namespace: str, workload: str, instance_id: str
    ) -> list[tuple[str, RuntimeBackend, str]]:
        if not (instance_id or workload):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "name an instance_id or a workload"
            )
        found = self.runtime.find(namespace, workload, instance_id)
        if not found:
            what = f"instance {instance_id}" if instance_id else f"workload {namespace}/{workload}"
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{what} has no container on node {self.runtime.settings.node_name}",
            )
        return [(st.id, backend, cid) for st, backend, cid in found]

    async def Status(
        self, request: kat_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> kat_pb2.HeartbeatRequest:
        await self._authorize(context)
        return self.status()

    async def Stats(
        self, request: kat_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.StatsResponse:
        await self._authorize(context)
        items = await instance_stats(list(self.runtime.states.values()), request.namespace)
        for item in items:
            item.node = self.runtime.settings.node_name
        return kat_pb2.StatsResponse(items=items)

    async def Logs(
        self, request: kat_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kat_pb2.LogChunk]:
        await self._authorize(context)
        tail = request.tail if request.tail > 0 else None
        since = time.time() - request.since_seconds if request.since_seconds > 0 else None
        if request.previous:  # kept by the node at the last restart; never followed
            for chunk in await self._previous(context, request, tail, since):
                yield chunk
            return
        targets = await self._targets(
            context, request.namespace, request.workload, request.instance_id
        )

        def frames(
            backend: RuntimeBackend, cid: str, follow: bool
        ) -> AsyncIterator[tuple[int, bytes]]:
            return backend.runtime.log_frames(
                cid, follow=follow, tail=tail, since=since, timestamps=request.timestamps
            )

        try:
            if not request.follow or len(targets) == 1:
                for iid, backend, cid in targets:
                    async for stream, data in frames(backend, cid, request.follow):
                        yield kat_pb2.LogChunk(instance_id=iid, data=data, stderr=stream == 2)
                return
            # Following several instances: interleave as lines come.
            queue: asyncio.Queue[kat_pb2.LogChunk | None] = asyncio.Queue(256)

            async def pump(iid: str, backend: RuntimeBackend, cid: str) -> None:
                try:
                    async for stream, data in frames(backend, cid, True):
                        chunk = kat_pb2.LogChunk(instance_id=iid, data=data, stderr=stream == 2)
                        await queue.put(chunk)
                finally:
                    await queue.put(None)

            tasks = [asyncio.create_task(pump(*t)) for t in targets]
            try:
                left = len(tasks)
                while left:
                    item = await queue.get()
                    if item is None:
                        left -= 1
                        continue
                    yield item
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for t in tasks:
                    if not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        except ContainerRuntimeError as exc:
            code = (
                grpc.StatusCode.NOT_FOUND
                if exc.kind is ErrorKind.NOT_FOUND
                else grpc.StatusCode.UNAVAILABLE
            )
            await context.abort(code, str(exc))

    async def _previous(
        self,
        context: grpc.aio.ServicerContext,
        request: kat_pb2.LogsRequest,
        tail: int | None,
        since: float | None,
    ) -> list[kat_pb2.LogChunk]:
        """The kept log of each matching instance's previous container. An instance need
        not have a container now (one crash-looping between restarts has none)."""
        if request.instance_id:
            ids = [request.instance_id]
        else:
            ids = sorted(
                st.id
                for st in self.runtime.states.values()
                if st.workload == request.workload
                and (not request.namespace or st.namespace == request.namespace)
            )
        out: list[kat_pb2.LogChunk] = []
        for iid in ids:
            lines = self.runtime.previous_logs.read(
                iid, tail=tail, since=since, timestamps=request.timestamps
            )
            if lines is not None:
                out += [kat_pb2.LogChunk(instance_id=iid, data=d, stderr=s == 2) for s, d in lines]
        if not out:
            # (the leader puts "node NAME: " in front)
            what = f"instance {ids[0]} has no" if len(ids) == 1 else "no instance here has a"
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{what} previous container: not restarted since it was placed on this node",
            )
        return out

    async def Exec(
        self,
        request_iterator: AsyncIterator[kat_pb2.ExecRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[kat_pb2.ExecResponse]:
        await self._authorize(context)
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.command:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the command"
            )
        assert first is not None
        targets = await self._targets(context, first.namespace, first.workload, first.instance_id)
        if len(targets) > 1:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"workload {first.namespace}/{first.workload} has {len(targets)} instances "
                "on this node: name one with instance_id",
            )
        _, backend, cid = targets[0]

        sizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

        def resize(msg: kat_pb2.ExecRequest) -> None:
            if msg.rows and msg.cols:  # latest size wins: drop any not applied yet
                while not sizes.empty():
                    sizes.get_nowait()
                sizes.put_nowait((msg.rows, msg.cols))

        async def stdin() -> AsyncIterator[bytes]:
            resize(first)
            if first.stdin:
                yield first.stdin
            async for msg in request_iterator:
                resize(msg)
                if msg.stdin:
                    yield msg.stdin

        out: asyncio.Queue[kat_pb2.ExecResponse | None] = asyncio.Queue(MAX_EXEC_QUEUE)

        async def on_output(stream: int, data: bytes) -> None:
            msg = kat_pb2.ExecResponse(stderr=data) if stream == 2 else None
            await out.put(msg or kat_pb2.ExecResponse(stdout=data))

        async def run() -> int:
            try:
                return await backend.runtime.exec_stream(
                    cid,
                    list(first.command),
                    on_output,
                    stdin=stdin(),
                    tty=first.tty,
                    sizes=sizes if first.tty else None,
                )
            finally:
                await out.put(None)

        task = asyncio.create_task(run())
        try:
            while (item := await out.get()) is not None:
                yield item
            code = await task
        except ContainerRuntimeError as exc:
            status = {
                ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
                ErrorKind.NOT_RUNNING: grpc.StatusCode.FAILED_PRECONDITION,
            }.get(exc.kind, grpc.StatusCode.UNAVAILABLE)
            await context.abort(status, str(exc))
            return
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        yield kat_pb2.ExecResponse(exited=True, exit_code=code)


async def start_node_api(
    service: NodeAgentService,
    address: str,
    cert: bytes,
    key: bytes,
    ca: bytes,
    *,
    pair: KeyPairFile | None = None,
) -> grpc.aio.Server:
    """Serve NodeAgent on `address` (host:port) with mTLS; returns the started server.
    With `pair`, the certificate follows its files (renewal without restart)."""
    server = grpc.aio.server(options=rpc.SERVER_OPTIONS)
    kat_pb2_grpc.add_NodeAgentServicer_to_server(service, server)
    creds = pair.server_credentials(ca) if pair else rpc.mtls_server_credentials(cert, key, ca)
    port = server.add_secure_port(address, creds)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    log.info("NodeAgent API serving on %s", address)
    return server
