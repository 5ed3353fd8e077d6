"""The workload half of the ClusterAPI (a mixin of `cluster_api.ClusterAPI`): apply,
get/list/watch, delete, rollback, revisions, instances, namespaces. Logs and exec,
proxied to the node that runs an instance, are `node_proxy`; apply planning (pure) is
`internal.core.apply`.

Apply answers at once: it validates, stores the new generation (with its revision, keeping
the last 10) and returns; the workload controller does the rest. Who applied, deleted or
rolled back what is recorded in an event (the admin certificate's common name).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import grpc

from api.v1alpha1 import kat_pb2
from internal.core import hostpaths
from internal.core.apply import plan_apply
from internal.core.events import new_event
from internal.manifests import bundle as bundle_mod
from internal.manifests import resources
from internal.manifests.defaults import DEFAULT_NAMESPACE, new_namespace, object_ref
from internal.state.etcd_values import LeaseNotFound
from internal.state.keys import WORKLOADS, workloads_prefix
from internal.state.kv import AlreadyExists, EventType, StaleWrite, Versioned
from kat_agent.leader.guards import admin, admin_stream, caller
from kat_agent.leader.rollout_api import change_cause, keep_restarted_at

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


def _namespace(value: str) -> str | None:
    """A request's namespace: "" is "default", "*" is all (None)."""
    if value == ALL_NAMESPACES:
        return None
    return value or DEFAULT_NAMESPACE


