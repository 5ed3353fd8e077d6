"""Cluster state in etcd: typed reads and guarded writes of every record under
/kat/. Keys come from `internal.state.keys` (the one owner of the layout); the
generic typed layer is `internal.state.kv`; workload, revision and instance
records are `internal.state.store_workloads`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime

from api.v1alpha1 import kat_pb2
from internal.state.etcd import EtcdClient
from internal.state.etcd_values import Compare, Delete, Get, LeaseNotFound, Put
from internal.state.keys import (
    CA_MATERIAL_KEY,
    CLUSTER_CONFIG_KEY,
    CLUSTER_UID_KEY,
    EVENTS,
    INGRESS_CERTS,
    INSTANCES,
    LEADER_KEY,
    NAMESPACES,
    NODES,
    REVISIONS,
    SUBNETS,
    TOKENS,
    WORKLOADS,
    event_key,
    events_prefix,
    ingress_cert_key,
    namespace_key,
    node_key,
    segment,
    subnet_from_key,
    subnet_key,
    token_key,
)
from internal.state.kv import (
    AlreadyExists,
    StoreError,
    SubnetsExhausted,
    Versioned,
    WatchEvent,
    decode,
    versioned,
)
from internal.state.store_audit import AuditRecords
from internal.state.store_certs import CertificateRecords
from internal.state.store_pki import PkiRecords
from internal.state.store_workloads import WorkloadRecords

# ---------------------------------------------------------------- the store


class Store(WorkloadRecords, AuditRecords, PkiRecords, CertificateRecords):
    """Typed access to KAT's state in etcd."""

    def __init__(
        self,
        etcd: EtcdClient,
        *,
        event_ttl: float = 3600.0,
        event_lease_reuse: float = 600.0,
    ) -> None:
        super().__init__(etcd)
        # Events share one lease per `event_lease_reuse` seconds instead of one
        # lease each; the lease lives ttl + reuse so every event lives >= ttl.
        self._event_ttl = event_ttl
        self._event_lease_reuse = event_lease_reuse
        self._event_lease: int | None = None
        self._event_lease_until = 0.0
        self._event_lock = asyncio.Lock()

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
        return result.succeeded, versioned(kat_pb2.ClusterInfo, kv), result.revision

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
                txn.delete_prefix(f"{prefix}{segment(name, 'namespace')}/")
        return (await txn.commit()).deleted

    # ------------------------------------------------------------ ingress certificates

    async def get_ingress_cert(self, host: str) -> kat_pb2.IngressKeyPair | None:
        found = await self.get(ingress_cert_key(host), kat_pb2.IngressKeyPair)
        return None if found is None else found.msg

    async def list_ingress_certs(self) -> builtins.list[kat_pb2.IngressKeyPair]:
        return [v.msg for v in await self.list(INGRESS_CERTS, kat_pb2.IngressKeyPair)]

    async def put_ingress_cert(self, cert: kat_pb2.IngressKeyPair) -> None:
        """Create or replace the host's certificate and key (last writer wins)."""
        key = ingress_cert_key(cert.certificate.host)
        found = await self.get(key, kat_pb2.IngressKeyPair)
        if found is None:
            await self.create(key, cert)
        else:
            await self.update(key, cert, found.mod_revision)

    async def delete_ingress_cert(self, host: str) -> bool:
        return await self.delete(ingress_cert_key(host))

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

    async def event_put(self, event: kat_pb2.Event) -> Put:
        """The write that stores an event (expiring after the event TTL), to send alone
        (record_event) or inside another transaction; fills in its id and, if unset, its
        timestamp. A write that meets LeaseNotFound: `lease_vanished`, then a new one."""
        ev = kat_pb2.Event()
        ev.CopyFrom(event)
        if not ev.id:
            ev.id = secrets.token_hex(6)
        if not ev.HasField("timestamp"):
            ev.timestamp.FromDatetime(datetime.now(UTC))
        key = event_key(ev.namespace, ev.timestamp.ToNanoseconds(), ev.id)
        return Put(key, ev.SerializeToString(), await self._event_lease_id())

    async def lease_vanished(self, put: Put) -> None:
        """The event lease expired early (e.g. a restored snapshot): take a new one."""
        async with self._event_lock:
            if self._event_lease == put.lease:
                self._event_lease = None

    async def record_event(self, event: kat_pb2.Event) -> kat_pb2.Event:
        """Store an event (expiring after the event TTL); fills in its id and,
        if unset, its timestamp. Returns the stored event."""
        for _ in range(2):
            put = await self.event_put(event)
            try:
                await self._etcd.put(put.key, put.value, lease=put.lease)
                return kat_pb2.Event.FromString(put.value)
            except LeaseNotFound:
                await self.lease_vanished(put)
        raise StoreError(f"could not record event {event.reason}: its lease keeps vanishing")

    async def list_events_with_revision(
        self, namespace: str | None = None
    ) -> tuple[builtins.list[kat_pb2.Event], int]:
        """Events oldest first (as list_events) and the store revision they were read at."""
        items, revision = await self.list_with_revision(events_prefix(namespace), kat_pb2.Event)
        events = [v.msg for v in items]
        events.sort(key=lambda e: (e.timestamp.ToNanoseconds(), e.id))
        return events, revision

    def watch_events(
        self, namespace: str | None = None, start_revision: int | None = None
    ) -> AsyncIterator[WatchEvent[kat_pb2.Event]]:
        """New events of one namespace, or of all (None)."""
        return self.watch(events_prefix(namespace), kat_pb2.Event, start_revision)

    async def list_events(
        self, namespace: str | None = None, limit: int = 0
    ) -> builtins.list[kat_pb2.Event]:
        """Events oldest first: of one namespace ("" for cluster-scoped objects)
        or all (None); with `limit`, only the newest that many."""
        result = await self._etcd.get_prefix(events_prefix(namespace))
        events = [decode(kat_pb2.Event, kv.value, kv.mod_revision) for kv in result.kvs]
        if namespace is None:
            events.sort(key=lambda e: (e.timestamp.ToNanoseconds(), e.id))
        return events[-limit:] if limit > 0 else events

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
