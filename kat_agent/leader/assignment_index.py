"""What every node should run, kept up to date per workload: the workload controller
hands over the records of each workload it planned, and only what changed is
published (`AssignmentBook.publish_changes`). An unchanged record
keeps its Assignment object (no copy of its bundle), so the book sees it unchanged by
identity."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from api.v1alpha1 import kat_pb2
from internal.core.assignments import assignment_key, build_assignment, is_assigned

WorkloadKey = tuple[str, str]
_Entry = tuple[tuple[object, ...], kat_pb2.Bundle | None, kat_pb2.Assignment]


class AssignmentIndex:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}  # instance id -> (key, bundle, assignment)
        self._ids: dict[WorkloadKey, set[str]] = {}
        self.by_node: dict[str, dict[str, kat_pb2.Assignment]] = {}
        # per node, since the last take_changes: assignments (re)built, ids removed
        self._changes: dict[str, tuple[dict[str, kat_pb2.Assignment], set[str]]] = {}

    def update_workload(
        self,
        key: WorkloadKey,
        records: Iterable[kat_pb2.Instance],
        bundle_for: Callable[[kat_pb2.Instance], kat_pb2.Bundle | None],
    ) -> None:
        """Replace the workload's assignments with those of `records` (all its records)."""
        ids: set[str] = set()
        for rec in records:
            if not is_assigned(rec):
                continue
            ids.add(rec.id)
            bundle = bundle_for(rec)
            akey = assignment_key(rec)
            hit = self._entries.get(rec.id)
            if hit is not None and hit[0] == akey and hit[1] is bundle:
                continue
            if hit is not None:
                self._drop(rec.id, hit)
            a = build_assignment(rec, bundle)
            self._entries[rec.id] = (akey, bundle, a)
            self.by_node.setdefault(rec.node, {})[rec.id] = a
            changed, removed = self._changes.setdefault(rec.node, ({}, set()))
            changed[rec.id] = a
            removed.discard(rec.id)
        for gone in self._ids.get(key, set()) - ids:
            hit = self._entries.get(gone)
            if hit is not None:
                self._drop(gone, hit)
        if ids:
            self._ids[key] = ids
        else:
            self._ids.pop(key, None)

    def on_node(self, node: str) -> list[str]:
        return list(self.by_node.get(node, {}))

    def workloads(self) -> list[WorkloadKey]:
        return list(self._ids)

    def _drop(self, inst_id: str, entry: _Entry) -> None:
        del self._entries[inst_id]
        node = entry[2].instance.node
        of = self.by_node.get(node)
        if of is not None:
            of.pop(inst_id, None)
            if not of:
                del self.by_node[node]
        changed, removed = self._changes.setdefault(node, ({}, set()))
        changed.pop(inst_id, None)
        removed.add(inst_id)

    def take_changes(self) -> dict[str, tuple[list[kat_pb2.Assignment], list[str]]]:
        """Per node whose list changed since the last call: the assignments added or
        rebuilt, and the ids removed."""
        out = {n: (list(c.values()), sorted(r)) for n, (c, r) in self._changes.items()}
        self._changes = {}
        return out

    def everything(self) -> dict[str, list[kat_pb2.Assignment]]:
        """Every node's full list (and the changes so far are taken)."""
        self._changes = {}
        return {n: list(items.values()) for n, items in self.by_node.items()}
