"""Cluster state in etcd: the one module that knows every key under /kat/.

Key layout (values are serialized protobuf unless noted):

    /kat/config/cluster                         ClusterConfiguration
    /kat/config/cluster-uid                     cluster UID, UTF-8 text, written once
    /kat/pki/ca                                 CAMaterial: the cluster and etcd CAs with
                                                their keys, for members that may lead
    /kat/leader                                 ClusterInfo (leader_node, leader_api_address)
                                                on the leader's lease (internal/state/election.py)
    /kat/nodes/<name>                           Node
    /kat/ipam/subnets/<cidr, "/" as "_">        owning node name, UTF-8 text; created only
                                                if absent, so a subnet is never handed out twice
    /kat/namespaces/<name>                      Namespace
    /kat/workloads/<ns>/<name>                  Workload
    /kat/revisions/<ns>/<name>/<rev, 10 digits> WorkloadRevision
    /kat/instances/<ns>/<workload>/<id>         Instance
    /kat/tokens/<id>                            JoinToken
    /kat/events/<ns or "_">/<unix ns, 20 digits>-<id>
                                                Event, on a shared lease so it expires;
                                                "_" holds events of cluster-scoped objects

Reads return `Versioned` values carrying the etcd mod revision, which is also
written into `metadata.resource_version` (or `Instance.resource_version`).
Writes that depend on a read pass that revision back: `update` and `delete`
refuse with `StaleWrite` when the key changed meanwhile, `create` refuses with
`AlreadyExists`; nothing is overwritten blindly. `Store.txn()` combines several
such writes into one atomic transaction.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from google.protobuf.message import Message

from api.v1alpha1 import kat_pb2
from internal.state.etcd import (
    Compare,
    Delete,
    EtcdClient,
    Get,
    KeyValue,
    KVEvent,
    LeaseNotFound,
    Put,
    TxnOp,
    WatchCompacted,
)

M = TypeVar("M", bound=Message)

ROOT = "/kat/"
CLUSTER_CONFIG_KEY = "/kat/config/cluster"
CLUSTER_UID_KEY = "/kat/config/cluster-uid"
CA_MATERIAL_KEY = "/kat/pki/ca"
LEADER_KEY = "/kat/leader"
NODES = "/kat/nodes/"
SUBNETS = "/kat/ipam/subnets/"
NAMESPACES = "/kat/namespaces/"
WORKLOADS = "/kat/workloads/"
REVISIONS = "/kat/revisions/"
INSTANCES = "/kat/instances/"
TOKENS = "/kat/tokens/"
EVENTS = "/kat/events/"
AUDIT = "/kat/audit/"  # /kat/audit/<unix ns, 20 digits>-<id>: sorted by time, no lease
CLUSTER_SCOPE = "_"  # the events "namespace" of cluster-scoped objects

# A consumer whose watch start revision was compacted must re-list.
Compacted = WatchCompacted


class StoreError(Exception):
    pass


class AlreadyExists(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"{key} already exists")
        self.key = key


class StaleWrite(StoreError):
    """The key is not at the revision the write was based on (0: it is gone)."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        now = f"it is at revision {actual}" if actual else "it has been deleted"
        super().__init__(f"{key} changed since revision {expected}: {now}")
        self.key = key
        self.expected = expected
        self.actual = actual

    @property
    def deleted(self) -> bool:
        return self.actual == 0


class NotLeader(StoreError):
    """A write guarded by leadership found another (or no) leader."""


class SubnetsExhausted(StoreError):
    pass


# ---------------------------------------------------------------- keys


def _seg(value: str, what: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"{what} {value!r} cannot be part of a key")
    return value


def node_key(name: str) -> str:
    return NODES + _seg(name, "node name")


def namespace_key(name: str) -> str:
    return NAMESPACES + _seg(name, "namespace")


def workloads_prefix(namespace: str | None = None) -> str:
    return WORKLOADS if namespace is None else f"{WORKLOADS}{_seg(namespace, 'namespace')}/"


