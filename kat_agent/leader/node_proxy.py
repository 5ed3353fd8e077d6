"""The ClusterAPI calls proxied to the node that runs an instance: logs (merged across
instances when followed) and exec. A mixin of `cluster_api.ClusterAPI` (it sets `lc`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.manifests.defaults import DEFAULT_NAMESPACE, object_ref
from internal.security import rpc
from kat_agent.leader.guards import admin_stream

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

_LOGS_TIMEOUT = 60.0  # a non-follow logs call through the leader
_Ctx = grpc.aio.ServicerContext


class NodeProxyAPI:
    """Logs and Exec of the ClusterAPI; `ClusterAPI` inherits them."""

    lc: LeaderContext
    _node_channels: dict[str, grpc.aio.Channel]  # by agent address (set by ClusterAPI)
    _node_channels_version: int

    def _agent_stub(self, inst: kat_pb2.Instance) -> tuple[kat_pb2_grpc.NodeAgentStub, str]:
        node = self.lc.registry.get(inst.node)
        if node is None or not node.status.advertise_address:
            raise LookupError(f"node {inst.node!r} of instance {inst.id} is not known")
        port = node.status.agent_port or self.lc.spec.agent_port
        target = f"{node.status.advertise_address}:{port}"
        channels = self._node_channels
        cert, key = self.lc.node_cert, self.lc.node_key
        pair = self.lc.node_pair
        if pair is not None:
            pair.refresh()
            if pair.version != self._node_channels_version:  # renewed: new channels
                for old in channels.values():
                    asyncio.get_running_loop().create_task(old.close(grace=30))
                channels.clear()
                self._node_channels_version = pair.version
            cert, key = pair.cert, pair.key
        channel = channels.get(target)
        if channel is None:
            creds = rpc.client_credentials(self.lc.ca_cert, cert, key)
            channel = grpc.aio.secure_channel(target, creds, options=rpc.KEEPALIVE_OPTIONS)
            channels[target] = channel
        return kat_pb2_grpc.NodeAgentStub(channel), target

    async def _targets(
        self, namespace: str, workload: str, instance_id: str, context: _Ctx
    ) -> list[kat_pb2.Instance]:
        ns = namespace or DEFAULT_NAMESPACE
        if not workload:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a workload name is required")
        insts = [
            v.msg
            for v in await self.lc.store.list_instances(ns, workload)
            if v.msg.node and v.msg.phase != kat_pb2.Instance.PENDING
        ]
        if instance_id:
            insts = [i for i in insts if i.id == instance_id]
            if not insts:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"instance {instance_id} of {object_ref(ns, workload)} not found or not placed",
                )
        elif not insts:
            exists = await self.lc.store.get_workload(ns, workload) is not None
            await context.abort(
                grpc.StatusCode.NOT_FOUND if not exists else grpc.StatusCode.FAILED_PRECONDITION,
                f"workload {object_ref(ns, workload)} "
                + ("has no instance on a node yet" if exists else "not found"),
            )
        return sorted(insts, key=lambda i: i.id)

    async def _node_logs(
        self, inst: kat_pb2.Instance, request: kat_pb2.LogsRequest
    ) -> AsyncIterator[kat_pb2.LogChunk]:
        stub, target = self._agent_stub(inst)
        # The node answers the same request, narrowed to this one instance: every option
        # (follow, tail, since, timestamps, previous) passes through as the client set it.
        forward = kat_pb2.LogsRequest()
        forward.CopyFrom(request)
        forward.namespace, forward.workload, forward.instance_id = (
            inst.namespace,
            inst.workload,
            inst.id,
        )
        call = stub.Logs(forward, timeout=None if request.follow else _LOGS_TIMEOUT)
        try:
            async for chunk in call:
                if not chunk.instance_id:
                    chunk.instance_id = inst.id
                yield chunk
        finally:
            call.cancel()

    @admin_stream
    async def Logs(
        self, request: kat_pb2.LogsRequest, context: _Ctx
    ) -> AsyncIterator[kat_pb2.LogChunk]:
        insts = await self._targets(
            request.namespace, request.workload, request.instance_id, context
        )
        if len(insts) == 1 or not request.follow:
            for inst in insts:
                try:
                    async for chunk in self._node_logs(inst, request):
                        yield chunk
                except (grpc.aio.AioRpcError, LookupError) as exc:
                    if len(insts) == 1:
                        await self._abort_from_node(context, inst, exc)
                    yield _note(inst, exc)
            return
        # Several instances, followed: merge their streams as chunks arrive.
        queue: asyncio.Queue[kat_pb2.LogChunk | None] = asyncio.Queue(maxsize=256)

        async def pump(inst: kat_pb2.Instance) -> None:
            try:
                async for chunk in self._node_logs(inst, request):
                    await queue.put(chunk)
            except (grpc.aio.AioRpcError, LookupError) as exc:
                await queue.put(_note(inst, exc))
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(i)) for i in insts]
        try:
            open_streams = len(tasks)
            while open_streams:
                item = await queue.get()
                if item is None:
                    open_streams -= 1
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()

    async def _abort_from_node(
        self, context: _Ctx, inst: kat_pb2.Instance, exc: BaseException
    ) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            code = exc.code()
            details = exc.details() or code.name
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = f"cannot reach the agent: {details}"
            await context.abort(code, f"node {inst.node}: {details}")
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    @admin_stream
    async def Exec(
        self, request_iterator: AsyncIterator[kat_pb2.ExecRequest], context: _Ctx
    ) -> AsyncIterator[kat_pb2.ExecResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if not first.command:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a command is required")
        insts = await self._targets(first.namespace, first.workload, first.instance_id, context)
        running = [i for i in insts if i.phase == kat_pb2.Instance.RUNNING]
        if not first.instance_id and not running:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no RUNNING instance of {object_ref(first.namespace, first.workload)}",
            )
        inst = insts[0] if first.instance_id else running[0]
        try:
            stub, _ = self._agent_stub(inst)
        except LookupError as exc:
            await self._abort_from_node(context, inst, exc)
            raise AssertionError("unreachable") from None
        forward = kat_pb2.ExecRequest()
        forward.CopyFrom(first)
        forward.namespace, forward.workload = inst.namespace, inst.workload
        forward.instance_id = inst.id

        async def requests() -> AsyncIterator[kat_pb2.ExecRequest]:
            yield forward
            async for more in request_iterator:
                yield more

        call = stub.Exec(requests())
        try:
            async for resp in call:
                yield resp
        except grpc.aio.AioRpcError as exc:
            await self._abort_from_node(context, inst, exc)
        finally:
            call.cancel()


def _note(inst: kat_pb2.Instance, exc: BaseException) -> kat_pb2.LogChunk:
    if isinstance(exc, grpc.aio.AioRpcError):
        why = exc.details() or exc.code().name
    else:
        why = str(exc)
    text = f"[kat] logs of {inst.id} on node {inst.node} unavailable: {why}\n"
    return kat_pb2.LogChunk(instance_id=inst.id, data=text.encode(), stderr=True)
