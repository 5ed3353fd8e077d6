"""Leader figures taken from the reconcile loop's plans (internal/observability/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from api.v1alpha1 import kat_pb2
from internal.core import reconcile
from internal.observability import metrics

_PENDING = kat_pb2.Instance.PENDING


def _placed(inst: kat_pb2.Instance) -> bool:
    return bool(inst.node) and inst.phase != _PENDING


def observe_plan(
    workload: kat_pb2.Workload,
    plan: reconcile.Plan,
    existing: Sequence[kat_pb2.Instance],
    applied_at: datetime | None,
    seconds: float,
    now: datetime,
) -> None:
    """Scheduling latency for a plan that placed instances; apply-to-scheduled once
    per applied generation, when its first instance is placed."""
    before = {r.id: r for r in existing}
    placed = [
        i
        for i in (*plan.creates, *plan.updates)
        if _placed(i) and not (i.id in before and _placed(before[i.id]))
    ]
    if not placed:
        return
    metrics.SCHEDULING_SECONDS.observe(seconds)
    gen = workload.metadata.generation
    if applied_at is None or not any(i.generation == gen for i in placed):
        return
    if any(r.generation == gen and _placed(r) for r in existing):
        return  # not the generation's first placement
    metrics.APPLY_TO_SCHEDULED_SECONDS.observe(max(0.0, (now - applied_at).total_seconds()))


def observe_instances(records: Iterable[kat_pb2.Instance]) -> None:
    metrics.count_instances(metrics.CLUSTER_INSTANCES, (r.phase for r in records))
