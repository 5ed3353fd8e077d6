from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from internal.state.etcd import EtcdClient
from internal.state.etcd_process import EtcdProcess
from internal.state.etcd_values import EtcdUnavailable, LeaseNotFound
from internal.state.keys import (
    NODES,
    WORKLOADS,
    event_key,
    namespace_key,
    node_key,
    revision_key,
    workload_key,
)
from internal.state.kv import (
    AlreadyExists,
    Compacted,
    EventType,
    NotLeader,
    StaleWrite,
    SubnetsExhausted,
)
from internal.state.store import Store
from tests.helpers import EtcdEnv, PkiFiles, env_of, free_port, requires_etcd, wait_until

pytestmark = requires_etcd


@contextlib.asynccontextmanager
async def open_store(env: EtcdEnv, **kw: float) -> AsyncIterator[Store]:
    async with env.client() as client:
        yield Store(client, **kw)


def node(name: str, subnet: str = "") -> kat_pb2.Node:
    n = kat_pb2.Node(api_version="kat.dws.rip/v1alpha1", kind="Node")
    n.metadata.name = name
    n.metadata.labels["zone"] = "a"
    n.status.subnet = subnet
    n.status.condition = kat_pb2.NodeStatus.READY
    return n


def workload(ns: str, name: str, image: str = "busybox") -> kat_pb2.Workload:
    w = kat_pb2.Workload(kind="Workload")
    w.metadata.namespace, w.metadata.name = ns, name
    w.spec.type = kat_pb2.WorkloadSpec.SERVICE
    w.spec.source.image = image
    return w


def instance(ns: str, wl: str, iid: str, node_name: str) -> kat_pb2.Instance:
    return kat_pb2.Instance(id=iid, workload=wl, namespace=ns, node=node_name)


