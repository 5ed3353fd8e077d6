"""What each node should run: the part of an instance record a node acts on, grouped
by node with the bundles. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from api.v1alpha1 import kat_pb2
from internal.core import rollout
from internal.core.reconcile_model import TERMINAL

_Inst = kat_pb2.Instance
_Spec = kat_pb2.WorkloadSpec
_Restart = rollout.RestartAction

# ------------------------------------------------------------------ assignments


def desired_phase(phase: int) -> int:
    """TERMINATING (stop it), SUCCEEDED/FAILED (done: do not start it again), or
    SCHEDULED (it should exist) for every phase a running instance passes through."""
    return phase if phase in TERMINAL or phase == _Inst.TERMINATING else _Inst.SCHEDULED


def desired_instance(record: kat_pb2.Instance) -> kat_pb2.Instance:
    """The part of an instance record a node acts on: identity, generation, restart count,
    and its desired_phase."""
    return _Inst(
        id=record.id,
        workload=record.workload,
        namespace=record.namespace,
        node=record.node,
        generation=record.generation,
        phase=desired_phase(record.phase),
        restart_count=record.restart_count,
        job_run=record.job_run,
        purge_volumes=record.purge_volumes,
    )


# What an assignment is built from: the record's fields a node acts on, and the bundle.
_Key = tuple[str, str, str, int, int, int, str, bool]
AssignmentCache = dict[str, tuple[_Key, kat_pb2.Bundle | None, kat_pb2.Assignment]]


def assignment_key(rec: kat_pb2.Instance) -> _Key:
    """The fields of a record that its assignment is built from (with the bundle). The
    phase as the node gets it: PULLING, STARTING and RUNNING reported by the node are
    all SCHEDULED to it, so they rebuild and resend nothing."""
    return (
        rec.namespace,
        rec.workload,
        rec.node,
        rec.generation,
        desired_phase(rec.phase),
        rec.restart_count,
        rec.job_run,
        rec.purge_volumes,
    )


def build_assignment(rec: kat_pb2.Instance, bundle: kat_pb2.Bundle | None) -> kat_pb2.Assignment:
    a = kat_pb2.Assignment(instance=desired_instance(rec))
    if bundle is not None:
        a.bundle.CopyFrom(bundle)
    return a


def is_assigned(rec: kat_pb2.Instance) -> bool:
    """Whether a record is on its node's list: placed (a node, not PENDING)."""
    return bool(rec.node) and rec.phase != _Inst.PENDING


def assignments_by_node(
    records: Iterable[kat_pb2.Instance],
    bundle_for: Callable[[kat_pb2.Instance], kat_pb2.Bundle | None],
    cache: AssignmentCache | None = None,
) -> dict[str, list[kat_pb2.Assignment]]:
    """What each node should run: every placed (not PENDING) instance, with its bundle.

    `cache` (the previous call's, updated in place): an instance whose relevant fields and
    bundle object are unchanged gets the same Assignment object as before instead of a new
    one with a copy of its bundle; the assignment book then sees it unchanged without
    comparing it (kat_agent/leader/assignments.py). Never mutate the returned objects."""
    out: dict[str, list[kat_pb2.Assignment]] = {}
    fresh: AssignmentCache = {}
    for rec in sorted(records, key=lambda r: r.id):
        if not is_assigned(rec):
            continue
        bundle = bundle_for(rec)
        key = assignment_key(rec)
        hit = cache.get(rec.id) if cache is not None else None
        if hit is not None and hit[0] == key and hit[1] is bundle:
            a = hit[2]
        else:
            a = build_assignment(rec, bundle)
        fresh[rec.id] = (key, bundle, a)
        out.setdefault(rec.node, []).append(a)
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    return out


class DeltaOutOfSync(ValueError):
    """A delta that does not follow the set it should apply to (reopen the stream)."""


def apply_update(
    current: kat_pb2.AssignmentSet | None, update: kat_pb2.AssignmentSet
) -> kat_pb2.AssignmentSet:
    """The full set after a message of the assignments stream: a full snapshot replaces
    `current`; a delta (`update.delta`) changes it. Raises DeltaOutOfSync when the delta
    is not based on `current`'s revision."""
    if not update.delta:
        return update
    if current is None or current.revision != update.base_revision:
        have = None if current is None else current.revision
        raise DeltaOutOfSync(f"delta based on {update.base_revision}, have {have}")
    items = {a.instance.id: a for a in current.assignments}
    for gone in update.removed:
        items.pop(gone, None)
    for a in update.assignments:
        items[a.instance.id] = a
    return kat_pb2.AssignmentSet(
        revision=update.revision,
        assignments=[items[i] for i in sorted(items)],
        peers=update.peers if update.peers_changed else current.peers,
    )
