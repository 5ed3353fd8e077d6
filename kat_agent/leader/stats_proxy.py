"""`katcall top` on the leader (a mixin of `cluster_api.ClusterAPI`): the instances' current
cpu and memory use, asked of every node that runs one (NodeAgent.Stats, the node's Podman
stats) at the same time. Nothing is stored: each call is a fresh sample. A node that does
not answer in time is named in `unreachable`; the others are still shown."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2
from kat_agent.leader.guards import admin

if TYPE_CHECKING:
    from api.v1alpha1 import kat_pb2_grpc
    from kat_agent.leader.context import LeaderContext

STATS_TIMEOUT = 15.0  # Podman samples cpu over about a second per container
_Ctx = grpc.aio.ServicerContext


class StatsProxyAPI:
    lc: LeaderContext

    async def _node_stats(self, node: str, namespace: str) -> kat_pb2.StatsResponse:
        stub: kat_pb2_grpc.NodeAgentStub
        stub, _ = self._agent_stub(kat_pb2.Instance(node=node))  # type: ignore[attr-defined]
        return await stub.Stats(kat_pb2.StatsRequest(namespace=namespace), timeout=STATS_TIMEOUT)

    @admin
    async def ListInstanceStats(
        self, request: kat_pb2.TopRequest, context: _Ctx
    ) -> kat_pb2.TopResponse:
        namespace = None if request.namespace == "*" else (request.namespace or "default")
        listed = await self.lc.store.list_instances(namespace, None, request.node or None)
        wanted = {
            v.msg.id: v.msg
            for v in listed
            if v.msg.node and v.msg.phase == kat_pb2.Instance.RUNNING and v.msg.container_id
        }
        nodes = sorted({i.node for i in wanted.values()})
        answers = await asyncio.gather(
            *(self._node_stats(n, namespace or "*") for n in nodes), return_exceptions=True
        )
        out = kat_pb2.TopResponse()
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, BaseException):
                if isinstance(answer, grpc.aio.AioRpcError):
                    why = f"{answer.code().name.lower()}: {answer.details()}"
                else:
                    why = str(answer) or type(answer).__name__
                out.unreachable.append(f"{node}: {why}")
                continue
            for item in answer.items:
                inst = wanted.get(item.instance_id)
                if inst is not None and inst.node == node:
                    item.namespace, item.workload, item.node = inst.namespace, inst.workload, node
                    out.instances.append(item)
        out.instances.sort(key=lambda s: (s.namespace, s.workload, s.instance_id))
        return out
