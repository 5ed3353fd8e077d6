"""ClusterAPI on the leader: what katcall calls (admin certificates only)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core import join_address, tokens
from internal.core.events import new_event
from internal.manifests.checks import check_label_key, check_labels
from internal.manifests.defaults import new_namespace
from internal.manifests.problems import Reporter
from internal.security import rpc
from internal.state.etcd_values import EtcdError
from internal.state.kv import AlreadyExists, EventType, StaleWrite, Versioned
from internal.version import VERSION
from kat_agent.leader.admin_api import AdminAPI
from kat_agent.leader.context import LeaderContext
from kat_agent.leader.guards import admin, admin_stream, caller
from kat_agent.leader.ingress_certs import IngressCertsAPI
from kat_agent.leader.node_proxy import NodeProxyAPI
from kat_agent.leader.rollout_api import RolloutAPI
from kat_agent.leader.stats_proxy import StatsProxyAPI
from kat_agent.leader.workload_api import WorkloadAPI

log = logging.getLogger(__name__)


class ClusterAPI(
    WorkloadAPI,
    RolloutAPI,
    NodeProxyAPI,
    StatsProxyAPI,
    AdminAPI,
    IngressCertsAPI,
    kat_pb2_grpc.ClusterAPIServicer,
):
    def __init__(self, lc: LeaderContext) -> None:
        self.lc = lc
        self._workload_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._node_channels: dict[str, grpc.aio.Channel] = {}
        self._node_channels_version = 0  # of lc.node_pair they were made with

    # ------------------------------------------------------------- nodes

    @admin
    async def ListNodes(
        self, request: kat_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.NodeList:
        nodes = self.lc.registry.all()
        if request.label_selector:
            sel = dict(request.label_selector)
            nodes = [n for n in nodes if all(n.metadata.labels.get(k) == v for k, v in sel.items())]
        for n in nodes:
            n.status.leader = n.metadata.name == self.lc.node_name
        return kat_pb2.NodeList(items=nodes)

    async def _node(self, name: str, context: grpc.aio.ServicerContext) -> kat_pb2.Node:
        node = self.lc.registry.get(name)
        if node is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {name!r} not found")
        assert node is not None
        node.status.leader = name == self.lc.node_name
        return node

    @admin
    async def GetNode(
        self, request: kat_pb2.NodeRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Node:
        return await self._node(request.name, context)

    async def _set_unschedulable(
        self, name: str, value: bool, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Node:
        def apply(node: kat_pb2.Node) -> None:
            node.spec.unschedulable = value

        if await self.lc.registry.mutate(name, apply) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {name!r} not found")
        reason = "NodeCordoned" if value else "NodeUncordoned"
        await self.lc.store.record_event(
            new_event(reason, reason[4:].lower(), kind="Node", name=name)
        )
        return await self._node(name, context)

    @admin
    async def LabelNode(
        self, request: kat_pb2.LabelNodeRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Node:
        """Set and remove node labels (kubectl style). Labels are the cluster's record:
        heartbeats no longer change them after registration."""
        rep = Reporter("label")
        check_labels(dict(request.set), "labels", rep)
        for key in request.remove:
            check_label_key(key, f"labels[{key}]", rep)
        if not request.set and not request.remove:
            rep.add("labels", "nothing to change: give key=value or key-")
        if rep.problems:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "; ".join(f"{p.path}: {p.message}" for p in rep.problems),
            )

        def apply(node: kat_pb2.Node) -> None:
            for key in request.remove:
                node.metadata.labels.pop(key, None)
            node.metadata.labels.update(request.set)

        if await self.lc.registry.mutate(request.name, apply) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name!r} not found")
        changes = [f"{k}={v}" for k, v in sorted(request.set.items())] + [
            f"{k}-" for k in request.remove
        ]
        await self.lc.store.record_event(
            new_event("NodeLabelled", " ".join(changes), kind="Node", name=request.name)
        )
        return await self._node(request.name, context)

    @admin
    async def GetEndpoints(
        self, request: kat_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.EndpointSet:
        await self.lc.require_leader(context)
        view = self.lc.endpoints.current() or kat_pb2.EndpointSet()
        out = kat_pb2.EndpointSet(revision=view.revision, ingress_nodes=view.ingress_nodes)
        out.services.extend(
            s
            for s in view.services
            if request.namespace == "*" or s.namespace == (request.namespace or "default")
        )
        return out

    @admin
    async def CordonNode(
        self, request: kat_pb2.NodeRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Node:
        return await self._set_unschedulable(request.name, True, context)

    @admin
    async def UncordonNode(
        self, request: kat_pb2.NodeRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Node:
        return await self._set_unschedulable(request.name, False, context)

    @admin
    async def DrainNode(
        self, request: kat_pb2.DrainRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Node:
        """Cordon the node and move its instances away: each running copy of a
        SERVICE or JOB goes TERMINATING, so the controller places a replacement
        elsewhere and the node stops the copy (SIGTERM, grace). DAEMON_SERVICE
        copies stay: they belong to the node. Waits up to timeout_seconds (0: not
        at all) for the node to run none of them any more."""
        lc = self.lc
        node = await self._set_unschedulable(request.name, True, context)
        daemon = kat_pb2.WorkloadSpec.DAEMON_SERVICE
        daemons = {
            (w.msg.metadata.namespace, w.msg.metadata.name)
            for w in await lc.store.list_workloads()
            if w.msg.spec.type == daemon
        }
        done = (kat_pb2.Instance.SUCCEEDED, kat_pb2.Instance.FAILED, kat_pb2.Instance.TERMINATING)

        def movable(v: Versioned[kat_pb2.Instance]) -> bool:
            i = v.msg
            return i.phase not in done and (i.namespace, i.workload) not in daemons

        for _ in range(5):
            moving = [v for v in await lc.store.list_instances(node=request.name) if movable(v)]
            if not moving:
                break
            for v in moving:
                v.msg.phase = kat_pb2.Instance.TERMINATING
                v.msg.message = f"node {request.name} drained"
            try:
                await lc.store.update_instances((v.msg, v.mod_revision) for v in moving)
            except StaleWrite:
                continue  # the controller wrote meanwhile: read again
            await lc.store.record_event(
                new_event(
                    "NodeDrained",
                    f"moving {len(moving)} instance(s) away",
                    kind="Node",
                    name=request.name,
                )
            )
            lc.registry.touch()  # wakes the controllers now, not at their next resync
            break
        if request.timeout_seconds > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + request.timeout_seconds
            while any(
                v.msg.phase != kat_pb2.Instance.SUCCEEDED
                and v.msg.phase != kat_pb2.Instance.FAILED
                and (v.msg.namespace, v.msg.workload) not in daemons
                for v in await lc.store.list_instances(node=request.name)
            ):
                if loop.time() > deadline:
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"node {request.name} still runs instances after "
                        f"{request.timeout_seconds}s; they are being moved",
                    )
                await asyncio.sleep(0.5)
        return node

    @admin
    async def RemoveNode(
        self, request: kat_pb2.NodeRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Empty:
        lc = self.lc
        node = lc.registry.get(request.name)
        if node is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.name!r} not found")
        assert node is not None
        if request.name == lc.node_name:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{request.name} is the leader; stop its agent so another member takes over, "
                "then remove it",
            )
        async with lc.membership_lock:
            if node.status.etcd_member:
                problem = await self._remove_etcd_member(request.name)
                if problem:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, problem)
            # kept even if the name is joined again: the old certificates stay refused
            # (also the one before the node's last renewal, still valid for a while)
            held = (node.status.certificate_sha256, node.status.previous_certificate_sha256)
            for digest in dict.fromkeys(d for d in held if d):
                revocation = kat_pb2.CertificateRevocation(
                    certificate_sha256=digest,
                    common_name=request.name,
                    role=rpc.ROLE_NODE,
                    revoked_by=caller(context),
                )
                revocation.revoked_at.FromDatetime(datetime.now(UTC))
                await lc.store.revoke_certificate(revocation)
                lc.revocations.add(digest)
            await lc.registry.forget(request.name)
            if node.status.subnet:
                await lc.store.release_subnet(node.status.subnet, request.name)
        await lc.store.record_event(
            new_event("NodeRemoved", "removed from the cluster", kind="Node", name=request.name)
        )
        return kat_pb2.Empty()

    async def _remove_etcd_member(self, name: str) -> str:
        """Take the node's etcd member out, unless that would cost quorum;
        returns the reason for refusing, or ""."""
        etcd = self.lc.store.etcd
        members = await etcd.member_list()
        member = next((m for m in members if m.name == name), None)
        if member is None:
            return ""
        ready = {
            n.metadata.name
            for n in self.lc.registry.stored()
            if n.status.condition == kat_pb2.NodeStatus.READY
        }
        others = [m for m in members if m.id != member.id]
        healthy = sum(1 for m in others if m.name in ready)
        needed = len(others) // 2 + 1
        if healthy < needed:
            return (
                f"removing etcd member {name} would leave {healthy} healthy of {len(others)} "
                f"members, fewer than the {needed} needed for quorum; bring members back first"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                await etcd.member_remove(member.id)
                return ""
            except EtcdError as exc:
                # refused for a few seconds after peers (re)connect: wait, do not fail
                if "unhealthy cluster" not in str(exc) or loop.time() > deadline:
                    return f"etcd refused to remove member {name}: {exc}"
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------- tokens

    @admin
    async def CreateToken(
        self, request: kat_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.CreateTokenResponse:
        if request.ttl_seconds < 0 or request.max_uses < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "ttl and max uses must not be negative"
            )
        problem = join_address.approved_problem(request.approved_addresses)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        ttl = timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else tokens.DEFAULT_TTL
        record, text = tokens.new_token(
            self.lc.ca_hash,
            self.lc.spec.join_port,
            now=datetime.now(UTC),
            ttl=ttl,
            max_uses=request.max_uses,
            description=request.description,
            etcd_member=request.etcd_member,
        )
        record.approved_addresses.extend(a.strip() for a in request.approved_addresses)
        await self.lc.store.create_token(record)
        return kat_pb2.CreateTokenResponse(token=record, join_token=text)

    @admin
    async def ListTokens(
        self, request: kat_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.TokenList:
        return kat_pb2.TokenList(items=[v.msg for v in await self.lc.store.list_tokens()])

    @admin
    async def RevokeToken(
        self, request: kat_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.JoinToken:
        for _ in range(5):
            current = await self.lc.store.get_token(request.id)
            if current is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"token {request.id!r} not found")
            assert current is not None
            current.msg.revoked = True
            try:
                await self.lc.store.update_token(current.msg, current.mod_revision)
                return current.msg
            except StaleWrite:
                continue
        await context.abort(grpc.StatusCode.ABORTED, "token changed concurrently; retry")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------- namespaces and events

    @admin
    async def ListNamespaces(
        self, request: kat_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.NamespaceList:
        return kat_pb2.NamespaceList(items=[v.msg for v in await self.lc.store.list_namespaces()])

    @admin
    async def CreateNamespace(
        self, request: kat_pb2.NamespaceRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Namespace:
        ns = new_namespace(request.name, datetime.now(UTC))
        try:
            await self.lc.store.create_namespace(ns)
        except AlreadyExists:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"namespace {request.name!r} already exists"
            )
        return ns

    @admin
    async def ListEvents(
        self, request: kat_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.EventList:
        events = await self.lc.store.list_events(None)
        if request.namespace and request.namespace != "*":
            events = [e for e in events if e.namespace in ("", request.namespace)]
        if request.object_name:
            events = [e for e in events if e.object_name == request.object_name]
        events.sort(key=lambda e: (e.timestamp.seconds, e.timestamp.nanos))
        if request.limit:
            events = events[-request.limit :]
        return kat_pb2.EventList(items=events)

    @admin_stream
    async def WatchEvents(
        self, request: kat_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kat_pb2.Event]:
        """The stored events (oldest first), then each new one as it is recorded; events
        of cluster-scoped objects go with every namespace, as in ListEvents."""
        ns = request.namespace

        def wanted(e: kat_pb2.Event) -> bool:
            return not ns or ns == "*" or e.namespace in ("", ns)

        store = self.lc.store
        events, revision = await store.list_events_with_revision(None)
        for e in events:
            if wanted(e):
                yield e
        async for ev in store.watch_events(None, revision + 1):
            if ev.msg is not None and ev.type is EventType.PUT and wanted(ev.msg):
                yield ev.msg

    @admin
    async def GetClusterInfo(
        self, request: kat_pb2.ClusterInfoRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.ClusterInfo:
        lc = self.lc
        return kat_pb2.ClusterInfo(
            cluster_uid=lc.cluster_uid,
            leader_node=lc.node_name,
            leader_api_address=lc.api_address,
            api_endpoints=lc.api_endpoints(),
            configuration=lc.config,
            version=VERSION,
        )

    @admin
    async def ListAudit(
        self, request: kat_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.AuditList:
        from kat_agent.leader.audit import list_audit

        return await list_audit(self.lc, request)

    @admin
    async def ListCertificates(
        self, request: kat_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.CertificateList:
        from kat_agent.leader.inventory import list_certificates

        return await list_certificates(self.lc.store)

    @admin
    async def Backup(
        self, request: kat_pb2.BackupRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.BackupResponse:
        from kat_agent.leader.backups import take_backup

        try:
            return await take_backup(self.lc.store, self.lc.spec)
        except OSError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"backup failed: {exc}")
        raise AssertionError("unreachable")
