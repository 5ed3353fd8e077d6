"""The workload half of the ClusterAPI (a mixin of `cluster_api.ClusterAPI`): apply,
get/list/watch, delete, rollback, revisions, instances, namespaces, and logs/exec proxied
to the node that runs an instance.

Apply answers at once: it validates, stores the new generation (with its revision, keeping
the last 10) and returns; the workload controller does the rest. Who applied, deleted or
rolled back what is recorded in an event (the admin certificate's common name).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core import hostpaths
from internal.core.events import new_event
from internal.core.reconcile import same_instances, same_spec
from internal.manifests import bundle as bundle_mod
from internal.manifests import resources
from internal.manifests.changes import bundle_changes
from internal.manifests.defaults import DEFAULT_NAMESPACE
from internal.security import rpc
from internal.state import store as store_mod
from internal.state.etcd import EtcdUnavailable

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

log = logging.getLogger(__name__)

ALL_NAMESPACES = "*"
KEPT_REVISIONS = 10
_RETRIES = 5
_TXN_INSTANCES = 100  # instance writes per transaction (etcd allows 128 operations)
_LOGS_TIMEOUT = 60.0  # a non-follow logs call through the leader

Req = TypeVar("Req")
Resp = TypeVar("Resp")
_Ctx = grpc.aio.ServicerContext


def _admin(
    fn: Callable[[Any, Req, _Ctx], Awaitable[Resp]],
) -> Callable[[Any, Req, _Ctx], Awaitable[Resp]]:
    """cluster_api.admin (admin certificate, leadership, error mapping), bound at call
    time: cluster_api imports this module to inherit from it."""

    async def wrapper(self: Any, request: Req, context: _Ctx) -> Resp:
        from kat_agent.leader.cluster_api import admin

        return await admin(fn)(self, request, context)

    wrapper.__name__ = fn.__name__
    return wrapper


def _admin_stream(
    fn: Callable[[Any, Req, _Ctx], AsyncIterator[Resp]],
) -> Callable[[Any, Req, _Ctx], AsyncIterator[Resp]]:
    """The same checks for streaming calls."""

    async def wrapper(self: Any, request: Req, context: _Ctx) -> AsyncIterator[Resp]:
        from kat_agent.leader.cluster_api import admin

        async def checks(_self: Any, _request: Any, _context: _Ctx) -> None:
            return None

        await admin(checks)(self, request, context)
        try:
            async for item in fn(self, request, context):
                yield item
        except EtcdUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cluster state unavailable: {exc}")
        except store_mod.Compacted as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))

    wrapper.__name__ = fn.__name__
    return wrapper


def caller(context: _Ctx) -> str:
    """The admin certificate's common name, for the audit trail."""
    ident = rpc.peer_identity(context)
    return ident[0] if ident and ident[0] else "unknown"


def _namespace(value: str) -> str | None:
    """A request's namespace: "" is "default", "*" is all (None)."""
    if value == ALL_NAMESPACES:
        return None
    return value or DEFAULT_NAMESPACE


def _ref(namespace: str, name: str) -> str:
    return f"{namespace or DEFAULT_NAMESPACE}/{name}"


# ------------------------------------------------------------------ apply planning (pure)


@dataclass
class ApplyPlan:
    workload: kat_pb2.Workload
    revision: kat_pb2.WorkloadRevision | None  # None: no new generation
    changed: bool
    created: bool
    changes: list[str] = field(default_factory=list)


