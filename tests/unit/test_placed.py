"""The placement accounting that follows record changes (internal/core/placed.py) must
always equal a rebuild from the records (Cluster.from_protos), whatever the order of the
changes, and must not count a plan's placements twice."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from api.v1alpha1 import kat_pb2
from internal.core import placed, reconcile, scheduler
from internal.core.reconcile_model import NodeFacts, Observed

_I = kat_pb2.Instance
REQ = scheduler.Requests(cpu_millis=100, memory_bytes=1 << 20, host_ports=frozenset({80}))


def node(name: str) -> kat_pb2.Node:
    n = kat_pb2.Node()
    n.metadata.name = name
    n.status.condition = kat_pb2.NodeStatus.READY
    n.status.allocatable.cpu_millis = 4000
    n.status.allocatable.memory_bytes = 8 << 30
    return n


def record(inst_id: str, node_name: str, phase: int, workload: str = "w") -> kat_pb2.Instance:
    return _I(id=inst_id, namespace="default", workload=workload, node=node_name, phase=phase)


def accounting(cluster: scheduler.Cluster) -> dict[str, tuple[int, int, dict[int, int], dict]]:
    return {
        n.name: (n.cpu_used, n.memory_used, dict(n.ports_used), dict(n.copies))
        for n in cluster.nodes
    }


def test_followed_changes_equal_a_rebuild() -> None:
    rng = random.Random(7)
    nodes = [node(f"n{i}") for i in range(4)]
    phases = [_I.PENDING, _I.SCHEDULED, _I.RUNNING, _I.TERMINATING, _I.SUCCEEDED, _I.FAILED]
    live = placed.PlacedCluster()
    live.rebuild(nodes, [], lambda r: REQ)
    records: dict[str, kat_pb2.Instance] = {}
    for step in range(400):
        inst_id = f"i{rng.randrange(30)}"
        if rng.random() < 0.2 and inst_id in records:
            del records[inst_id]
            live.forget(inst_id)
        else:
            rec = record(
                inst_id, rng.choice(["n0", "n1", "n2", "n3", "", "gone"]), rng.choice(phases)
            )
            records[inst_id] = rec
            live.sync(rec, REQ)
        want = scheduler.Cluster.from_protos(
            nodes, ((r, REQ) for r in records.values() if r.phase != _I.PENDING)
        )
        assert accounting(live.cluster) == accounting(want), f"after step {step}"


def test_a_plans_placements_are_counted_once() -> None:
    nodes = [node("n0"), node("n1")]
    live = placed.PlacedCluster()
    live.rebuild(nodes, [], lambda r: REQ)
    w = kat_pb2.Workload()
    w.metadata.name, w.metadata.namespace, w.metadata.uid = "w", "default", "u"
    w.metadata.generation = 1
    w.spec.type = kat_pb2.WorkloadSpec.SERVICE
    w.spec.replicas = 3
    w.spec.container.resources.requests.cpu = "100m"
    w.spec.container.resources.requests.memory = "1Mi"
    ids = iter(range(100))
    plan = reconcile.plan_workload(
        w,
        kat_pb2.Bundle(),
        [],
        cluster=live.cluster,
        nodes=NodeFacts({"n0": True, "n1": True}),
        observed=Observed({}, {}),
        now=datetime.now(UTC),
        new_id=lambda: f"{next(ids):05d}",
    )
    assert len(plan.creates) == 3
    req = scheduler.WorkloadProfile.from_workload(w).requests
    for inst in plan.creates:  # written: noted, not reserved again
        live.sync(inst, req, reserved=True)
    want = scheduler.Cluster.from_protos(nodes, ((r, req) for r in plan.creates))
    assert accounting(live.cluster) == accounting(want)
    for inst in plan.creates:  # the watch echoes the same records: nothing changes
        live.sync(inst, req)
    assert accounting(live.cluster) == accounting(want)


def test_node_changes_are_noticed() -> None:
    nodes = [node("n0")]
    live = placed.PlacedCluster()
    live.rebuild(nodes, [], lambda r: REQ)
    assert not live.nodes_changed([node("n0")])
    cordoned = node("n0")
    cordoned.spec.unschedulable = True
    assert live.nodes_changed([cordoned])
    assert live.nodes_changed([node("n0"), node("n1")])
