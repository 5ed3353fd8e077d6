"""The instance records in the leader's memory: listed from etcd once per term, then
followed with an etcd watch, and updated at once with the workload controller's own
writes (so that its next pass sees them without waiting for the watch). Replaces a
list-and-decode of every record on every reconcile pass.

Ordering: a record is replaced only by a newer revision of it, and a record the
controller deleted (at revision R) stays deleted against watch events older than R (a
tombstone, dropped once the watch passed R). A compacted watch start re-lists. The view
collects which records changed (`take_changes`) for the controller to plan only the
workloads concerned, and calls `on_change` (the controller's wake-up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from api.v1alpha1 import kat_pb2
from internal.state.etcd_values import EtcdError
from internal.state.keys import instance_from_key
from internal.state.kv import Compacted, EventType, WatchEvent
from internal.state.store import Store

log = logging.getLogger(__name__)

WorkloadKey = tuple[str, str]
_RETRY_SECONDS = 1.0


def workload_of(inst: kat_pb2.Instance) -> WorkloadKey:
    return (inst.namespace, inst.workload)


class InstanceView:
    def __init__(self, store: Store, on_change: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._on_change = on_change
        self.records: dict[str, kat_pb2.Instance] = {}
        self._by_workload: dict[WorkloadKey, dict[str, kat_pb2.Instance]] = {}
        self._tombstones: dict[str, int] = {}  # id -> revision the controller deleted it at
        self._changed: dict[str, WorkloadKey] = {}  # id -> its workload, since take_changes
        self.revision = 0  # the watch has delivered everything up to here
        self.loaded = asyncio.Event()

    # ------------------------------------------------------------ reads

    def of_workload(self, key: WorkloadKey) -> list[kat_pb2.Instance]:
        return list(self._by_workload.get(key, {}).values())

    def workloads(self) -> list[WorkloadKey]:
        return list(self._by_workload)

    def take_changes(self) -> dict[str, WorkloadKey]:
        """The records changed by others since the last call (id -> workload)."""
        changes, self._changed = self._changed, {}
        return changes

    # ------------------------------------------------------------ the controller's writes

    def wrote(self, inst: kat_pb2.Instance) -> None:
        """A record the controller wrote (its resource_version is the new revision)."""
        self._tombstones.pop(inst.id, None)
        self._put(inst)

    def deleted(self, inst: kat_pb2.Instance, revision: int) -> None:
        """A record the controller deleted at `revision`."""
        self._remove(inst.id)
        if revision > self.revision:
            self._tombstones[inst.id] = revision

    # ------------------------------------------------------------ following etcd

    async def run(self) -> None:
        """List, then follow the watch; re-list when the watch start was compacted."""
        while True:
            try:
                items, revision = await self._store.list_instances_with_revision()
                self._reset((v.msg for v in items), revision)
                async for ev in self._store.watch_instances(revision + 1):
                    self.apply(ev)
            except Compacted:
                log.info("instance watch compacted: listing again")
            except EtcdError as exc:
                log.warning("instance watch failed, listing again: %s", exc)
                await asyncio.sleep(_RETRY_SECONDS)

    def _reset(self, records: Iterable[kat_pb2.Instance], revision: int) -> None:
        old = self.records
        self.records, self._by_workload, self._tombstones = {}, {}, {}
        for r in records:
            self._put(r)
        for inst_id, r in old.items():  # a re-list: whatever differs counts as changed
            if self.records.get(inst_id) is not r:
                self._changed[inst_id] = workload_of(r)
        self._changed.update({i: workload_of(r) for i, r in self.records.items()})
        self.revision = revision
        self.loaded.set()
        self._on_change()

    def apply(self, ev: WatchEvent[kat_pb2.Instance]) -> None:
        if ev.revision > self.revision:
            self.revision = ev.revision
            if self._tombstones:
                self._tombstones = {i: r for i, r in self._tombstones.items() if r > ev.revision}
        if ev.type == EventType.PUT:
            assert ev.msg is not None
            inst_id = ev.msg.id
            current = self.records.get(inst_id)
            if current is not None and current.resource_version >= ev.revision:
                return  # the controller's own write (or older)
            if self._tombstones.get(inst_id, 0) >= ev.revision:
                return  # deleted by the controller after this
            self._put(ev.msg)
            self._changed[inst_id] = workload_of(ev.msg)
        else:
            namespace, workload, inst_id = instance_from_key(ev.key)
            current = self.records.get(inst_id)
            if current is None or current.resource_version > ev.revision:
                return  # gone already, or written again after this delete
            self._remove(inst_id)
            self._changed[inst_id] = (namespace, workload)
        self._on_change()

    def _put(self, inst: kat_pb2.Instance) -> None:
        old = self.records.get(inst.id)
        if old is not None and workload_of(old) != workload_of(inst):
            self._remove(inst.id)
        self.records[inst.id] = inst
        self._by_workload.setdefault(workload_of(inst), {})[inst.id] = inst

    def _remove(self, inst_id: str) -> None:
        old = self.records.pop(inst_id, None)
        if old is None:
            return
        key = workload_of(old)
        of = self._by_workload.get(key)
        if of is not None:
            of.pop(inst_id, None)
            if not of:
                del self._by_workload[key]