def plan_apply(
    current: kat_pb2.Workload | None,
    current_bundle: kat_pb2.Bundle | None,
    new: kat_pb2.Bundle,
    *,
    now: datetime,
    who: str,
    uid: str = "",
) -> ApplyPlan:
    """What storing `new` (defaults applied, server fields cleared) means: a new workload,
    a new generation (the spec changed), a metadata-only update, or nothing."""
    meta = new.workload.metadata
    if current is None:
        wl = kat_pb2.Workload()
        wl.CopyFrom(new.workload)
        wl.metadata.uid = uid or str(uuid.uuid4())
        wl.metadata.generation = 1
        wl.metadata.creation_timestamp.FromDatetime(now)
        wl.status.template_generation = 1
        return ApplyPlan(wl, _revision(new, wl, now, who), True, True, bundle_changes(None, new))
    cur = current.metadata
    old = kat_pb2.Bundle()
    if current_bundle is not None:
        old.CopyFrom(current_bundle)
    else:
        old.workload.CopyFrom(current)
    old.workload.ClearField("status")
    old.workload.metadata.labels.clear()
    old.workload.metadata.labels.update(cur.labels)
    old.workload.metadata.annotations.clear()
    old.workload.metadata.annotations.update(cur.annotations)
    spec_same = current_bundle is not None and same_spec(current_bundle, new)
    meta_same = dict(cur.labels) == dict(meta.labels) and dict(cur.annotations) == dict(
        meta.annotations
    )
    if spec_same and meta_same:
        return ApplyPlan(current, None, False, False, [])
    wl = kat_pb2.Workload()
    wl.CopyFrom(new.workload)
    wl.metadata.uid = cur.uid
    wl.metadata.creation_timestamp.CopyFrom(cur.creation_timestamp)
    wl.metadata.generation = cur.generation
    wl.metadata.resource_version = cur.resource_version
    wl.status.CopyFrom(current.status)
    revision = None
    if not spec_same:
        wl.metadata.generation = cur.generation + 1
        template = current.status.template_generation or cur.generation
        if current_bundle is None or not same_instances(current_bundle, new):
            template = wl.metadata.generation
        wl.status.template_generation = template
        revision = _revision(new, wl, now, who)
    return ApplyPlan(wl, revision, True, False, bundle_changes(old, new))


def _revision(
    new: kat_pb2.Bundle, wl: kat_pb2.Workload, now: datetime, who: str
) -> kat_pb2.WorkloadRevision:
    rev = kat_pb2.WorkloadRevision(revision=wl.metadata.generation, created_by=who)
    rev.bundle.CopyFrom(new)
    stored = rev.bundle.workload.metadata
    stored.uid = wl.metadata.uid
    stored.generation = wl.metadata.generation
    stored.creation_timestamp.CopyFrom(wl.metadata.creation_timestamp)
    rev.created.FromDatetime(now)
    return rev


def terminating(
    records: list[store_mod.Versioned[kat_pb2.Instance]], why: str, purge: bool
) -> list[tuple[kat_pb2.Instance, int]]:
    """The instance records of a deleted workload marked TERMINATING (their nodes stop
    them; the controller then removes the records), with the revisions they were read at.
    Records that already say so are left out."""
    out = []
    for v in records:
        inst = v.msg
        if inst.phase == kat_pb2.Instance.TERMINATING and (inst.purge_volumes or not purge):
            continue
        changed = kat_pb2.Instance()
        changed.CopyFrom(inst)
        changed.phase = kat_pb2.Instance.TERMINATING
        changed.ready = False
        changed.message = why
        changed.purge_volumes = inst.purge_volumes or purge
        out.append((changed, v.mod_revision))
    return out


# ------------------------------------------------------------------ the servicer mixin


