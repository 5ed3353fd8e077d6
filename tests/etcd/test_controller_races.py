"""The workload controller against a real etcd when its two watches (instances, workloads)
disagree for a moment: a pass must not write a plan made from a workload record that is no
longer current. Deterministic: the controller's in-memory views are set to what the watches
would have delivered so far, then one pass runs (kat_agent/leader/controllers.py)."""

from __future__ import annotations

from api.v1alpha1 import kat_pb2
from internal.state.store import Store
from kat_agent.leader.context import LeaderContext
from kat_agent.leader.controllers import WorkloadController
from kat_agent.leader.nodes import NodeRegistry
from tests.helpers import EtcdEnv, PkiFiles, requires_etcd

pytestmark = requires_etcd

P = kat_pb2.Instance


async def controller(store: Store, pki_dir: PkiFiles) -> WorkloadController:
    """A controller whose cluster is one READY node, n1 (with room for a few instances)."""
    n = kat_pb2.Node(api_version="kat.dws.rip/v1alpha1", kind="Node")
    n.metadata.name = "n1"
    n.status.condition = kat_pb2.NodeStatus.READY
    n.status.allocatable.cpu_millis, n.status.allocatable.memory_bytes = 4000, 4 << 30
    await store.create_node(n)
    config = kat_pb2.ClusterConfiguration()
    lc = LeaderContext(
        store=store,
        config=config,
        cluster_uid="test",
        node_name="node1",
        api_address="127.0.0.1:1",
        ca_cert=pki_dir.ca_cert.read_bytes(),
        ca_key=None,
        registry=NodeRegistry(store, config.spec),
        etcd_ca=None,
        node_cert=pki_dir.node_cert.read_bytes(),
        node_key=pki_dir.node_key.read_bytes(),
    )
    await lc.registry.load()
    return WorkloadController(lc)


def service(name: str, replicas: int = 1) -> kat_pb2.Workload:
    w = kat_pb2.Workload(kind="Workload")
    w.metadata.namespace, w.metadata.name, w.metadata.uid = "default", name, f"uid-{name}"
    w.metadata.generation = 1
    w.spec.type = kat_pb2.WorkloadSpec.SERVICE
    w.spec.source.image = "busybox"
    w.spec.replicas = replicas
    w.status.template_generation = 1
    return w


async def stored(store: Store, w: kat_pb2.Workload, phase: int) -> tuple[kat_pb2.Workload, P]:
    """The workload and one instance of it on node n1, as etcd has them."""
    rev = await store.commit_workload(w, None)
    w.metadata.resource_version = rev
    inst = P(id=f"{w.metadata.name}-aaaaa", workload=w.metadata.name, namespace="default")
    inst.node, inst.generation, inst.phase = "n1", 1, phase
    await store.write_instances([inst])
    got = await store.get_instance("default", w.metadata.name, inst.id)
    assert got is not None
    return w, got.msg


async def test_a_pass_that_sees_a_deletes_instances_before_the_workload_goes_writes_nothing(
    etcd: EtcdEnv, pki_dir: PkiFiles
) -> None:
    async with etcd.client() as client:
        store = Store(client)
        w, inst = await stored(store, service("gone"), P.RUNNING)
        # The delete, as the API does it: the instance TERMINATING and the workload
        # removed in one transaction.
        stopping = P()
        stopping.CopyFrom(inst)
        stopping.phase, stopping.message = P.TERMINATING, "stopping: its workload was deleted"
        await store.delete_workload("default", "gone", stop=[(stopping, inst.resource_version)])
        now = await store.get_instance("default", "gone", inst.id)
        assert now is not None

        # The instance watch has delivered the delete's change, the workload watch not yet.
        c = await controller(store, pki_dir)
        c._workloads = {("default", "gone"): w}
        c._workloads_loaded.set()
        c.view._reset([now.msg], now.mod_revision)
        await c.reconcile_once(full=True)

        left = await store.list_instances("default", "gone")
        assert [v.msg.id for v in left] == [inst.id], "a deleted workload got a new instance"
        events = await store.list_events("default")
        assert not [e for e in events if e.reason == "Scheduled"], "an event told of it"


async def test_a_plan_from_an_older_spec_is_not_written(etcd: EtcdEnv, pki_dir: PkiFiles) -> None:
    async with etcd.client() as client:
        store = Store(client)
        old, inst = await stored(store, service("scaled", replicas=3), P.RUNNING)
        # Scaled from 3 to 1 by an apply that the workload watch has not delivered yet:
        # the pass plans two more instances from the older record; they must not land.
        newer = kat_pb2.Workload()
        newer.CopyFrom(old)
        newer.spec.replicas = 1
        await store.update_workload(newer, old.metadata.resource_version)
        c = await controller(store, pki_dir)
        c._workloads = {("default", "scaled"): old}
        c._workloads_loaded.set()
        c.view._reset([inst], inst.resource_version)
        await c.reconcile_once(full=True)
        left = await store.list_instances("default", "scaled")
        assert [v.msg.id for v in left] == [inst.id], "instances planned from 3 replicas"

        # Once the watch brings the current record, the next pass plans from it.
        current = await store.get_workload("default", "scaled")
        assert current is not None
        c._workloads = {("default", "scaled"): current.msg}
        await c.reconcile_once()
        left = await store.list_instances("default", "scaled")
        assert [v.msg.id for v in left] == [inst.id]
