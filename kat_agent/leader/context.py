"""What the leader-side servicers share: the store, the cluster configuration,
CA material and whether this process currently leads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from api.v1alpha1 import kat_pb2
from internal import rpc
from internal.store import Store
from kat_agent.leader.nodes import NodeRegistry


@dataclass
class LeaderContext:
    store: Store
    config: kat_pb2.ClusterConfiguration
    cluster_uid: str
    node_name: str
    api_address: str
    ca_cert: bytes
    ca_key: bytes | None
    registry: NodeRegistry
    leading: bool = False
    leader_address: str = ""  # the current leader's API address, as last observed
    ca_hash: str = field(default="")
    _endpoints: tuple[int, list[str]] = (-1, [])
    # Called with (node name, instance states) for every heartbeat, before the
    # node record is updated; the workload controllers subscribe here.
    instance_listeners: list[Callable[[str, Sequence[kat_pb2.Instance]], Awaitable[None]]] = field(
        default_factory=list
    )

    @property
    def spec(self) -> kat_pb2.ClusterConfigurationSpec:
        return self.config.spec

    async def require_leader(self, context: grpc.aio.ServicerContext) -> None:
        """Answer UNAVAILABLE, naming the leader, unless this process leads."""
        if self.leading:
            return
        if self.leader_address and self.leader_address != self.api_address:
            context.set_trailing_metadata(((rpc.LEADER_KEY, self.leader_address),))
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"not the leader; the leader is {self.leader_address}"
            )
        await context.abort(grpc.StatusCode.UNAVAILABLE, "no leader elected yet; retry shortly")

    def api_endpoints(self) -> list[str]:
        """API addresses of the etcd members (cached: every heartbeat answers with them)."""
        version, endpoints = self._endpoints
        if version != self.registry.version:
            port = self.spec.api_port
            endpoints = sorted(
                f"{n.status.advertise_address}:{port}"
                for n in self.registry.stored()
                if n.status.etcd_member and n.status.advertise_address
            ) or [self.api_address]
            self._endpoints = (self.registry.version, endpoints)
        return endpoints

    def peers(self) -> list[kat_pb2.Peer]:
        return [
            kat_pb2.Peer(
                node_name=n.metadata.name,
                advertise_address=n.status.advertise_address,
                subnet=n.status.subnet,
                wireguard_public_key=n.status.wireguard_public_key,
                wireguard_port=self.spec.wireguard_port,
            )
            for n in self.registry.all()
        ]