def terminating(
    records: list[Versioned[kat_pb2.Instance]], why: str, purge: bool
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
    # One apply/delete/rollback of a workload at a time on this leader (set by ClusterAPI).
    _workload_locks: dict[tuple[str, str], asyncio.Lock]

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._workload_locks.setdefault((namespace, name), asyncio.Lock())

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

    @admin
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

        store = self.lc.store
        name = ns.metadata.name
        for _ in range(_RETRIES):
            current = await store.get_namespace(name)
            if current is None:
                created = new_namespace(name, datetime.now(UTC))
                created.metadata.labels.update(ns.metadata.labels)
                created.metadata.annotations.update(ns.metadata.annotations)
                changes = [f"create Namespace {name}"]
                if dry_run:
                    return kat_pb2.ApplyResponse(
                        namespace=created, changed=True, created=True, changes=changes
                    )
                try:
                    created.metadata.resource_version = await store.create_namespace(created)
                except AlreadyExists:
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
            except StaleWrite:
                continue
            return kat_pb2.ApplyResponse(namespace=updated, changed=True, changes=changes)
        await context.abort(grpc.StatusCode.ABORTED, f"namespace {name} keeps changing; retry")
        raise AssertionError("unreachable")

    async def _require_namespace(self, namespace: str, context: _Ctx, *, create: bool) -> None:
        if await self.lc.store.get_namespace(namespace) is not None:
            return
        if namespace == DEFAULT_NAMESPACE:
            if create:
                try:
                    await self.lc.store.create_namespace(
                        new_namespace(namespace, datetime.now(UTC))
                    )
                except AlreadyExists:
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
        cause: str = "",
        keep_restart: bool = True,
    ) -> kat_pb2.ApplyResponse:
        store = self.lc.store
        resources.apply_defaults(bundle)
        resources.clear_server_fields(bundle)
        meta = bundle.workload.metadata
        namespace, name = meta.namespace, meta.name
        async with self._lock(namespace, name):
            for attempt in range(_RETRIES):
                if attempt == 0:  # both reads in one round trip's time
                    _, current = await asyncio.gather(
                        self._require_namespace(namespace, context, create=not dry_run),
                        store.get_workload(namespace, name),
                    )
                else:
                    current = await store.get_workload(namespace, name)
                if expected and (current is None or current.mod_revision != expected):
                    now_at = f"is at {current.mod_revision}" if current else "does not exist"
                    await context.abort(
                        grpc.StatusCode.ABORTED,
                        f"workload {object_ref(namespace, name)} {now_at}, not at resourceVersion "
                        f"{expected}: it changed since you read it; fetch it and apply again",
                    )
                old_bundle = await self._stored_bundle(current.msg) if current else None
                if current and keep_restart:
                    keep_restarted_at(bundle, current.msg)
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
                if plan.revision is not None:
                    plan.revision.change_cause = cause or change_cause(bundle, plan.changes)
                gen = plan.workload.metadata.generation
                if plan.created:
                    text = f"created by {who} (generation 1)"
                elif plan.revision is not None:
                    text = f"generation {gen} applied by {who}: " + "; ".join(plan.changes[:3])
                else:
                    text = f"metadata updated by {who}: " + "; ".join(plan.changes[:3])
                # The Applied event goes in the workload's own transaction: both or neither,
                # and one etcd round trip less per Apply.
                event = new_event(
                    "Applied", text, kind="Workload", name=name, namespace=namespace, source="api"
                )
                applied = await store.event_put(event)
                try:
                    rv = await store.commit_workload(
                        plan.workload,
                        current.mod_revision if current else None,
                        plan.revision,
                        keep=KEPT_REVISIONS,
                        also=[applied],
                    )
                except (StaleWrite, AlreadyExists):
                    if expected:
                        raise
                    continue  # the controller wrote the status meanwhile: read again
                except LeaseNotFound:
                    await store.lease_vanished(applied)
                    continue
                response.workload.metadata.resource_version = rv
                return response
        await context.abort(
            grpc.StatusCode.ABORTED, f"workload {object_ref(namespace, name)} keeps changing; retry"
        )
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ reading

    async def _workload(self, namespace: str, name: str, context: _Ctx) -> kat_pb2.Workload:
        found = await self.lc.store.get_workload(namespace or DEFAULT_NAMESPACE, name)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"workload {object_ref(namespace, name)} not found"
            )
            raise AssertionError("unreachable")
        return found.msg

    @admin
    async def GetWorkload(self, request: kat_pb2.ObjectRef, context: _Ctx) -> kat_pb2.Workload:
        return await self._workload(request.namespace, request.name, context)

    @admin
    async def ListWorkloads(
        self, request: kat_pb2.ListRequest, context: _Ctx
    ) -> kat_pb2.WorkloadList:
        items = [v.msg for v in await self.lc.store.list_workloads(_namespace(request.namespace))]
        if request.label_selector:
            sel = dict(request.label_selector)
            items = [w for w in items if all(w.metadata.labels.get(k) == v for k, v in sel.items())]
        return kat_pb2.WorkloadList(items=items)

    @admin_stream
    async def WatchWorkloads(
        self, request: kat_pb2.WatchRequest, context: _Ctx
    ) -> AsyncIterator[kat_pb2.WorkloadWatchEvent]:
        store = self.lc.store
        namespace = _namespace(request.namespace)
        start = request.since_revision
        if start <= 0:
            items, revision = await store.list_with_revision(
                workloads_prefix(namespace), kat_pb2.Workload
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
            if ev.type is EventType.PUT:
                out.type = kat_pb2.WorkloadWatchEvent.PUT
            else:
                out.type = kat_pb2.WorkloadWatchEvent.DELETE
                ns, _, name = ev.key.removeprefix(WORKLOADS).partition("/")
                out.workload.metadata.namespace, out.workload.metadata.name = ns, name
            yield out

    @admin
    async def ListRevisions(
        self, request: kat_pb2.ObjectRef, context: _Ctx
    ) -> kat_pb2.RevisionList:
        wl = await self._workload(request.namespace, request.name, context)
        revs = await self.lc.store.list_workload_revisions(wl.metadata.namespace, wl.metadata.name)
        return kat_pb2.RevisionList(items=[v.msg for v in revs])

    @admin
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

    @admin
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
                        grpc.StatusCode.NOT_FOUND,
                        f"workload {object_ref(namespace, name)} not found",
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
                except StaleWrite:
                    continue  # the controller changed something meanwhile: read again
            else:
                await context.abort(
                    grpc.StatusCode.ABORTED,
                    f"workload {object_ref(namespace, name)} keeps changing",
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

    @admin
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
                    f"revision {request.to_revision} of {object_ref(meta.namespace, meta.name)} "
                    f"not found (kept revisions: {kept})",
                )
        else:
            older = [r for r in revs if r.revision < meta.generation]
            target = older[-1] if older else None
            if target is None:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{object_ref(meta.namespace, meta.name)} has no revision before "
                    f"{meta.generation} to roll back to (kept revisions: {kept})",
                )
        assert target is not None
        if target.revision == meta.generation:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{object_ref(meta.namespace, meta.name)} already runs revision {target.revision}",
            )
        who = caller(context)
        old = kat_pb2.Bundle()
        old.CopyFrom(target.bundle)
        cause = f"rollback to revision {target.revision}"
        response = await self._apply_bundle(old, context, who=who, cause=cause, keep_restart=False)
        gen = response.workload.metadata.generation
        await self._event(
            "RolledBack",
            f"rolled back to revision {target.revision} by {who} (now generation {gen})",
            kind="Workload",
            name=meta.name,
            namespace=meta.namespace,
        )
        return response.workload

    @admin
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
            except StaleWrite:
                continue  # the controller got there first for some: read again
        await self._event(
            "Deleted",
            f"deleted by {who} with its {workloads} workloads",
            kind="Namespace",
            name=name,
        )
        return kat_pb2.Empty()