def workload_key(namespace: str, name: str) -> str:
    return workloads_prefix(namespace) + _seg(name, "workload name")


def revisions_prefix(namespace: str, name: str) -> str:
    return f"{REVISIONS}{_seg(namespace, 'namespace')}/{_seg(name, 'workload name')}/"


def revision_key(namespace: str, name: str, revision: int) -> str:
    if revision < 0:
        raise ValueError(f"workload revision {revision} is negative")
    return f"{revisions_prefix(namespace, name)}{revision:010d}"


def instances_prefix(namespace: str | None = None, workload: str | None = None) -> str:
    if namespace is None:
        if workload is not None:
            raise ValueError("listing instances of a workload needs its namespace")
        return INSTANCES
    prefix = f"{INSTANCES}{_seg(namespace, 'namespace')}/"
    return prefix if workload is None else f"{prefix}{_seg(workload, 'workload name')}/"


def instance_key(namespace: str, workload: str, instance_id: str) -> str:
    return instances_prefix(namespace, workload) + _seg(instance_id, "instance id")


def token_key(token_id: str) -> str:
    return TOKENS + _seg(token_id, "token id")


def subnet_key(cidr: str) -> str:
    return SUBNETS + _seg(cidr.replace("/", "_"), "subnet")


def subnet_from_key(key: str) -> str:
    return key.removeprefix(SUBNETS).replace("_", "/")


def events_prefix(namespace: str | None = None) -> str:
    if namespace is None:
        return EVENTS
    return f"{EVENTS}{_seg(namespace, 'namespace') if namespace else CLUSTER_SCOPE}/"


def event_key(namespace: str, timestamp_ns: int, event_id: str) -> str:
    return f"{events_prefix(namespace)}{timestamp_ns:020d}-{_seg(event_id, 'event id')}"


def audit_key(timestamp_ns: int, record_id: str) -> str:
    return f"{AUDIT}{timestamp_ns:020d}-{_seg(record_id, 'audit id')}"


def _check_key(key: str) -> str:
    if not key.startswith(ROOT):
        raise ValueError(f"key {key!r} is outside {ROOT}")
    return key


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Versioned(Generic[M]):
    msg: M
    mod_revision: int
    create_revision: int = 0
    key: str = ""


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True)
class WatchEvent(Generic[M]):
    type: EventType
    key: str
    msg: M | None  # PUT: the new value; DELETE: the last value (None if etcd had none)
    revision: int  # the etcd revision of this change


@dataclass(frozen=True)
class CommitResult:
    revision: int  # every key written by the transaction has this mod revision
    deleted: int = 0


def _stamp(msg: Message, revision: int) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    meta = fields.get("metadata")
    if meta is not None and meta.message_type is kat_pb2.ObjectMeta.DESCRIPTOR:
        msg.metadata.resource_version = revision  # type: ignore[attr-defined]
    elif "resource_version" in fields:
        msg.resource_version = revision  # type: ignore[attr-defined]


def _decode(msg_type: type[M], value: bytes, revision: int) -> M:
    msg = msg_type()
    msg.ParseFromString(value)
    _stamp(msg, revision)
    return msg


def _versioned(msg_type: type[M], kv: KeyValue) -> Versioned[M]:
    return Versioned(
        _decode(msg_type, kv.value, kv.mod_revision), kv.mod_revision, kv.create_revision, kv.key
    )


def _watch_event(msg_type: type[M], ev: KVEvent) -> WatchEvent[M]:
    if ev.type == "put":
        return WatchEvent(
            EventType.PUT, ev.kv.key, _decode(msg_type, ev.kv.value, ev.revision), ev.revision
        )
    prev = _decode(msg_type, ev.prev.value, ev.prev.mod_revision) if ev.prev else None
    return WatchEvent(EventType.DELETE, ev.kv.key, prev, ev.revision)


# ---------------------------------------------------------------- transactions


