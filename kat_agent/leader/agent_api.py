"""AgentAPI on the leader: Join (token-authenticated, on the join port) and
Heartbeat (node certificates, on the API port)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import NoReturn

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core import certlife, ipam, join_address, tokens
from internal.core.events import new_event
from internal.core.ratelimit import FailureLimiter, peer_host
from internal.observability import metrics
from internal.security import pki, rpc
from internal.state.etcd_values import EtcdError, EtcdUnavailable
from internal.state.kv import AlreadyExists, StaleWrite, SubnetsExhausted
from internal.state.store import Store
from kat_agent import etcd_certs
from kat_agent.leader import certificates
from kat_agent.leader.context import LeaderContext
from kat_agent.leader.guards import guarded, leader, node, node_stream, require_own_node
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


def join_request_problem(request: kat_pb2.JoinRequest) -> str:
    """What is wrong with a join request's own content ("" if nothing)."""
    try:
        addr = ipaddress.ip_address(request.advertise_address)
    except ValueError:
        return f"advertise address {request.advertise_address[:64]!r} is not an IP address"
    if addr.is_unspecified or addr.is_multicast:
        return f"advertise address {addr} cannot be a node's address"
    csrs = [("CSR", request.csr_pem)]
    if request.etcd_member:
        csrs += [
            ("etcd server CSR", request.etcd_server_csr_pem),
            ("etcd client CSR", request.etcd_client_csr_pem),
        ]
    for what, pem in csrs:
        try:
            pki.load_csr(pem)
        except ValueError as exc:
            return f"bad {what}: {exc}"
    return ""


