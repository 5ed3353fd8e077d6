"""AgentAPI on the leader: Join (token-authenticated, on the join port) and
Heartbeat (node certificates, on the API port)."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core import ipam, tokens
from internal.core.events import new_event
from internal.observability import metrics
from internal.security import pki, rpc
from internal.state.etcd_values import EtcdError
from internal.state.kv import AlreadyExists, StaleWrite, SubnetsExhausted
from internal.state.store import Store
from kat_agent.leader.context import LeaderContext
from kat_agent.leader.guards import leader, node, node_stream, require_own_node
from kat_agent.leader.nodes import NodeRegistry

log = logging.getLogger(__name__)

_LABEL_BAD = re.compile(r"[^a-z0-9-]+")


def node_name_candidates(requested: str) -> list[str]:
    """DNS-label node names to try in order: the requested one, then numbered."""
    base = _LABEL_BAD.sub("-", requested.lower()).strip("-")[:50] or "node"
    return [base] + [f"{base}-{i}" for i in range(2, 1000)]


MAX_ETCD_MEMBERS = 7
MEMBER_START_WAIT = 60.0


class MembershipError(Exception):
    pass


class AgentAPI(kat_pb2_grpc.AgentAPIServicer):
    def __init__(self, lc: LeaderContext) -> None:
        self.lc = lc
        # Joins with one token queue here instead of racing on its use count;
        # the revision check below still guards against any other writer.
        self._token_locks: dict[str, asyncio.Lock] = {}
        # The answer to a heartbeat only changes with the node set: built once per change.
        self._beat_response: tuple[int, kat_pb2.HeartbeatResponse] = (
            -1,
            kat_pb2.HeartbeatResponse(),
        )

    @leader
    async def Join(
        self, request: kat_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.JoinResponse:
        lc = self.lc
        if lc.ca_key is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this leader cannot sign")
        try:
            token_id, secret = tokens.parse_credential(request.token)
            await self._consume_token(token_id, secret)
        except tokens.TokenError as exc:
            log.warning("join refused from %s: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"join refused: {exc}")
        if not request.advertise_address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "advertise_address is required")
        try:
            pki.load_csr(request.csr_pem)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad CSR: {exc}")

        try:
            node = await self._register(request)
        except SubnetsExhausted as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"join refused: {exc}")
        name = node.metadata.name
        assert lc.ca_key is not None
        cert = pki.sign_csr(
            lc.ca_cert,
            lc.ca_key,
            request.csr_pem,
            common_name=name,
            role=rpc.ROLE_NODE,
            dns_names=[name, "localhost"],
            ip_addresses=[request.advertise_address, "127.0.0.1"],
        )
        resp = kat_pb2.JoinResponse(
            node=node,
            certificate_pem=cert,
            ca_pem=lc.ca_cert,
            configuration=lc.config,
            peers=lc.peers(),
            api_endpoints=lc.api_endpoints(),
            cluster_uid=lc.cluster_uid,
        )
        what = "etcd member" if request.etcd_member else "node"
        await lc.store.record_event(
            new_event(
                "NodeJoined",
                f"{what} joined from {request.advertise_address}",
                kind="Node",
                name=name,
            )
        )
        log.info(
            "%s %s joined from %s, subnet %s",
            what,
            name,
            request.advertise_address,
            node.status.subnet,
        )
        # Last: with a second member added, etcd needs it running to commit writes.
        if request.etcd_member:
            try:
                await self._add_etcd_member(request, name, resp)
            except MembershipError as exc:
                await lc.registry.forget(name)
                await lc.store.release_subnet(node.status.subnet, name)
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"join refused: {exc}")
        return resp

    async def _add_etcd_member(
        self, request: kat_pb2.JoinRequest, name: str, resp: kat_pb2.JoinResponse
    ) -> None:
        """Sign the new member's etcd certificates and add it to the etcd cluster.

        One change at a time, and only once every member added before has
        started; etcd itself refuses an addition that would cost quorum."""
        lc = self.lc
        if lc.etcd_ca is None:
            raise MembershipError("this leader holds no etcd CA")
        etcd = lc.store.etcd
        async with lc.membership_lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + MEMBER_START_WAIT
            while True:
                members = await etcd.member_list()
                pending = [m.peer_urls[0] for m in members if not m.name and m.peer_urls]
                if not pending:
                    break
                if loop.time() > deadline:
                    raise MembershipError(
                        f"etcd member {pending[0]} was added but has not started; "
                        "membership changes one at a time"
                    )
                await asyncio.sleep(0.5)
            if len(members) >= MAX_ETCD_MEMBERS:
                raise MembershipError(f"the cluster already has {len(members)} etcd members")
            adv = request.advertise_address
            ca = lc.etcd_ca
            resp.etcd_ca_pem = ca.cert_pem
            resp.etcd_server_certificate_pem = pki.sign_csr(
                ca.cert_pem,
                ca.key_pem,
                request.etcd_server_csr_pem,
                common_name=name,
                role=pki.ROLE_ETCD,
                dns_names=[name, "localhost"],
                ip_addresses=[adv, "127.0.0.1"],
            )
            resp.etcd_client_certificate_pem = pki.sign_csr(
                ca.cert_pem,
                ca.key_pem,
                request.etcd_client_csr_pem,
                common_name=f"kat-agent-{name}",
                role=pki.ROLE_ETCD,
            )
            peer = f"https://{adv}:{lc.spec.etcd_peer_port}"
            while True:
                try:
                    _, everyone = await etcd.member_add([peer])
                    break
                except EtcdError as exc:
                    # etcd counts a member as healthy only after it has been
                    # connected for a few seconds: a member that just joined
                    # makes the next addition wait, not fail.
                    if "unhealthy cluster" not in str(exc) or loop.time() > deadline:
                        raise MembershipError(f"etcd refused to add member {peer}: {exc}") from None
                await asyncio.sleep(1.0)
            for m in everyone:
                if m.peer_urls:
                    resp.etcd_initial_cluster[m.name or name] = m.peer_urls[0]
            resp.etcd_endpoints.extend(f"{u}" for m in everyone for u in m.client_urls)

    async def _consume_token(self, token_id: str, secret: str) -> None:
        async with self._token_locks.setdefault(token_id, asyncio.Lock()):
            await self._consume_token_locked(token_id, secret)

    async def _consume_token_locked(self, token_id: str, secret: str) -> None:
        store = self.lc.store
        for _ in range(10):
            current = await store.get_token(token_id)
            tokens.check(current.msg if current else None, secret, now=datetime.now(UTC))
            assert current is not None
            current.msg.uses += 1
            try:
                await store.update_token(current.msg, current.mod_revision)
                return
            except StaleWrite:
                continue
        raise tokens.TokenError("token is being used concurrently; retry")

    async def _register(self, request: kat_pb2.JoinRequest) -> kat_pb2.Node:
        lc = self.lc
        node = kat_pb2.Node(api_version="kat.dws.rip/v1alpha1", kind="Node")
        node.metadata.uid = str(uuid.uuid4())
        node.metadata.labels.update(request.labels)
        node.metadata.creation_timestamp.FromDatetime(datetime.now(UTC))
        st = node.status
        st.condition = kat_pb2.NodeStatus.UNKNOWN
        st.advertise_address = request.advertise_address
        st.capacity.CopyFrom(request.capacity)
        st.allocatable.CopyFrom(request.capacity)
        st.wireguard_public_key = request.wireguard_public_key
        st.etcd_member = request.etcd_member
        st.agent_port = lc.spec.agent_port
        requested = request.node_name or request.hostname
        return await register_node(lc.store, lc.registry, lc.spec, node, requested)

    @node
    async def Heartbeat(
        self, request: kat_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext, cn: str
    ) -> kat_pb2.HeartbeatResponse:
        return await self._beat(cn, request, context)

    @node_stream
    async def Heartbeats(
        self,
        request_iterator: AsyncIterator[kat_pb2.HeartbeatRequest],
        context: grpc.aio.ServicerContext,
        cn: str,
    ) -> AsyncIterator[kat_pb2.HeartbeatResponse]:
        async for request in request_iterator:
            yield await self._beat(cn, request, context)

    async def _beat(
        self, cn: str, request: kat_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.HeartbeatResponse:
        await require_own_node(self, cn, request.node_name, context, "report as")
        metrics.HEARTBEATS.inc()
        for listener in self.lc.instance_listeners:
            await listener(request.node_name, request.instances)
        if not await self.lc.registry.heartbeat(request):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"node {request.node_name!r} is not registered"
            )
        version, response = self._beat_response
        if version != self.lc.registry.version:
            response = kat_pb2.HeartbeatResponse(
                tick_seconds=self.lc.spec.agent_tick_seconds,
                leader_node=self.lc.node_name,
                api_endpoints=self.lc.api_endpoints(),
            )
            self._beat_response = (self.lc.registry.version, response)
        return response

    @node_stream
    async def WatchAssignments(
        self, request: kat_pb2.AssignmentsRequest, context: grpc.aio.ServicerContext, cn: str
    ) -> AsyncIterator[kat_pb2.AssignmentSet]:
        from kat_agent.leader.assignments import stream_assignments

        await require_own_node(self, cn, request.node_name, context, "watch assignments of")
        async for update in stream_assignments(self.lc, request.node_name, context):
            yield update


async def register_node(
    store: Store,
    registry: NodeRegistry,
    spec: kat_pb2.ClusterConfigurationSpec,
    node: kat_pb2.Node,
    requested_name: str,
) -> kat_pb2.Node:
    """Store a new node under a unique name with its own overlay subnet (at Join, and for
    the first member at init, before any LeaderContext exists)."""
    for name in node_name_candidates(requested_name):
        node.metadata.name = name
        try:
            rev = await store.create_node(node)
            break
        except AlreadyExists:
            continue
    else:
        raise RuntimeError(f"no free node name for {requested_name!r}")
    used = list(await store.list_subnets())
    try:
        subnet = await store.allocate_subnet(
            name, ipam.free_subnets(spec.cluster_cidr, spec.node_subnet_bits, used)
        )
    except BaseException:
        await store.delete_node(name, rev)
        raise
    node.status.subnet = subnet
    rev = await store.update_node(node, rev)
    node.metadata.resource_version = rev
    registry.adopt(node, rev)
    return node
