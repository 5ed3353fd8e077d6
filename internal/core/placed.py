"""A scheduler `Cluster` that follows instance record changes instead of being rebuilt
from every node and instance on every reconcile pass. Pure: no I/O.

The leader keeps one `PlacedCluster` per term. `sync` makes the accounting of one instance
match its record (placed: a node, not PENDING, not SUCCEEDED/FAILED, as
`Cluster.from_protos` counts); placements made by `Cluster.schedule` during a plan are
already reserved, so syncing the records a plan wrote only notes them (`placed_by_plan`).
`rebuild` starts over from the nodes and every record (node changes, a failed write, the
periodic full pass), which is also what a new leader starts with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from api.v1alpha1 import kat_pb2
from internal.core import scheduler

_PENDING = kat_pb2.Instance.PENDING
RequestsOf = Callable[[kat_pb2.Instance], scheduler.Requests]


@dataclass(frozen=True, slots=True)
class _Entry:
    node: str
    key: str
    req: scheduler.Requests
    gpu: int | None  # the device charged; None: charged by Cluster.schedule, not known


def is_placed(inst: kat_pb2.Instance) -> bool:
    return (
        bool(inst.node) and inst.phase != _PENDING and inst.phase not in scheduler.TERMINAL_PHASES
    )


def node_facts(node: kat_pb2.Node) -> tuple[object, ...]:
    """What placement reads from a node record: a change of it needs a rebuild."""
    alloc = node.status.allocatable
    return (
        node.status.condition,
        node.spec.unschedulable,
        tuple(sorted(node.metadata.labels.items())),
        tuple((t.key, t.value, t.effect) for t in node.spec.taints),
        alloc.cpu_millis,
        alloc.memory_bytes,
        tuple((g.driver, g.vram_mb) for g in alloc.gpus),
    )


class PlacedCluster:
    def __init__(self) -> None:
        self.cluster = scheduler.Cluster(())
        self._entries: dict[str, _Entry] = {}
        self._facts: dict[str, tuple[object, ...]] = {}
        self._states: dict[str, scheduler.NodeState] = {}  # per node, nothing placed

    def nodes_changed(self, nodes: Iterable[kat_pb2.Node]) -> bool:
        """Whether what placement reads from the nodes differs from the last rebuild."""
        facts = {n.metadata.name: node_facts(n) for n in nodes}
        return facts != self._facts

    def rebuild(
        self,
        nodes: Iterable[kat_pb2.Node],
        records: Iterable[kat_pb2.Instance],
        requests_of: RequestsOf,
    ) -> None:
        states: dict[str, scheduler.NodeState] = {}
        facts: dict[str, tuple[object, ...]] = {}
        for n in nodes:
            name = n.metadata.name
            f = node_facts(n)
            facts[name] = f
            old = self._states.get(name)
            states[name] = (
                old.fresh()
                if old is not None and self._facts.get(name) == f
                else scheduler.NodeState.from_proto(n)
            )
        self._facts, self._states = facts, {k: v.fresh() for k, v in states.items()}
        self.cluster = scheduler.Cluster(states.values())
        self._entries = {}
        for r in records:
            self.sync(r, requests_of(r))

    def sync(self, inst: kat_pb2.Instance, req: scheduler.Requests, reserved: bool = False) -> None:
        """Make the accounting of `inst` match the record. `reserved`: a plan made on this
        cluster placed it just now (a new or PENDING record that is placed now), so
        `Cluster.schedule` or `place_on` reserved it already."""
        entry = self._entries.get(inst.id)
        key = scheduler.workload_key(inst.namespace, inst.workload)
        want = is_placed(inst)
        if entry is not None:
            if want and entry.node == inst.node and entry.key == key and entry.req == req:
                return
            self._release(inst.id, entry)
        if not want:
            return
        state = self.cluster.node(inst.node)
        if state is None:
            return  # an unknown node holds nothing (as in Cluster.from_protos)
        gpu = None if reserved else state.reserve(key, req)
        self._entries[inst.id] = _Entry(inst.node, key, req, gpu)

    def forget(self, instance_id: str) -> None:
        """The record is gone."""
        entry = self._entries.get(instance_id)
        if entry is not None:
            self._release(instance_id, entry)

    def _release(self, instance_id: str, entry: _Entry) -> None:
        del self._entries[instance_id]
        state = self.cluster.node(entry.node)
        if state is not None:
            state.release(entry.key, entry.req, entry.gpu)