class AgentAPI(kat_pb2_grpc.AgentAPIServicer):
    def __init__(self, lc: LeaderContext) -> None:
        self.lc = lc
        # Joins on this leader run one at a time (they are rare): no two race for a
        # token's last use or an address; the revision checks still guard against
        # any other writer.
        self._join_lock = asyncio.Lock()
        self._refusals = FailureLimiter()
        # The answer to a heartbeat only changes with the node set: built once per change.
        self._beat_response: tuple[int, kat_pb2.HeartbeatResponse] = (
            -1,
            kat_pb2.HeartbeatResponse(),
        )

    @leader
    async def Join(
        self, request: kat_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.JoinResponse:
        try:
            return await self._join(request, context)
        except EtcdUnavailable as exc:
            # an answer with a code, not UNKNOWN and a traceback in the log
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cluster state unavailable: {exc}")
            raise AssertionError("unreachable") from None

    async def _join(
        self, request: kat_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.JoinResponse:
        """Order matters: the cheap checks that need no state come first, so that a
        flood of made-up requests costs a bounded amount (nothing is kept per token
        id; a refused source is slowed down); a token use is spent only once the
        node is registered and its certificate signed."""
        lc = self.lc
        source = peer_host(context.peer())
        loop = asyncio.get_running_loop()
        if not self._refusals.allowed(source, loop.time()):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "join refused: too many refused joins from this address; retry later",
            )
        try:
            token_id, secret = tokens.parse_credential(request.token)
        except tokens.TokenError as exc:
            await self._refuse(context, source, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        problem = join_request_problem(request)
        if problem:
            await self._refuse(context, source, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if lc.ca_key is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this leader cannot sign")
        async with self._join_lock:
            record = await self._usable_token(context, source, token_id, secret, request)
            # The certificate will carry this address: only one the leader verified.
            problem = join_address.address_problem(
                request.advertise_address, source, record.approved_addresses
            )
            if problem:
                await self._refuse(context, source, grpc.StatusCode.INVALID_ARGUMENT, problem)
            claimed = [
                n.metadata.name
                for n in lc.registry.stored()
                if n.status.advertise_address == request.advertise_address
            ]
            if claimed:
                await self._refuse(
                    context,
                    source,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"advertise address {request.advertise_address} belongs to node "
                    f"{claimed[0]}; remove that node first",
                )
            try:
                node = await self._register(request, source if _is_ip(source) else "")
            except SubnetsExhausted as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"join refused: {exc}")
            name = node.metadata.name
            try:
                assert lc.ca_key is not None
                cert = pki.sign_csr(
                    lc.ca_cert,
                    lc.ca_key,
                    request.csr_pem,
                    common_name=name,
                    role=rpc.ROLE_NODE,
                    dns_names=[name, "localhost"],
                    ip_addresses=[request.advertise_address, "127.0.0.1"],
                    lifetime=certlife.lifetime(lc.spec),
                )
                await self._spend(record, secret, +1)
                node = await self._bind_certificate(name, cert) or node
            except BaseException:
                await self._unregister(node)
                raise
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
        await certificates.record_issued(lc.store, cert, "join")
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
        # Last: with a second member added, etcd needs it running to commit writes
        # (so nothing is written after this, not even the event above).
        if request.etcd_member:
            try:
                await self._add_etcd_member(request, name, resp)
            except MembershipError as exc:
                await self._unregister(node)
                await self._spend(record, secret, -1)
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"join refused: {exc}")
        return resp

    async def _refuse(
        self, context: grpc.aio.ServicerContext, source: str, code: grpc.StatusCode, why: str
    ) -> NoReturn:
        """Abort a join and charge it to its source. Logged without anything the
        caller sent (a token id or secret could be in it)."""
        self._refusals.refused(source, asyncio.get_running_loop().time())
        log.warning("join from %s refused: %s", source, code.name)
        await context.abort(code, f"join refused: {why}")
        raise AssertionError("unreachable")  # abort raises

    async def _usable_token(
        self,
        context: grpc.aio.ServicerContext,
        source: str,
        token_id: str,
        secret: str,
        request: kat_pb2.JoinRequest,
    ) -> kat_pb2.JoinToken:
        current = await self.lc.store.get_token(token_id)
        record = current.msg if current else None
        try:
            tokens.check(record, secret, now=datetime.now(UTC))
        except tokens.TokenError as exc:
            await self._refuse(context, source, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        assert record is not None
        if request.etcd_member and not record.etcd_member:
            await self._refuse(
                context,
                source,
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {record.id} joins workers only; an etcd member needs a token from "
                "`katcall token create --etcd-member`",
            )
        return record

    async def _spend(self, record: kat_pb2.JoinToken, secret: str, delta: int) -> None:
        """Count (delta=+1) or give back (-1) one use of the token."""
        store = self.lc.store
        for _ in range(10):
            current = await store.get_token(record.id)
            if current is None:
                raise tokens.TokenError(f"join token {record.id} was deleted")
            if delta > 0:
                tokens.check(current.msg, secret, now=datetime.now(UTC))
            current.msg.uses = max(0, current.msg.uses + delta)
            try:
                await store.update_token(current.msg, current.mod_revision)
                return
            except StaleWrite:
                continue
        raise tokens.TokenError("token is being used concurrently; retry")

    async def _bind_certificate(self, name: str, cert: bytes) -> kat_pb2.Node | None:
        """Record which certificate this node was given: only that one speaks for it
        (a removed node's certificate stays refused even if its name is reused)."""
        digest = rpc.certificate_sha256(cert)

        def bind(node: kat_pb2.Node) -> None:
            node.status.certificate_sha256 = digest

        return await self.lc.registry.mutate(name, bind)

    async def _require_current_node(
        self, cn: str, name: str, context: grpc.aio.ServicerContext, action: str
    ) -> None:
        """require_own_node, and (per message of a stream: a node can be removed while
        it lasts) that the caller's certificate is the one its node holds now."""
        await require_own_node(self, cn, name, context, action)
        bound = self.lc.registry.bound_certificate(cn)
        held = rpc.peer_certificate_sha256(context)
        # the certificate before a renewal stays accepted on connections made with it
        renewed_from = self.lc.registry.previous_certificate(cn)
        if bound is None or (bound and held not in (bound, renewed_from)):
            context.set_trailing_metadata(((rpc.REVOKED_KEY, "1"),))
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {cn!r} is revoked (the node was removed or re-joined)",
            )

    async def _unregister(self, node: kat_pb2.Node) -> None:
        """Undo _register: a refused join leaves no node and no subnet behind."""
        lc = self.lc
        name = node.metadata.name
        await lc.registry.forget(name)
        if node.status.subnet:
            await lc.store.release_subnet(node.status.subnet, name)

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
            # Only an etcd member may lead, and so needs the CA keys sealed in etcd.
            resp.cluster_secret = lc.cluster_secret or b""
            # The names and lifetime the member renews them with (kat_agent/etcd_certs.py).
            dns, ips = etcd_certs.server_names(name, adv)
            life = certlife.lifetime(lc.spec)
            resp.etcd_server_certificate_pem = pki.sign_csr(
                ca.cert_pem,
                ca.key_pem,
                request.etcd_server_csr_pem,
                common_name=name,
                role=pki.ROLE_ETCD,
                dns_names=dns,
                ip_addresses=ips,
                lifetime=life,
            )
            resp.etcd_client_certificate_pem = pki.sign_csr(
                ca.cert_pem,
                ca.key_pem,
                request.etcd_client_csr_pem,
                common_name=etcd_certs.client_common_name(name),
                role=pki.ROLE_ETCD,
                lifetime=life,
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

    async def _register(self, request: kat_pb2.JoinRequest, observed: str) -> kat_pb2.Node:
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
        st.observed_address = observed
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
            response = await self._beat(cn, request, context)
            del request  # a node's report: not kept while waiting for the next one
            yield response

    async def _beat(
        self, cn: str, request: kat_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.HeartbeatResponse:
        await self._require_current_node(cn, request.node_name, context, "report as")
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

        await self._require_current_node(cn, request.node_name, context, "watch assignments of")
        deltas = request.accept_deltas
        async for update in stream_assignments(self.lc, request.node_name, context, deltas):
            yield update
            # Not kept while the stream waits for the next change: a full snapshot lists
            # every peer (~200 KB with 1,000 nodes), and every node has a stream.
            del update

    @node_stream
    async def WatchEndpoints(
        self, request: kat_pb2.EndpointsRequest, context: grpc.aio.ServicerContext, cn: str
    ) -> AsyncIterator[kat_pb2.EndpointSet]:
        from kat_agent.leader.endpoints import stream_endpoints

        async for view in stream_endpoints(self.lc, context):
            yield view
            del view  # not kept while waiting for the next one

    @node
    async def GetIngressCertificates(
        self,
        request: kat_pb2.IngressCertificatesRequest,
        context: grpc.aio.ServicerContext,
        cn: str,
    ) -> kat_pb2.IngressKeyPairList:
        from kat_agent.leader.ingress_certs import certificates_for_node

        await self.lc.require_leader(context)
        return await certificates_for_node(
            self.lc,
            cn,
            request,
            context,
            lambda: self._require_current_node(
                cn, request.node_name, context, "get ingress certificates of"
            ),
        )

    @guarded  # certificates.renew checks role, revocation, the node's binding, leadership
    async def RenewCertificate(
        self, request: kat_pb2.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.RenewCertificateResponse:
        try:
            return await certificates.renew(self.lc, request, context)
        except EtcdUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cluster state unavailable: {exc}")
            raise AssertionError("unreachable") from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
