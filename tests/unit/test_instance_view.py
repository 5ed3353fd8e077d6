"""The leader's in-memory instance records (kat_agent/leader/instance_view.py): the
controller's own writes show at once, late watch events never bring back an older
record or one the controller deleted, and changes by others are reported per workload.
Events are fed by hand here (tests/etcd/test_workloads_leader runs it on real etcd)."""

from __future__ import annotations

from typing import Any

from api.v1alpha1 import kat_pb2
from internal.state.keys import instance_key
from internal.state.kv import EventType, WatchEvent
from kat_agent.leader.assignment_index import AssignmentIndex
from kat_agent.leader.instance_view import InstanceView


def rec(inst_id: str, rev: int, node: str = "n1") -> kat_pb2.Instance:
    return kat_pb2.Instance(
        id=inst_id,
        namespace="default",
        workload="web",
        node=node,
        phase=kat_pb2.Instance.SCHEDULED,
        resource_version=rev,
    )


def put(inst: kat_pb2.Instance) -> WatchEvent[kat_pb2.Instance]:
    key = instance_key(inst.namespace, inst.workload, inst.id)
    return WatchEvent(EventType.PUT, key, inst, inst.resource_version)


def delete(inst: kat_pb2.Instance, rev: int) -> WatchEvent[kat_pb2.Instance]:
    key = instance_key(inst.namespace, inst.workload, inst.id)
    return WatchEvent(EventType.DELETE, key, inst, rev)


def view() -> tuple[InstanceView, list[int]]:
    woken: list[int] = []
    store: Any = None  # never touched: no run()
    return InstanceView(store, lambda: woken.append(1)), woken


def test_own_writes_show_at_once_and_their_echo_is_not_a_change() -> None:
    v, woken = view()
    v.wrote(rec("a", 10))
    assert v.records["a"].resource_version == 10
    v.apply(put(rec("a", 10)))  # the watch echoes our write
    assert v.take_changes() == {}
    assert not woken


def test_late_events_do_not_undo_newer_state() -> None:
    v, _ = view()
    v.apply(put(rec("a", 5)))
    v.wrote(rec("a", 12))
    v.apply(put(rec("a", 8)))  # older than what we wrote
    assert v.records["a"].resource_version == 12
    v.deleted(rec("a", 12), 15)
    v.apply(put(rec("a", 12)))  # our update's echo arrives after our delete
    assert "a" not in v.records
    v.apply(delete(rec("a", 12), 15))
    assert "a" not in v.records and v.of_workload(("default", "web")) == []


def test_changes_by_others_are_reported_per_workload() -> None:
    v, woken = view()
    v.apply(put(rec("a", 3)))
    v.apply(put(rec("b", 4)))
    assert v.take_changes() == {"a": ("default", "web"), "b": ("default", "web")}
    v.apply(delete(rec("a", 3), 9))
    assert v.take_changes() == {"a": ("default", "web")}
    assert [r.id for r in v.of_workload(("default", "web"))] == ["b"]
    assert len(woken) == 3


def test_assignment_index_reports_only_what_changed() -> None:
    index = AssignmentIndex()
    bundle = kat_pb2.Bundle()
    key = ("default", "web")
    index.update_workload(key, [rec("a", 1, "n1"), rec("b", 1, "n2")], lambda r: bundle)
    first = index.take_changes()
    assert sorted(first) == ["n1", "n2"]
    index.update_workload(key, [rec("a", 2, "n1"), rec("b", 2, "n2")], lambda r: bundle)
    assert index.take_changes() == {}  # same content, same bundle object: no change
    index.update_workload(key, [rec("a", 3, "n1")], lambda r: bundle)
    assert index.take_changes() == {"n2": ([], ["b"])}
    assert list(index.by_node) == ["n1"]
