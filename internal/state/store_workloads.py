"""The workload records of the store: workloads, their stored revisions and
their instances, and the transactions that change them together."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterable

from api.v1alpha1 import kat_pb2
from internal.state.etcd_values import Put
from internal.state.keys import (
    instance_key,
    instances_prefix,
    revision_key,
    revisions_prefix,
    workload_key,
    workloads_prefix,
)
from internal.state.kv import TypedKV, Versioned, WatchEvent


class WorkloadRecords(TypedKV):
    # ------------------------------------------------------------ workloads

    async def get_workload(self, namespace: str, name: str) -> Versioned[kat_pb2.Workload] | None:
        return await self.get(workload_key(namespace, name), kat_pb2.Workload)

    async def list_workloads(
        self, namespace: str | None = None
    ) -> builtins.list[Versioned[kat_pb2.Workload]]:
        """Workloads of one namespace, or of all (None)."""
        return await self.list(workloads_prefix(namespace), kat_pb2.Workload)

    async def list_workloads_with_revision(
        self,
    ) -> tuple[builtins.list[Versioned[kat_pb2.Workload]], int]:
        """Every workload and the revision they were read at (for watch_workloads)."""
        return await self.list_with_revision(workloads_prefix(None), kat_pb2.Workload)

    async def create_workload(self, workload: kat_pb2.Workload) -> int:
        meta = workload.metadata
        return await self.create(workload_key(meta.namespace, meta.name), workload)

    async def update_workload(self, workload: kat_pb2.Workload, expected_revision: int) -> int:
        meta = workload.metadata
        return await self.update(
            workload_key(meta.namespace, meta.name), workload, expected_revision
        )

    async def delete_workload(
        self,
        namespace: str,
        name: str,
        expected_revision: int | None = None,
        *,
        stop: Iterable[tuple[kat_pb2.Instance, int]] = (),
    ) -> bool:
        """Delete the workload and its stored revisions (its instances stay for
        the controller to stop and remove). `stop`: instance records to write in
        the same transaction (as they should be, with the revision each was read
        at), e.g. marked TERMINATING."""
        txn = self.txn().delete(workload_key(namespace, name), expected_revision)
        txn.delete_prefix(revisions_prefix(namespace, name))
        for inst, rev in stop:
            txn.update(instance_key(inst.namespace, inst.workload, inst.id), inst, rev)
        result = await txn.commit()
        return result.deleted > 0

    async def write_instances(
        self,
        creates: Iterable[kat_pb2.Instance] = (),
        updates: Iterable[kat_pb2.Instance] = (),
        deletes: Iterable[kat_pb2.Instance] = (),
        *,
        workload: kat_pb2.Workload | None = None,
    ) -> int:
        """Create, update (each guarded by its `resource_version`) and delete (guarded the
        same way) instance records in ONE transaction: all or none. Returns the revision
        every written record now has. Raises AlreadyExists / StaleWrite for the first
        guard that failed. Keep a batch within etcd's --max-txn-ops (128 by default).

        `workload`: the record the writes were planned from; they land only while it is
        still at its `resource_version` (else StaleWrite on its key), so that a plan made
        from a workload that was deleted or changed meanwhile is not written."""
        txn = self.txn()
        if workload is not None:
            meta = workload.metadata
            txn.require_revision(workload_key(meta.namespace, meta.name), meta.resource_version)
        for inst in creates:
            txn.create(instance_key(inst.namespace, inst.workload, inst.id), inst)
        for inst in updates:
            key = instance_key(inst.namespace, inst.workload, inst.id)
            txn.update(key, inst, inst.resource_version)
        for inst in deletes:
            key = instance_key(inst.namespace, inst.workload, inst.id)
            txn.delete(key, inst.resource_version)
        return (await txn.commit()).revision

    async def update_instances(self, changes: Iterable[tuple[kat_pb2.Instance, int]]) -> int:
        """Write several instance records (each read at the given revision) atomically."""
        txn = self.txn()
        for inst, rev in changes:
            txn.update(instance_key(inst.namespace, inst.workload, inst.id), inst, rev)
        return (await txn.commit()).revision

    async def commit_workload(
        self,
        workload: kat_pb2.Workload,
        expected_revision: int | None,
        revision: kat_pb2.WorkloadRevision | None = None,
        keep: int = 10,
        *,
        also: Iterable[Put] = (),
    ) -> int:
        """Store a workload (create when `expected_revision` is None, else update the
        record read at that revision) together with its new stored revision, and prune
        revisions beyond the newest `keep`, all in one transaction, with the unguarded
        writes `also` (its event, `Store.event_put`). Returns the new mod revision of
        the workload."""
        meta = workload.metadata
        key = workload_key(meta.namespace, meta.name)
        txn = self.txn()
        for put in also:
            txn.put(put)
        if expected_revision is None:
            txn.create(key, workload)
        else:
            txn.update(key, workload, expected_revision)
        if revision is not None:
            txn.create(revision_key(meta.namespace, meta.name, revision.revision), revision)
        # A new workload has no stored revisions to prune (a delete removes them with the
        # workload): one round trip less for every create.
        if revision is not None and expected_revision is not None:
            existing = await self._etcd.get_prefix(
                revisions_prefix(meta.namespace, meta.name), keys_only=True
            )
            for kv in existing.kvs[: max(0, len(existing.kvs) + 1 - keep)]:
                txn.delete(kv.key)
        return (await txn.commit()).revision

    def watch_workloads(
        self, namespace: str | None = None, start_revision: int | None = None
    ) -> AsyncIterator[WatchEvent[kat_pb2.Workload]]:
        """Changes to the workloads of one namespace, or of all (None)."""
        return self.watch(workloads_prefix(namespace), kat_pb2.Workload, start_revision)

    async def add_workload_revision(
        self, namespace: str, name: str, revision: kat_pb2.WorkloadRevision
    ) -> int:
        return await self.create(revision_key(namespace, name, revision.revision), revision)

    async def get_workload_revision(
        self, namespace: str, name: str, revision: int
    ) -> Versioned[kat_pb2.WorkloadRevision] | None:
        return await self.get(revision_key(namespace, name, revision), kat_pb2.WorkloadRevision)

    async def list_workload_revisions(
        self, namespace: str, name: str
    ) -> builtins.list[Versioned[kat_pb2.WorkloadRevision]]:
        """Oldest first."""
        return await self.list(revisions_prefix(namespace, name), kat_pb2.WorkloadRevision)

    async def prune_workload_revisions(self, namespace: str, name: str, keep: int = 10) -> int:
        """Delete all but the newest `keep` revisions; returns how many went."""
        result = await self._etcd.get_prefix(revisions_prefix(namespace, name), keys_only=True)
        old = result.kvs[: max(0, len(result.kvs) - keep)]
        if not old:
            return 0
        txn = self.txn()
        for kv in old:
            txn.delete(kv.key)
        return (await txn.commit()).deleted

    # ------------------------------------------------------------ instances

    async def get_instance(
        self, namespace: str, workload: str, instance_id: str
    ) -> Versioned[kat_pb2.Instance] | None:
        return await self.get(instance_key(namespace, workload, instance_id), kat_pb2.Instance)

    async def list_instances(
        self,
        namespace: str | None = None,
        workload: str | None = None,
        node: str | None = None,
    ) -> builtins.list[Versioned[kat_pb2.Instance]]:
        items = await self.list(instances_prefix(namespace, workload), kat_pb2.Instance)
        return items if node is None else [v for v in items if v.msg.node == node]

    async def list_instances_with_revision(
        self,
    ) -> tuple[builtins.list[Versioned[kat_pb2.Instance]], int]:
        """Every instance record and the revision they were read at (watch_instances from
        revision + 1 follows on without a gap)."""
        return await self.list_with_revision(instances_prefix(), kat_pb2.Instance)

    def watch_instances(
        self, start_revision: int | None = None
    ) -> AsyncIterator[WatchEvent[kat_pb2.Instance]]:
        """Changes to every instance record (DELETE events carry the last value)."""
        return self.watch(instances_prefix(), kat_pb2.Instance, start_revision)

    async def create_instance(self, instance: kat_pb2.Instance) -> int:
        key = instance_key(instance.namespace, instance.workload, instance.id)
        return await self.create(key, instance)

    async def update_instance(self, instance: kat_pb2.Instance, expected_revision: int) -> int:
        key = instance_key(instance.namespace, instance.workload, instance.id)
        return await self.update(key, instance, expected_revision)

    async def delete_instance(
        self,
        namespace: str,
        workload: str,
        instance_id: str,
        expected_revision: int | None = None,
    ) -> bool:
        return await self.delete(instance_key(namespace, workload, instance_id), expected_revision)