class WorkloadAPI:
    """Workload calls of the ClusterAPI; `ClusterAPI` inherits them (it sets `lc`)."""

    lc: LeaderContext

    def _state(self) -> dict[str, Any]:
        return self.__dict__.setdefault("_workload_api", {"locks": {}, "channels": {}})

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        locks: dict[tuple[str, str], asyncio.Lock] = self._state()["locks"]
        return locks.setdefault((namespace, name), asyncio.Lock())

    async def _event(
        self,
        reason: str,
        message: str,
        *,
        kind: str,
        name: str,
        namespace: str = "",
        warning: bool = False,
    ) -> None:
        await self.lc.store.record_event(
            new_event(
                reason,
                message,
                kind=kind,
                name=name,
                namespace=namespace,
                warning=warning,
                source="api",
            )
        )

    # ------------------------------------------------------------ apply

    @_admin
    async def Apply(self, request: kat_pb2.ApplyRequest, context: _Ctx) -> kat_pb2.ApplyResponse:
        try:
            files = bundle_mod.unpack(request.bundle)
            payload = resources.load_apply_payload(files)
        except bundle_mod.BundleError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from None
        except resources.ValidationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from None
        who = caller(context)
        if not isinstance(payload, kat_pb2.Namespace):
            refused = hostpaths.workload_problems(
                payload.workload.spec, self.lc.spec.host_mount_allowed_paths
            )
            if refused:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, str(resources.ValidationError(refused))
                )
        if isinstance(payload, kat_pb2.Namespace):
            return await self._apply_namespace(payload, request.dry_run, who, context)
        return await self._apply_bundle(
            payload,
            context,
            who=who,
            expected=request.expected_resource_version,
            dry_run=request.dry_run,
        )

    async def _apply_namespace(
        self, ns: kat_pb2.Namespace, dry_run: bool, who: str, context: _Ctx
    ) -> kat_pb2.ApplyResponse:
        from kat_agent.leader.cluster_api import new_namespace

        store = self.lc.store
        name = ns.metadata.name
        for _ in range(_RETRIES):
            current = await store.get_namespace(name)
            if current is None:
                created = new_namespace(name)
                created.metadata.labels.update(ns.metadata.labels)
                created.metadata.annotations.update(ns.metadata.annotations)
                changes = [f"create Namespace {name}"]
                if dry_run:
                    return kat_pb2.ApplyResponse(
                        namespace=created, changed=True, created=True, changes=changes
                    )
                try:
                    created.metadata.resource_version = await store.create_namespace(created)
                except store_mod.AlreadyExists:
                    continue
                await self._event("Created", f"created by {who}", kind="Namespace", name=name)
                return kat_pb2.ApplyResponse(
                    namespace=created, changed=True, created=True, changes=changes
                )
            have = current.msg
            if dict(have.metadata.labels) == dict(ns.metadata.labels) and dict(
                have.metadata.annotations
            ) == dict(ns.metadata.annotations):
                return kat_pb2.ApplyResponse(namespace=have, changed=False)
            updated = kat_pb2.Namespace()
            updated.CopyFrom(have)
            updated.metadata.labels.clear()
            updated.metadata.labels.update(ns.metadata.labels)
            updated.metadata.annotations.clear()
            updated.metadata.annotations.update(ns.metadata.annotations)
            changes = [f"namespace {name}: labels and annotations updated"]
            if dry_run:
                return kat_pb2.ApplyResponse(namespace=updated, changed=True, changes=changes)
            try:
                updated.metadata.resource_version = await store.update_namespace(
                    updated, current.mod_revision
                )
            except store_mod.StaleWrite:
                continue
            return kat_pb2.ApplyResponse(namespace=updated, changed=True, changes=changes)
        await context.abort(grpc.StatusCode.ABORTED, f"namespace {name} keeps changing; retry")
        raise AssertionError("unreachable")

    async def _require_namespace(self, namespace: str, context: _Ctx, *, create: bool) -> None:
        if await self.lc.store.get_namespace(namespace) is not None:
            return
        if namespace == DEFAULT_NAMESPACE:
            if create:
                from kat_agent.leader.cluster_api import new_namespace

                try:
                    await self.lc.store.create_namespace(new_namespace(namespace))
                except store_mod.AlreadyExists:
                    pass
            return
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            f"namespace {namespace!r} not found; create it first "
            f"(katcall create namespace {namespace})",
        )

    async def _stored_bundle(self, wl: kat_pb2.Workload) -> kat_pb2.Bundle | None:
        meta = wl.metadata
        rev = await self.lc.store.get_workload_revision(meta.namespace, meta.name, meta.generation)
        return None if rev is None else rev.msg.bundle

    async def _apply_bundle(
        self,
        bundle: kat_pb2.Bundle,
        context: _Ctx,
        *,
        who: str,
        expected: int = 0,
        dry_run: bool = False,
    ) -> kat_pb2.ApplyResponse:
        store = self.lc.store
        resources.apply_defaults(bundle)
        resources.clear_server_fields(bundle)
        meta = bundle.workload.metadata
        namespace, name = meta.namespace, meta.name
        await self._require_namespace(namespace, context, create=not dry_run)
        async with self._lock(namespace, name):
            for _ in range(_RETRIES):
                current = await store.get_workload(namespace, name)
                if expected and (current is None or current.mod_revision != expected):
                    now_at = f"is at {current.mod_revision}" if current else "does not exist"
                    await context.abort(
                        grpc.StatusCode.ABORTED,
                        f"workload {_ref(namespace, name)} {now_at}, not at resourceVersion "
                        f"{expected}: it changed since you read it; fetch it and apply again",
                    )
                old_bundle = await self._stored_bundle(current.msg) if current else None
                plan = plan_apply(
                    current.msg if current else None,
                    old_bundle,
                    bundle,
                    now=datetime.now(UTC),
                    who=who,
                )
                response = kat_pb2.ApplyResponse(
                    workload=plan.workload,
                    changed=plan.changed,
                    created=plan.created,
                    changes=plan.changes,
                )
                if dry_run or not plan.changed:
                    return response
                try:
                    rv = await store.commit_workload(
                        plan.workload,
                        current.mod_revision if current else None,
                        plan.revision,
                        keep=KEPT_REVISIONS,
                    )
                except (store_mod.StaleWrite, store_mod.AlreadyExists):
                    if expected:
                        raise
                    continue  # the controller wrote the status meanwhile: read again
                response.workload.metadata.resource_version = rv
                gen = plan.workload.metadata.generation
                if plan.created:
                    text = f"created by {who} (generation 1)"
                elif plan.revision is not None:
                    text = f"generation {gen} applied by {who}: " + "; ".join(plan.changes[:3])
                else:
                    text = f"metadata updated by {who}: " + "; ".join(plan.changes[:3])
                await self._event("Applied", text, kind="Workload", name=name, namespace=namespace)
                return response
        await context.abort(
            grpc.StatusCode.ABORTED, f"workload {_ref(namespace, name)} keeps changing; retry"
        )
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ reading

    async def _workload(self, namespace: str, name: str, context: _Ctx) -> kat_pb2.Workload:
        found = await self.lc.store.get_workload(namespace or DEFAULT_NAMESPACE, name)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"workload {_ref(namespace, name)} not found"
            )
            raise AssertionError("unreachable")
        return found.msg

    @_admin
    async def GetWorkload(self, request: kat_pb2.ObjectRef, context: _Ctx) -> kat_pb2.Workload:
        return await self._workload(request.namespace, request.name, context)

    @_admin
    async def ListWorkloads(
        self, request: kat_pb2.ListRequest, context: _Ctx
    ) -> kat_pb2.WorkloadList:
        items = [v.msg for v in await self.lc.store.list_workloads(_namespace(request.namespace))]
        if request.label_selector:
            sel = dict(request.label_selector)
            items = [w for w in items if all(w.metadata.labels.get(k) == v for k, v in sel.items())]
        return kat_pb2.WorkloadList(items=items)

    @_admin_stream
    async def WatchWorkloads(
        self, request: kat_pb2.WatchRequest, context: _Ctx
    ) -> AsyncIterator[kat_pb2.WorkloadWatchEvent]:
        store = self.lc.store
        namespace = _namespace(request.namespace)
        start = request.since_revision
        if start <= 0:
            items, revision = await store.list_with_revision(
                store_mod.workloads_prefix(namespace), kat_pb2.Workload
            )
            for v in items:
                yield kat_pb2.WorkloadWatchEvent(
                    type=kat_pb2.WorkloadWatchEvent.PUT, workload=v.msg, revision=v.mod_revision
                )
            start = revision + 1
        async for ev in store.watch_workloads(namespace, start):
            out = kat_pb2.WorkloadWatchEvent(revision=ev.revision)
            if ev.msg is not None:
                out.workload.CopyFrom(ev.msg)
            if ev.type is store_mod.EventType.PUT:
                out.type = kat_pb2.WorkloadWatchEvent.PUT
            else:
                out.type = kat_pb2.WorkloadWatchEvent.DELETE
                ns, _, name = ev.key.removeprefix(store_mod.WORKLOADS).partition("/")
                out.workload.metadata.namespace, out.workload.metadata.name = ns, name
            yield out

    @_admin
    async def ListRevisions(
        self, request: kat_pb2.ObjectRef, context: _Ctx
    ) -> kat_pb2.RevisionList:
        wl = await self._workload(request.namespace, request.name, context)
        revs = await self.lc.store.list_workload_revisions(wl.metadata.namespace, wl.metadata.name)
        return kat_pb2.RevisionList(items=[v.msg for v in revs])

    @_admin
    async def ListInstances(
        self, request: kat_pb2.ListInstancesRequest, context: _Ctx
    ) -> kat_pb2.InstanceList:
        namespace = _namespace(request.namespace)
        workload = request.workload or None
        items = await self.lc.store.list_instances(
            namespace, workload if namespace is not None else None, request.node or None
        )
        insts = [v.msg for v in items]
        if workload is not None and namespace is None:
            insts = [i for i in insts if i.workload == workload]
        return kat_pb2.InstanceList(items=insts)

    # ------------------------------------------------------------ changing

    @_admin
    async def DeleteWorkload(
        self, request: kat_pb2.DeleteWorkloadRequest, context: _Ctx
    ) -> kat_pb2.Empty:
        store = self.lc.store
        namespace, name = request.namespace or DEFAULT_NAMESPACE, request.name
        who = caller(context)
        why = f"stopping: its workload was deleted by {who}"
        async with self._lock(namespace, name):
            for _ in range(_RETRIES):
                current = await store.get_workload(namespace, name)
                if current is None:
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND, f"workload {_ref(namespace, name)} not found"
                    )
                    raise AssertionError("unreachable")
                stop = terminating(
                    await store.list_instances(namespace, name), why, request.purge_volumes
                )
                # The workload goes in the same transaction as (the last of) its instances
                # turn TERMINATING, so the controller never sees them half done.
                first, last = stop[:-_TXN_INSTANCES], stop[-_TXN_INSTANCES:]
                try:
                    for i in range(0, len(first), _TXN_INSTANCES):
                        await store.update_instances(first[i : i + _TXN_INSTANCES])
                    await store.delete_workload(namespace, name, current.mod_revision, stop=last)
                    break
                except store_mod.StaleWrite:
                    continue  # the controller changed something meanwhile: read again
            else:
                await context.abort(
                    grpc.StatusCode.ABORTED, f"workload {_ref(namespace, name)} keeps changing"
                )
        purge = ", volumes purged" if request.purge_volumes else ""
        await self._event(
            "Deleted",
            f"deleted by {who}; stopping {len(stop)} instances{purge}",
            kind="Workload",
            name=name,
            namespace=namespace,
        )
        return kat_pb2.Empty()

    @_admin
    async def RollbackWorkload(
        self, request: kat_pb2.RollbackRequest, context: _Ctx
    ) -> kat_pb2.Workload:
        wl = await self._workload(request.namespace, request.name, context)
        meta = wl.metadata
        revs = [
            v.msg for v in await self.lc.store.list_workload_revisions(meta.namespace, meta.name)
        ]
        kept = ", ".join(str(r.revision) for r in revs) or "none"
        if request.to_revision:
            target = next((r for r in revs if r.revision == request.to_revision), None)
            if target is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"revision {request.to_revision} of {_ref(meta.namespace, meta.name)} "
                    f"not found (kept revisions: {kept})",
                )
        else:
            older = [r for r in revs if r.revision < meta.generation]
            target = older[-1] if older else None
            if target is None:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{_ref(meta.namespace, meta.name)} has no revision before "
                    f"{meta.generation} to roll back to (kept revisions: {kept})",
                )
        assert target is not None
        if target.revision == meta.generation:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{_ref(meta.namespace, meta.name)} already runs revision {target.revision}",
            )
        who = caller(context)
        old = kat_pb2.Bundle()
        old.CopyFrom(target.bundle)
        response = await self._apply_bundle(old, context, who=who)
        gen = response.workload.metadata.generation
        await self._event(
            "RolledBack",
            f"rolled back to revision {target.revision} by {who} (now generation {gen})",
            kind="Workload",
            name=meta.name,
            namespace=meta.namespace,
        )
        return response.workload

    @_admin
    async def DeleteNamespace(
        self, request: kat_pb2.NamespaceRequest, context: _Ctx
    ) -> kat_pb2.Empty:
        name = request.name
        if name == DEFAULT_NAMESPACE:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the default namespace cannot be deleted"
            )
        store = self.lc.store
        current = await store.get_namespace(name)
        if current is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"namespace {name!r} not found")
        assert current is not None
        workloads = len(await store.list_workloads(name))
        who = caller(context)
        # Instance records stay, TERMINATING: their nodes stop them, then the controller
        # removes the records.
        await store.purge_namespace(name, current.mod_revision, instances=False)
        for _ in range(_RETRIES):
            stop = terminating(
                await store.list_instances(name), f"stopping: namespace deleted by {who}", False
            )
            try:
                for i in range(0, len(stop), _TXN_INSTANCES):
                    await store.update_instances(stop[i : i + _TXN_INSTANCES])
                break
            except store_mod.StaleWrite:
                continue  # the controller got there first for some: read again
        await self._event(
            "Deleted",
            f"deleted by {who} with its {workloads} workloads",
            kind="Namespace",
            name=name,
        )
        return kat_pb2.Empty()

    # ------------------------------------------------------------ logs and exec

    def _agent_stub(self, inst: kat_pb2.Instance) -> tuple[kat_pb2_grpc.NodeAgentStub, str]:
        node = self.lc.registry.get(inst.node)
        if node is None or not node.status.advertise_address:
            raise LookupError(f"node {inst.node!r} of instance {inst.id} is not known")
        port = node.status.agent_port or self.lc.spec.agent_port
        target = f"{node.status.advertise_address}:{port}"
        channels: dict[str, grpc.aio.Channel] = self._state()["channels"]
        channel = channels.get(target)
        if channel is None:
            creds = rpc.client_credentials(self.lc.ca_cert, self.lc.node_cert, self.lc.node_key)
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
                    f"instance {instance_id} of {_ref(ns, workload)} not found or not placed",
                )
        elif not insts:
            exists = await self.lc.store.get_workload(ns, workload) is not None
            await context.abort(
                grpc.StatusCode.NOT_FOUND if not exists else grpc.StatusCode.FAILED_PRECONDITION,
                f"workload {_ref(ns, workload)} "
                + ("has no instance on a node yet" if exists else "not found"),
            )
        return sorted(insts, key=lambda i: i.id)

    async def _node_logs(
        self, inst: kat_pb2.Instance, request: kat_pb2.LogsRequest
    ) -> AsyncIterator[kat_pb2.LogChunk]:
        stub, target = self._agent_stub(inst)
        forward = kat_pb2.LogsRequest(
            namespace=inst.namespace,
            workload=inst.workload,
            instance_id=inst.id,
            follow=request.follow,
            tail=request.tail,
        )
        call = stub.Logs(forward, timeout=None if request.follow else _LOGS_TIMEOUT)
        try:
            async for chunk in call:
                if not chunk.instance_id:
                    chunk.instance_id = inst.id
                yield chunk
        finally:
            call.cancel()

    @_admin_stream
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

    @_admin_stream
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
                f"no RUNNING instance of {_ref(first.namespace, first.workload)}",
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
    return kat_pb2.LogChunk(instance_id=inst.id, data=text.encode())
