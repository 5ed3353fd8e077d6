"""What the leader-side servicers share: the store, the cluster configuration,
CA material and whether this process currently leads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from api.v1alpha1 import kat_pb2
from internal.host.datadir import DataDir
from internal.security import pki, rpc
from internal.security.certfiles import KeyPairFile
from internal.state.etcd_values import EtcdError
from internal.state.store import Store
from kat_agent.leader.assignments import AssignmentBook
from kat_agent.leader.endpoints import EndpointBook
from kat_agent.leader.nodes import NodeRegistry
from kat_agent.leader.revocation import Revocations, StreamCutter


@dataclass(eq=False)
class LeaderContext:
    """Built once per member process (`build_leader_context`), before the API server starts;
    the fields up to `node_key` never change after. The rest is what changes while the
    process runs: whether it leads and who does, quorum, caches and subscriptions."""

    store: Store
    config: kat_pb2.ClusterConfiguration
    cluster_uid: str
    node_name: str
    api_address: str
    ca_cert: bytes
    ca_key: bytes | None  # None: this member cannot sign (joins are refused)
    registry: NodeRegistry
    etcd_ca: pki.CertAndKey | None  # None: this member cannot add etcd members
    # This node's own identity (the leader's client certificate towards agents).
    node_cert: bytes
    node_key: bytes
    # Seals the CA keys in etcd; handed to new etcd members at join (None: an old cluster).
    cluster_secret: bytes | None = None
    ca_hash: str = field(init=False)
    # The node certificate's files: node_cert/node_key as renewed (None: fixed ones).
    node_pair: KeyPairFile | None = None
    # Revoked certificates (checked on every call) and the nodes' open streams.
    revocations: Revocations = field(init=False)
    node_streams: StreamCutter = field(default_factory=StreamCutter)
    # -- runtime state
    leading: bool = False
    leader_address: str = ""  # the current leader's API address, as last observed
    # Set while the local etcd member sees no raft leader (quorum lost).
    quorum_problem: str = ""
    _endpoints: tuple[int, list[str]] = (-1, [])
    _peers: tuple[int, list[kat_pb2.Peer]] = (-1, [])
    # Called with (node name, instance states) for every heartbeat, before the
    # node record is updated; the workload controllers subscribe here.
    instance_listeners: list[Callable[[str, Sequence[kat_pb2.Instance]], Awaitable[None]]] = field(
        default_factory=list
    )
    # What each node should run, published by the workload controllers and
    # streamed to the nodes (kat_agent/leader/assignments.py).
    assignments: AssignmentBook = field(default_factory=AssignmentBook)
    # The cluster's ready endpoints, streamed to every node (kat_agent/leader/endpoints.py).
    endpoints: EndpointBook = field(default_factory=EndpointBook)
    # etcd membership changes (joins of members, removals) one at a time.
    membership_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.ca_hash = pki.ca_hash(self.ca_cert)
        self.revocations = Revocations(self.store)
        self.registry.on_lost.append(self.assignments.drop)
        self.registry.on_removed.append(self.node_streams.cut)

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
        if self.quorum_problem:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.quorum_problem)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "no leader elected yet; retry shortly")

    async def watch_quorum(self, interval: float = 1.0) -> None:
        """Keep `quorum_problem` current, so that callers hear "no quorum"
        instead of waiting on writes that cannot commit."""
        while True:
            try:
                async with asyncio.timeout(interval * 2):
                    status = await self.store.etcd.status()
                has_leader = status.has_leader
            except (EtcdError, TimeoutError):
                has_leader = False
            if has_leader:
                self.quorum_problem = ""
            else:
                try:
                    async with asyncio.timeout(interval):
                        members = len(await self.store.etcd.member_list())
                except (EtcdError, TimeoutError):
                    members = 0
                known = f" of {members}" if members else ""
                self.quorum_problem = (
                    f"no quorum: etcd on {self.node_name} cannot reach a majority{known} "
                    "of its members; the cluster is read-only until enough members return"
                )
            await asyncio.sleep(interval)

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
        """Every node as an overlay peer (cached per change of the node set)."""
        version, peers = self._peers
        if version != self.registry.version:
            peers = [
                kat_pb2.Peer(
                    node_name=n.metadata.name,
                    advertise_address=n.status.advertise_address,
                    subnet=n.status.subnet,
                    wireguard_public_key=n.status.wireguard_public_key,
                    wireguard_port=self.spec.wireguard_port,
                    observed_address=n.status.observed_address,
                )
                for n in self.registry.stored()
            ]
            self._peers = (self.registry.version, peers)
        return peers


def build_leader_context(
    dd: DataDir,
    store: Store,
    config: kat_pb2.ClusterConfiguration,
    cluster_uid: str,
    node_name: str,
    api_address: str,
) -> LeaderContext:
    """The context of a member whose PKI is in `dd` (reads its files)."""
    from internal.security import sealing

    ca_key = dd.ca_key.read_bytes() if dd.ca_key.exists() else None
    secret = sealing.read_secret(dd.cluster_secret) if dd.cluster_secret.exists() else None
    return LeaderContext(
        store=store,
        config=config,
        cluster_uid=cluster_uid,
        node_name=node_name,
        api_address=api_address,
        ca_cert=dd.ca_cert.read_bytes(),
        ca_key=ca_key,
        registry=NodeRegistry(store, config.spec),
        etcd_ca=pki.read_pair(dd.etcd_pki / "ca.crt", dd.etcd_pki / "ca.key"),
        node_cert=dd.node_cert.read_bytes(),
        node_key=dd.node_key.read_bytes(),
        node_pair=KeyPairFile(dd.node_cert, dd.node_key),
        cluster_secret=secret,
    )
