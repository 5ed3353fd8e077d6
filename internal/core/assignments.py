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


def desired_instance(record: kat_pb2.Instance) -> kat_pb2.Instance:
    """The part of an instance record a node acts on: identity, generation, restart count,
    and a phase that is TERMINATING (stop it), SUCCEEDED/FAILED (done: do not start it
    again) or SCHEDULED (it should exist)."""
    phase = record.phase if record.phase in TERMINAL or record.phase == _Inst.TERMINATING else None
    return _Inst(
        id=record.id,
        workload=record.workload,
        namespace=record.namespace,
        node=record.node,
        generation=record.generation,
        phase=phase or _Inst.SCHEDULED,
        restart_count=record.restart_count,
        job_run=record.job_run,
        purge_volumes=record.purge_volumes,
    )


def assignments_by_node(
    records: Iterable[kat_pb2.Instance],
    bundle_for: Callable[[kat_pb2.Instance], kat_pb2.Bundle | None],
) -> dict[str, list[kat_pb2.Assignment]]:
    """What each node should run: every placed (not PENDING) instance, with its bundle."""
    out: dict[str, list[kat_pb2.Assignment]] = {}
    for rec in sorted(records, key=lambda r: r.id):
        if not rec.node or rec.phase == _Inst.PENDING:
            continue
        a = kat_pb2.Assignment(instance=desired_instance(rec))
        bundle = bundle_for(rec)
        if bundle is not None:
            a.bundle.CopyFrom(bundle)
        out.setdefault(rec.node, []).append(a)
    return out