@dataclass(frozen=True)
class _Guard:
    key: str
    target: Literal["create", "mod"]
    expected: int
    error: Literal["exists", "stale", "leader"]


@dataclass
class WriteTxn:
    """Several guarded writes committed atomically, or none of them:

    await store.txn().update(wl_key, wl, rev).create(rev_key, revision).commit()
    """

    _etcd: EtcdClient
    _guards: list[_Guard] = field(default_factory=list)
    _ops: list[TxnOp] = field(default_factory=list)

    def create(self, key: str, msg: Message, *, lease: int = 0) -> WriteTxn:
        self._guards.append(_Guard(_check_key(key), "create", 0, "exists"))
        self._ops.append(Put(key, msg.SerializeToString(), lease))
        return self

    def update(self, key: str, msg: Message, expected_revision: int) -> WriteTxn:
        if expected_revision <= 0:
            raise ValueError(f"update of {key} needs the revision it was read at")
        self._guards.append(_Guard(_check_key(key), "mod", expected_revision, "stale"))
        self._ops.append(Put(key, msg.SerializeToString()))
        return self

    def delete(self, key: str, expected_revision: int | None = None) -> WriteTxn:
        if expected_revision is not None:
            self._guards.append(_Guard(_check_key(key), "mod", expected_revision, "stale"))
        self._ops.append(Delete(_check_key(key)))
        return self

    def delete_prefix(self, prefix: str) -> WriteTxn:
        if not prefix.endswith("/"):
            raise ValueError(f"prefix {prefix!r} must end with '/'")
        self._ops.append(Delete(_check_key(prefix), prefix=True))
        return self

    def require_revision(self, key: str, mod_revision: int) -> WriteTxn:
        """Commit only if `key` is still at `mod_revision` (without writing it)."""
        self._guards.append(_Guard(_check_key(key), "mod", mod_revision, "stale"))
        return self

    def require_leader(self, leader_revision: int) -> WriteTxn:
        """Commit only while the leadership won at `leader_revision` (the leader
        key's create revision, `Election.leader_revision`) still holds."""
        self._guards.append(_Guard(LEADER_KEY, "create", leader_revision, "leader"))
        return self

    async def commit(self) -> CommitResult:
        compares = [Compare(g.key, g.target, "==", g.expected) for g in self._guards]
        checked = list(dict.fromkeys(g.key for g in self._guards))
        result = await self._etcd.txn(compares, self._ops, [Get(k) for k in checked])
        if result.succeeded:
            return CommitResult(result.revision, sum(r.deleted for r in result.results))
        # The failure branch read the guarded keys atomically with the compare,
        # so one of the guards is false in what it read.
        current = {kv.key: kv for r in result.results for kv in r.kvs}
        for g in self._guards:
            kv = current.get(g.key)
            actual = (
                0
                if kv is None
                else (kv.create_revision if g.target == "create" else kv.mod_revision)
            )
            if actual == g.expected:
                continue
            if g.error == "exists":
                raise AlreadyExists(g.key)
            if g.error == "leader":
                raise NotLeader("leadership was lost; the write was not applied")
            raise StaleWrite(g.key, g.expected, actual)
        raise StoreError("transaction failed without a failing guard")  # unreachable


# ---------------------------------------------------------------- the store