async def test_typed_round_trip_sets_resource_version(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        rev = await store.create_node(node("n1", "10.100.0.0/23"))
        got = await store.get_node("n1")
        assert got is not None and got.mod_revision == rev == got.create_revision
        assert got.msg.metadata.resource_version == rev
        got.msg.metadata.resource_version = 0
        assert got.msg == node("n1", "10.100.0.0/23")
        raw = await store.etcd.get(node_key("n1"))  # stored as protobuf bytes
        assert raw is not None and kat_pb2.Node.FromString(raw.value).metadata.name == "n1"
        assert await store.get_node("missing") is None

        inst = instance("default", "web", "abc", "n1")
        irev = await store.create_instance(inst)
        got_inst = await store.get_instance("default", "web", "abc")
        assert got_inst is not None and got_inst.msg.resource_version == irev


async def test_create_conflict(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        await store.create_namespace(kat_pb2.Namespace(metadata=kat_pb2.ObjectMeta(name="team")))
        with pytest.raises(AlreadyExists) as err:
            await store.create_namespace(
                kat_pb2.Namespace(metadata=kat_pb2.ObjectMeta(name="team"))
            )
        assert err.value.key == namespace_key("team")


async def test_concurrent_writers_one_wins_the_rest_are_refused(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        rev = await store.create_workload(workload("default", "web"))

        async def write(i: int) -> int:
            return await store.update_workload(workload("default", "web", f"img:{i}"), rev)

        results = await asyncio.gather(*(write(i) for i in range(10)), return_exceptions=True)
        won = [i for i, r in enumerate(results) if isinstance(r, int)]
        assert len(won) == 1
        stale = [r for r in results if isinstance(r, StaleWrite)]
        assert len(stale) == 9 and all(s.expected == rev and s.actual > rev for s in stale)
        got = await store.get_workload("default", "web")
        assert got is not None and got.msg.spec.source.image == f"img:{won[0]}"


async def test_read_modify_write_with_retry_loses_nothing(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        await store.create_token(kat_pb2.JoinToken(id="t1"))

        async def use() -> None:
            while True:
                cur = await store.get_token("t1")
                assert cur is not None
                cur.msg.uses += 1
                try:
                    await store.update_token(cur.msg, cur.mod_revision)
                    return
                except StaleWrite:
                    continue

        await asyncio.gather(*(use() for _ in range(10)))
        final = await store.get_token("t1")
        assert final is not None and final.msg.uses == 10


async def test_delete_if_revision(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        rev = await store.create_token(kat_pb2.JoinToken(id="t1"))
        with pytest.raises(StaleWrite):
            await store.delete_token("t1", expected_revision=rev - 1)
        assert await store.get_token("t1") is not None
        assert await store.delete_token("t1", expected_revision=rev)
        assert await store.get_token("t1") is None
        with pytest.raises(StaleWrite) as err:
            await store.delete_token("t1", expected_revision=rev)
        assert err.value.deleted
        assert not await store.delete_token("t1")
        with pytest.raises(StaleWrite) as err2:  # updating a deleted object is stale too
            await store.update_token(kat_pb2.JoinToken(id="t1"), rev)
        assert err2.value.deleted


async def test_lists_by_prefix(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        for ns, name in [("a", "web"), ("a", "db"), ("ab", "web"), ("b", "x")]:
            await store.create_workload(workload(ns, name))
        assert [w.msg.metadata.name for w in await store.list_workloads("a")] == ["db", "web"]
        assert len(await store.list_workloads()) == 4
        items, revision = await store.list_with_revision(WORKLOADS, kat_pb2.Workload)
        assert revision >= max(i.mod_revision for i in items)

        await store.create_instance(instance("a", "web", "i1", "n1"))
        await store.create_instance(instance("a", "web", "i2", "n2"))
        await store.create_instance(instance("a", "webx", "i3", "n1"))
        assert [i.msg.id for i in await store.list_instances("a", "web")] == ["i1", "i2"]
        assert [i.msg.id for i in await store.list_instances(node="n1")] == ["i1", "i3"]

        for r in (1, 2, 3, 11, 12):
            await store.add_workload_revision("a", "web", kat_pb2.WorkloadRevision(revision=r))
        revs = await store.list_workload_revisions("a", "web")
        assert [r.msg.revision for r in revs] == [1, 2, 3, 11, 12]  # numeric, not text, order
        assert await store.prune_workload_revisions("a", "web", keep=2) == 3
        assert [r.msg.revision for r in await store.list_workload_revisions("a", "web")] == [11, 12]

        assert await store.delete_workload("a", "web")
        assert await store.list_workload_revisions("a", "web") == []
        assert await store.purge_namespace("a") == 4  # db, i1, i2, i3
        assert len(await store.list_workloads()) == 2

        with pytest.raises(ValueError):
            await store.get_workload("a/b", "web")


async def test_multi_key_transaction_is_atomic(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        rev = await store.create_workload(workload("default", "web"))
        wkey = workload_key("default", "web")
        result = await (
            store.txn()
            .update(wkey, workload("default", "web", "v2"), rev)
            .create(revision_key("default", "web", 2), kat_pb2.WorkloadRevision(revision=2))
            .commit()
        )
        got = await store.get_workload("default", "web")
        assert got is not None and got.mod_revision == result.revision
        stale = (
            store.txn()
            .update(wkey, workload("default", "web", "v3"), rev)  # rev is stale now
            .create(revision_key("default", "web", 3), kat_pb2.WorkloadRevision(revision=3))
        )
        with pytest.raises(StaleWrite):
            await stale.commit()
        assert await store.get_workload_revision("default", "web", 3) is None

        with pytest.raises(NotLeader):
            await store.txn().require_leader(12345).delete(wkey).commit()
        assert await store.get_workload("default", "web") is not None


async def test_cluster_config_and_uid_put_once(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        assert await store.get_cluster_uid() is None
        assert await store.ensure_cluster_uid("uid-1") == "uid-1"
        assert await store.ensure_cluster_uid("uid-2") == "uid-1"
        assert await store.get_cluster_uid() == "uid-1"
        cfg = kat_pb2.ClusterConfiguration(kind="ClusterConfiguration")
        cfg.spec.cluster_cidr = "10.100.0.0/16"
        rev = await store.put_cluster_config(cfg)
        with pytest.raises(AlreadyExists):
            await store.put_cluster_config(cfg)
        cfg.spec.agent_tick_seconds = 5
        rev2 = await store.put_cluster_config(cfg, rev)
        got = await store.get_cluster_config()
        assert got is not None and got.mod_revision == rev2 and got.msg.spec.agent_tick_seconds == 5


async def test_watch_delivers_typed_events_in_order(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        await store.create_node(node("before"))
        _, revision = await store.list_with_revision(NODES, kat_pb2.Node)
        events = store.watch(NODES, kat_pb2.Node, revision + 1)
        async with contextlib.aclosing(events):
            rev = await store.create_node(node("n1"))
            await store.update_node(node("n1", "10.0.0.0/23"), rev)
            await store.delete_node("n1")
            seen = [await anext(events) for _ in range(3)]
        assert [(e.type, e.key) for e in seen] == [
            (EventType.PUT, node_key("n1")),
            (EventType.PUT, node_key("n1")),
            (EventType.DELETE, node_key("n1")),
        ]
        assert seen[0].msg is not None and seen[0].msg.metadata.resource_version == rev
        assert seen[2].msg is not None and seen[2].msg.status.subnet == "10.0.0.0/23"
        assert seen[0].revision < seen[1].revision < seen[2].revision


async def test_watch_of_compacted_history_says_so(etcd: EtcdEnv) -> None:
    async with open_store(etcd) as store:
        first = await store.create_node(node("n1"))
        for i in range(3):
            await store.update_node(node("n1", f"10.0.{i}.0/24"), first + i)
        await store.etcd.compact(first + 2)
        events = store.watch(NODES, kat_pb2.Node, first)
        async with contextlib.aclosing(events):
            with pytest.raises(Compacted) as err:
                await anext(events)
        assert err.value.compact_revision == first + 2


@pytest.mark.async_timeout(40)
async def test_watch_resumes_after_etcd_restart_without_gaps(
    etcd_factory: Callable[..., EtcdProcess], pki_dir: PkiFiles
) -> None:
    proc = etcd_factory()
    env = env_of(proc, pki_dir)
    async with proc, open_store(env) as store, env.client(timeout=1.0) as writer:
        start = await store.revision() + 1
        events = store.watch(NODES, kat_pb2.Node, start)
        async with contextlib.aclosing(events):
            for i in range(3):
                await writer.put(node_key(f"a{i}"), node(f"a{i}").SerializeToString())
            got = [(await anext(events)).key for _ in range(3)]
            pid = proc.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda: proc.restarts == 1, message="etcd to be restarted")
            await proc.wait_healthy(15)
            # Written while the watch is still reconnecting; must all arrive, once.
            for i in range(5):
                await writer.put(node_key(f"b{i}"), node(f"b{i}").SerializeToString())
            got += [(await asyncio.wait_for(anext(events), 15)).key for _ in range(5)]
            await writer.put(node_key("last"), b"")
            assert (await asyncio.wait_for(anext(events), 15)).key == node_key("last")
    names = [k.removeprefix(NODES) for k in got]
    assert names == ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "b4"]


async def test_ipam_concurrent_allocations_get_distinct_subnets(etcd: EtcdEnv) -> None:
    candidates = [f"10.100.{2 * i}.0/23" for i in range(64)]
    async with open_store(etcd) as store:
        got = await asyncio.gather(
            *(store.allocate_subnet(f"node{i}", candidates) for i in range(20))
        )
        assert len(set(got)) == 20
        allocations = await store.list_subnets()
        assert allocations == {cidr: f"node{i}" for i, cidr in enumerate(got)}
        assert await store.allocate_subnet("node3", candidates) == got[3]  # idempotent
        assert await store.subnet_of("node3") == got[3]
        assert not await store.release_subnet(got[3], node_name="node4")
        assert await store.release_subnet(got[3], node_name="node3")
        assert await store.allocate_subnet("late", candidates) == got[3]  # freed, reused
        with pytest.raises(SubnetsExhausted):
            await store.allocate_subnet("nobody", candidates[:5])


async def test_events_share_a_lease_and_expire(etcd: EtcdEnv) -> None:
    async with open_store(etcd, event_ttl=1, event_lease_reuse=1) as store:
        e1 = await store.record_event(
            kat_pb2.Event(reason="Scheduled", namespace="default", object_name="web")
        )
        e2 = await store.record_event(kat_pb2.Event(reason="NodeReady", object_name="n1"))
        assert e1.id and e1.HasField("timestamp")
        keys = [event_key(e.namespace, e.timestamp.ToNanoseconds(), e.id) for e in (e1, e2)]
        kvs = [await store.etcd.get(k) for k in keys]
        assert all(kv is not None and kv.lease for kv in kvs)
        assert kvs[0].lease == kvs[1].lease  # type: ignore[union-attr]
        assert [e.reason for e in await store.list_events()] == ["Scheduled", "NodeReady"]
        assert [e.reason for e in await store.list_events("")] == ["NodeReady"]
        assert [e.reason for e in await store.list_events("default")] == ["Scheduled"]
        assert [e.reason for e in await store.list_events(limit=1)] == ["NodeReady"]

        async def gone() -> bool:
            return not await store.list_events()

        await wait_until(gone, within=10, message="events to expire with their lease")


async def test_unavailable_is_raised_quickly(
    etcd_factory: Callable[..., EtcdProcess], pki_dir: PkiFiles
) -> None:
    nobody = EtcdClient(
        [f"127.0.0.1:{free_port()}"],
        ca_file=pki_dir.ca_cert,
        cert_file=pki_dir.etcd_cert,
        key_file=pki_dir.etcd_key,
        timeout=1.0,
    )
    async with nobody:
        t = time.monotonic()
        with pytest.raises(EtcdUnavailable, match="unavailable"):
            await Store(nobody).get_node("n1")
        assert time.monotonic() - t < 2.5

    proc = etcd_factory()
    env = env_of(proc, pki_dir)
    async with proc:
        client = env.client(timeout=1.0)
    async with client:  # etcd is stopped now
        t = time.monotonic()
        with pytest.raises(EtcdUnavailable) as err:
            await Store(client).create_node(node("n1"))
        assert time.monotonic() - t < 2.5
        assert proc.client_endpoints[0] in str(err.value)


async def test_snapshot_to_a_private_file(etcd: EtcdEnv, tmp_path: Path) -> None:
    async with open_store(etcd) as store:
        await store.create_node(node("n1"))
        path = tmp_path / "backups" / "snap.db"
        size = await store.etcd.snapshot(path)
        assert size > 0 and path.stat().st_size == size
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds every secret in etcd
        assert [p.name for p in path.parent.iterdir()] == ["snap.db"]


async def test_a_workload_and_its_event_commit_together_and_a_vanished_lease_writes_neither(
    etcd: EtcdEnv,
) -> None:
    async with open_store(etcd) as store:
        ev = kat_pb2.Event(reason="Applied", message="created by tester", namespace="default")
        put = await store.event_put(ev)
        await store.commit_workload(workload("default", "web"), None, also=[put])
        assert await store.get_workload("default", "web") is not None
        assert [e.reason for e in await store.list_events("default")] == ["Applied"]

        # The event lease went early (a restored snapshot): the whole commit fails and
        # nothing is stored; the next event_put takes a new lease.
        second = await store.event_put(ev)
        await store.etcd.lease_revoke(second.lease)
        with pytest.raises(LeaseNotFound):
            await store.commit_workload(workload("default", "db"), None, also=[second])
        assert await store.get_workload("default", "db") is None
        await store.lease_vanished(second)
        third = await store.event_put(ev)
        assert third.lease != second.lease
        await store.commit_workload(workload("default", "db"), None, also=[third])
        assert await store.get_workload("default", "db") is not None
        # record_event takes a new lease by itself the same way.
        await store.etcd.lease_revoke(third.lease)
        assert (await store.record_event(ev)).id
