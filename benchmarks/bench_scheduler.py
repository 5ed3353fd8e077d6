"""Scheduler and rollout planner speed, in-process.

    python3 benchmarks/bench_scheduler.py

Places 10,000 instances (100 workloads x 100 replicas, mixed requests, some node selectors
and tolerations) on 1,000 nodes (some tainted, some labelled, some with GPUs) and prints the
time (target: under 1 s), then the time of one rollout-planner reconcile over 30 replicas.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.v1alpha1 import kat_pb2  # noqa: E402
from internal.core import rollout, scheduler

RUNNING = kat_pb2.Instance.RUNNING
NODES = 1000
WORKLOADS = 100
REPLICAS = 100


def make_nodes() -> list[kat_pb2.Node]:
    nodes = []
    for i in range(NODES):
        node = kat_pb2.Node()
        node.metadata.name = f"node-{i:04d}"
        node.metadata.labels["zone"] = f"z{i % 3}"
        if i % 10 == 0:
            node.metadata.labels["disk"] = "ssd"
        node.status.condition = (
            kat_pb2.NodeStatus.NOT_READY if i % 97 == 0 else kat_pb2.NodeStatus.READY
        )
        node.spec.unschedulable = i % 89 == 0
        if i % 7 == 0:
            node.spec.taints.add(key="dedicated", value="db", effect=kat_pb2.Taint.NO_SCHEDULE)
        if i % 11 == 0:
            node.spec.taints.add(key="spot", effect=kat_pb2.Taint.PREFER_NO_SCHEDULE)
        alloc = node.status.allocatable
        alloc.cpu_millis = (4 + 4 * (i % 4)) * 1000
        alloc.memory_bytes = (8 + 8 * (i % 4)) * 2**30
        if i % 50 == 0:
            alloc.gpus.add(driver=kat_pb2.GPURequest.NVIDIA, vram_mb=24000)
        nodes.append(node)
    return nodes


def make_profiles() -> list[scheduler.WorkloadProfile]:
    profiles = []
    for w in range(WORKLOADS):
        wl = kat_pb2.Workload()
        wl.metadata.name = f"app-{w:03d}"
        wl.metadata.namespace = "default"
        wl.spec.type = kat_pb2.WorkloadSpec.SERVICE
        wl.spec.replicas = REPLICAS
        req = wl.spec.container.resources.requests
        req.cpu = f"{50 + 25 * (w % 8)}m"
        req.memory = f"{64 * (1 + w % 6)}Mi"
        if w % 5 == 0:
            wl.spec.node_selector["zone"] = f"z{w % 3}"
        if w % 20 == 0:
            wl.spec.node_selector["disk"] = "ssd"
        if w % 4 == 0:
            wl.spec.tolerations.add(
                key="dedicated",
                operator=kat_pb2.Toleration.EXISTS,
                effect=kat_pb2.Taint.NO_SCHEDULE,
            )
        if w % 25 == 0:
            wl.spec.container.resources.gpu.driver = kat_pb2.GPURequest.ANY
            wl.spec.container.resources.gpu.min_vram_mb = 100
        profiles.append(scheduler.WorkloadProfile.from_workload(wl))
    return profiles


def bench_scheduler() -> None:
    nodes = make_nodes()
    profiles = make_profiles()
    t0 = time.perf_counter()
    cluster = scheduler.Cluster.from_protos(nodes)
    t1 = time.perf_counter()
    placed = unplaced = 0
    for profile in profiles:
        result = cluster.schedule(profile, REPLICAS)
        placed += len(result.nodes)
        unplaced += result.unplaced
    t2 = time.perf_counter()
    print(
        f"scheduler: placed {placed} instances ({unplaced} unplaceable) of {WORKLOADS} workloads"
        f" on {NODES} nodes in {t2 - t0:.3f} s"
        f" (node conversion {t1 - t0:.3f} s, placement {t2 - t1:.3f} s; target < 1 s)"
    )
    # The next reconcile rebuilds the accounting from the stored instances.
    existing = []
    for profile in profiles:
        ns, name = profile.key.split("/")
        for n in cluster.nodes:
            inst = kat_pb2.Instance(workload=name, namespace=ns, node=n.name, phase=RUNNING)
            existing.extend([(inst, profile.requests)] * n.copies.get(profile.key, 0))
    t3 = time.perf_counter()
    scheduler.Cluster.from_protos(nodes, existing)
    t4 = time.perf_counter()
    print(
        f"scheduler: rebuilding the accounting of {len(existing)} placed instances on"
        f" {NODES} nodes takes {t4 - t3:.3f} s"
    )


def bench_rollout() -> None:
    replicas, gen = 30, 2
    now = datetime(2024, 1, 1, tzinfo=UTC)
    instances = [
        rollout.InstanceView(f"old-{i}", generation=1, phase=kat_pb2.Instance.RUNNING, ready=True)
        for i in range(25)
    ] + [
        rollout.InstanceView(
            f"new-{i}", generation=gen, phase=kat_pb2.Instance.RUNNING, ready=i < 4
        )
        for i in range(6)
    ]
    strategy = kat_pb2.UpdateStrategy(type=kat_pb2.UpdateStrategy.ROLLING, max_surge="25%")
    progress = rollout.Progress(generation=gen, since=now)
    runs = 10_000
    t0 = time.perf_counter()
    for _ in range(runs):
        rollout.plan_rollout(
            replicas=replicas,
            generation=gen,
            strategy=strategy,
            instances=instances,
            now=now,
            progress=progress,
        )
    per = (time.perf_counter() - t0) / runs
    print(f"rollout planner: one reconcile over {replicas} replicas takes {per * 1e6:.1f} us")


if __name__ == "__main__":
    bench_scheduler()
    bench_rollout()