class Store:
    """Typed access to KAT's state in etcd."""

    def __init__(
        self,
        etcd: EtcdClient,
        *,
        event_ttl: float = 3600.0,
        event_lease_reuse: float = 600.0,
    ) -> None:
        self._etcd = etcd
        # Events share one lease per `event_lease_reuse` seconds instead of one
        # lease each; the lease lives ttl + reuse so every event lives >= ttl.
        self._event_ttl = event_ttl
        self._event_lease_reuse = event_lease_reuse
        self._event_lease: int | None = None
        self._event_lease_until = 0.0
        self._event_lock = asyncio.Lock()

    @property
    def etcd(self) -> EtcdClient:
        return self._etcd

    # ------------------------------------------------------------ generic

    async def revision(self) -> int:
        return await self._etcd.revision()

    async def get(self, key: str, msg_type: type[M]) -> Versioned[M] | None:
        kv = await self._etcd.get(_check_key(key))
        return None if kv is None else _versioned(msg_type, kv)

    async def list_with_revision(
        self, prefix: str, msg_type: type[M]
    ) -> tuple[builtins.list[Versioned[M]], int]:
        """Every value under `prefix` (in key order) and the revision they were
        read at: watch from revision + 1 to follow on without a gap."""
        result = await self._etcd.get_prefix(_check_key(prefix))
        return [_versioned(msg_type, kv) for kv in result.kvs], result.revision

    async def list(self, prefix: str, msg_type: type[M]) -> builtins.list[Versioned[M]]:
        items, _ = await self.list_with_revision(prefix, msg_type)
        return items

    async def create(self, key: str, msg: Message, *, lease: int = 0) -> int:
        """Write `msg` if `key` does not exist (else AlreadyExists); returns its revision."""
        return (await self.txn().create(key, msg, lease=lease).commit()).revision

    async def update(self, key: str, msg: Message, expected_revision: int) -> int:
        """Write `msg` if `key` is still at `expected_revision` (else StaleWrite);
        returns the new revision."""
        return (await self.txn().update(key, msg, expected_revision).commit()).revision

    async def delete(self, key: str, expected_revision: int | None = None) -> bool:
        """Delete `key` (only if at `expected_revision` when given, else StaleWrite).
        Returns whether it existed."""
        return (await self.txn().delete(key, expected_revision).commit()).deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        return (await self.txn().delete_prefix(prefix).commit()).deleted

    def txn(self) -> WriteTxn:
        return WriteTxn(self._etcd)

    async def watch(
        self, prefix: str, msg_type: type[M], start_revision: int | None = None
    ) -> AsyncIterator[WatchEvent[M]]:
        """Changes under `prefix` from `start_revision` (default: now) on, in
        revision order. Survives etcd restarts and reconnects by resuming after
        the last delivered revision; raises `Compacted` when that history is
        gone (re-list with `list_with_revision` and watch again)."""
        async for ev in self._watch(_check_key(prefix), True, msg_type, start_revision):
            yield ev

    async def _watch(
        self, key: str, prefix: bool, msg_type: type[M], start_revision: int | None
    ) -> AsyncIterator[WatchEvent[M]]:
        batches = self._etcd.watch(key, prefix=prefix, start_revision=start_revision)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for ev in batch:
                    yield _watch_event(msg_type, ev)

    # ------------------------------------------------------------ configuration

    async def get_cluster_config(self) -> Versioned[kat_pb2.ClusterConfiguration] | None:
        return await self.get(CLUSTER_CONFIG_KEY, kat_pb2.ClusterConfiguration)

    async def put_cluster_config(
        self, config: kat_pb2.ClusterConfiguration, expected_revision: int | None = None
    ) -> int:
        """Create the configuration (expected_revision None) or replace the one
        read at `expected_revision`."""
        if expected_revision is None:
            return await self.create(CLUSTER_CONFIG_KEY, config)
        return await self.update(CLUSTER_CONFIG_KEY, config, expected_revision)

    async def get_ca_material(self) -> kat_pb2.CAMaterial | None:
        found = await self.get(CA_MATERIAL_KEY, kat_pb2.CAMaterial)
        return found.msg if found else None

    async def ensure_ca_material(self, material: kat_pb2.CAMaterial) -> kat_pb2.CAMaterial:
        """Store the CA material unless some is stored; returns the stored one."""
        with contextlib.suppress(AlreadyExists):
            await self.create(CA_MATERIAL_KEY, material)
            return material
        stored = await self.get_ca_material()
        assert stored is not None
        return stored

    async def replace_ca_material(self, material: kat_pb2.CAMaterial) -> None:
        """Overwrite the CA material (after a restore gave etcd a new CA)."""
        current = await self.get(CA_MATERIAL_KEY, kat_pb2.CAMaterial)
        if current is None:
            await self.create(CA_MATERIAL_KEY, material)
        else:
            await self.update(CA_MATERIAL_KEY, material, current.mod_revision)

    async def get_cluster_uid(self) -> str | None:
        kv = await self._etcd.get(CLUSTER_UID_KEY)
        return None if kv is None else kv.value.decode()

    async def ensure_cluster_uid(self, uid: str) -> str:
        """Store `uid` unless a cluster UID exists; returns the one stored."""
        result = await self._etcd.txn(
            [Compare.absent(CLUSTER_UID_KEY)],
            [Put(CLUSTER_UID_KEY, uid.encode())],
            [Get(CLUSTER_UID_KEY)],
        )
        if result.succeeded:
            return uid
        return result.results[0].kvs[0].value.decode()

    # ------------------------------------------------------------ leader

    async def campaign(
        self, leader: kat_pb2.ClusterInfo, lease_id: int
    ) -> tuple[bool, Versioned[kat_pb2.ClusterInfo], int]:
        """Become leader if nobody is: create the leader key on `lease_id`.
        Returns (won, the leader record now, the revision it was read at)."""
        result = await self._etcd.txn(
            [Compare.absent(LEADER_KEY)],
            [Put(LEADER_KEY, leader.SerializeToString(), lease_id), Get(LEADER_KEY)],
            [Get(LEADER_KEY)],
        )
        kv = result.results[-1].kvs[0]
        return result.succeeded, _versioned(kat_pb2.ClusterInfo, kv), result.revision

    async def get_leader(self) -> Versioned[kat_pb2.ClusterInfo] | None:
        return await self.get(LEADER_KEY, kat_pb2.ClusterInfo)

    def watch_leader(self, start_revision: int) -> AsyncIterator[WatchEvent[kat_pb2.ClusterInfo]]:
        return self._watch(LEADER_KEY, False, kat_pb2.ClusterInfo, start_revision)

    async def drop_leader(self, leader_revision: int) -> bool:
        """Delete the leader key if it is still the one created at `leader_revision`."""
        result = await self._etcd.txn(
            [Compare.create_revision(LEADER_KEY, leader_revision)], [Delete(LEADER_KEY)]
        )
        return result.succeeded

    # ------------------------------------------------------------ nodes

    async def get_node(self, name: str) -> Versioned[kat_pb2.Node] | None:
        return await self.get(node_key(name), kat_pb2.Node)

    async def list_nodes(self) -> builtins.list[Versioned[kat_pb2.Node]]:
        return await self.list(NODES, kat_pb2.Node)

    async def create_node(self, node: kat_pb2.Node) -> int:
        return await self.create(node_key(node.metadata.name), node)

    async def update_node(self, node: kat_pb2.Node, expected_revision: int) -> int:
        return await self.update(node_key(node.metadata.name), node, expected_revision)

    async def delete_node(self, name: str, expected_revision: int | None = None) -> bool:
        return await self.delete(node_key(name), expected_revision)

    # ------------------------------------------------------------ namespaces

    async def get_namespace(self, name: str) -> Versioned[kat_pb2.Namespace] | None:
        return await self.get(namespace_key(name), kat_pb2.Namespace)

    async def list_namespaces(self) -> builtins.list[Versioned[kat_pb2.Namespace]]:
        return await self.list(NAMESPACES, kat_pb2.Namespace)

    async def create_namespace(self, namespace: kat_pb2.Namespace) -> int:
        return await self.create(namespace_key(namespace.metadata.name), namespace)

    async def update_namespace(self, namespace: kat_pb2.Namespace, expected_revision: int) -> int:
        return await self.update(
            namespace_key(namespace.metadata.name), namespace, expected_revision
        )

    async def delete_namespace(self, name: str, expected_revision: int | None = None) -> bool:
        """Delete the namespace record only; see `purge_namespace`."""
        return await self.delete(namespace_key(name), expected_revision)

    async def purge_namespace(
        self, name: str, expected_revision: int | None = None, *, instances: bool = True
    ) -> int:
        """Delete the namespace and everything in it (workloads, revisions,
        instances, events) in one transaction; returns how many keys went.
        With `instances=False` the instance records stay, for the controllers to
        stop them on their nodes before removing them."""
        txn = self.txn().delete(namespace_key(name), expected_revision)
        for prefix in (WORKLOADS, REVISIONS, INSTANCES, EVENTS):
            if prefix != INSTANCES or instances:
                txn.delete_prefix(f"{prefix}{_seg(name, 'namespace')}/")
        return (await txn.commit()).deleted

    # ------------------------------------------------------------ workloads

    async def get_workload(self, namespace: str, name: str) -> Versioned[kat_pb2.Workload] | None:
        return await self.get(workload_key(namespace, name), kat_pb2.Workload)

    async def list_workloads(
        self, namespace: str | None = None
    ) -> builtins.list[Versioned[kat_pb2.Workload]]:
        """Workloads of one namespace, or of all (None)."""
        return await self.list(workloads_prefix(namespace), kat_pb2.Workload)

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
    ) -> int:
        """Store a workload (create when `expected_revision` is None, else update the
        record read at that revision) together with its new stored revision, and prune
        revisions beyond the newest `keep`, all in one transaction. Returns the new mod
        revision of the workload."""
        meta = workload.metadata
        key = workload_key(meta.namespace, meta.name)
        txn = self.txn()
        if expected_revision is None:
            txn.create(key, workload)
        else:
            txn.update(key, workload, expected_revision)
        if revision is not None:
            txn.create(revision_key(meta.namespace, meta.name, revision.revision), revision)
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

    # ------------------------------------------------------------ tokens

    async def get_token(self, token_id: str) -> Versioned[kat_pb2.JoinToken] | None:
        return await self.get(token_key(token_id), kat_pb2.JoinToken)

    async def list_tokens(self) -> builtins.list[Versioned[kat_pb2.JoinToken]]:
        return await self.list(TOKENS, kat_pb2.JoinToken)

    async def create_token(self, token: kat_pb2.JoinToken) -> int:
        return await self.create(token_key(token.id), token)

    async def update_token(self, token: kat_pb2.JoinToken, expected_revision: int) -> int:
        return await self.update(token_key(token.id), token, expected_revision)

    async def delete_token(self, token_id: str, expected_revision: int | None = None) -> bool:
        return await self.delete(token_key(token_id), expected_revision)

    # ------------------------------------------------------------ events

    async def _event_lease_id(self) -> int:
        async with self._event_lock:
            now = time.monotonic()
            if self._event_lease is None or now >= self._event_lease_until:
                ttl = math.ceil(self._event_ttl + self._event_lease_reuse)
                self._event_lease = (await self._etcd.lease_grant(ttl)).id
                self._event_lease_until = now + self._event_lease_reuse
            return self._event_lease

    async def record_event(self, event: kat_pb2.Event) -> kat_pb2.Event:
        """Store an event (expiring after the event TTL); fills in its id and,
        if unset, its timestamp. Returns the stored event."""
        ev = kat_pb2.Event()
        ev.CopyFrom(event)
        if not ev.id:
            ev.id = secrets.token_hex(6)
        if not ev.HasField("timestamp"):
            ev.timestamp.FromDatetime(datetime.now(UTC))
        key = event_key(ev.namespace, ev.timestamp.ToNanoseconds(), ev.id)
        for _ in range(2):
            lease = await self._event_lease_id()
            try:
                await self._etcd.put(key, ev.SerializeToString(), lease=lease)
                return ev
            except LeaseNotFound:  # expired early (e.g. a restored snapshot): take a new one
                async with self._event_lock:
                    if self._event_lease == lease:
                        self._event_lease = None
        raise StoreError(f"could not record event {ev.reason}: its lease keeps vanishing")

    async def list_events(
        self, namespace: str | None = None, limit: int = 0
    ) -> builtins.list[kat_pb2.Event]:
        """Events oldest first: of one namespace ("" for cluster-scoped objects)
        or all (None); with `limit`, only the newest that many."""
        result = await self._etcd.get_prefix(events_prefix(namespace))
        events = [_decode(kat_pb2.Event, kv.value, kv.mod_revision) for kv in result.kvs]
        if namespace is None:
            events.sort(key=lambda e: (e.timestamp.ToNanoseconds(), e.id))
        return events[-limit:] if limit > 0 else events

    # ------------------------------------------------------------ audit

    async def record_audit(self, record: kat_pb2.AuditRecord) -> kat_pb2.AuditRecord:
        """Store an audit record (kept until prune_audit removes it, not on a lease:
        retention is in days and must survive etcd leader changes exactly)."""
        rec = kat_pb2.AuditRecord()
        rec.CopyFrom(record)
        if not rec.id:
            rec.id = secrets.token_hex(6)
        if not rec.HasField("time"):
            rec.time.FromDatetime(datetime.now(UTC))
        await self._etcd.put(audit_key(rec.time.ToNanoseconds(), rec.id), rec.SerializeToString())
        return rec

    async def list_audit(
        self, since: datetime | None = None, limit: int = 0
    ) -> builtins.list[kat_pb2.AuditRecord]:
        """Audit records oldest first, from `since` on; with `limit`, the newest that many."""
        if limit > 0:
            result = await self._etcd.get_prefix(AUDIT, limit=limit, descending=True)
            kvs = list(reversed(result.kvs))
        else:
            kvs = (await self._etcd.get_prefix(AUDIT)).kvs
        records = [_decode(kat_pb2.AuditRecord, kv.value, kv.mod_revision) for kv in kvs]
        if since is not None:
            cut = int(since.timestamp() * 1e9)
            records = [r for r in records if r.time.ToNanoseconds() >= cut]
        return records

    async def prune_audit(self, before: datetime, batch: int = 100) -> int:
        """Delete audit records older than `before`; returns how many went. Reads
        keys oldest first in batches (etcd allows 128 operations per transaction),
        so a pass costs what it removes."""
        cut = audit_key(int(before.timestamp() * 1e9), "0")
        removed = 0
        while True:
            result = await self._etcd.get_prefix(AUDIT, limit=batch, keys_only=True)
            old = [kv.key for kv in result.kvs if kv.key < cut]
            if old:
                await self._etcd.txn([], [Delete(k) for k in old])
                removed += len(old)
            if len(old) < batch:
                return removed

    # ------------------------------------------------------------ IPAM

    async def list_subnets(self) -> dict[str, str]:
        """Allocated node subnets: CIDR -> node name."""
        result = await self._etcd.get_prefix(SUBNETS)
        return {subnet_from_key(kv.key): kv.value.decode() for kv in result.kvs}

    async def subnet_of(self, node_name: str) -> str | None:
        for cidr, owner in (await self.list_subnets()).items():
            if owner == node_name:
                return cidr
        return None

    async def allocate_subnet(self, node_name: str, candidates: Iterable[str]) -> str:
        """The node's subnet: the one it already holds, else the first candidate
        it wins with create-if-absent (safe against concurrent allocations)."""
        held = await self.subnet_of(node_name)
        if held is not None:
            return held
        owner = node_name.encode()
        for cidr in candidates:
            key = subnet_key(cidr)
            result = await self._etcd.txn([Compare.absent(key)], [Put(key, owner)])
            if result.succeeded:
                return cidr
        raise SubnetsExhausted(f"no free subnet left for node {node_name}")

    async def release_subnet(self, cidr: str, node_name: str | None = None) -> bool:
        """Free a subnet (only if `node_name` holds it, when given)."""
        key = subnet_key(cidr)
        guards = [] if node_name is None else [Compare.value_is(key, node_name.encode())]
        result = await self._etcd.txn(guards, [Delete(key)])
        return result.succeeded and result.results[0].deleted > 0
