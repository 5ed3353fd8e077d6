"""A workload's status from its instance records, and the events of conditions that
newly hold. Pure (the time is given)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from api.v1alpha1 import kat_pb2
from internal.core import rollout
from internal.core.reconcile_model import TERMINAL, template_generation, workload_event

_Inst = kat_pb2.Instance
_Spec = kat_pb2.WorkloadSpec
_Restart = rollout.RestartAction

# ------------------------------------------------------------------ status


def aggregate_status(
    workload: kat_pb2.Workload,
    records: Sequence[kat_pb2.Instance],
    desired: int,
    conditions: Sequence[kat_pb2.Condition],
    now: datetime,
) -> kat_pb2.WorkloadStatus:
    """The workload's status from its instance records; condition transition times are
    kept from the previous status while a condition's status stays the same."""
    old = workload.status
    generation = template_generation(workload)
    alive = [r for r in records if r.phase != _Inst.TERMINATING]
    ready = sum(1 for r in alive if r.ready and r.phase not in TERMINAL)
    st = kat_pb2.WorkloadStatus(
        observed_generation=workload.metadata.generation,
        desired_instances=desired,
        ready_instances=ready,
        available_instances=ready,
        updated_instances=sum(1 for r in alive if r.generation == generation),
        current_revision=workload.metadata.generation,
        template_generation=old.template_generation,
    )
    previous = {c.type: c for c in old.conditions}
    for cond in conditions:
        c = st.conditions.add()
        c.CopyFrom(cond)
        before = previous.get(cond.type)
        if before is not None and before.status == cond.status and before.reason == cond.reason:
            c.last_transition_time.CopyFrom(before.last_transition_time)
            if cond.reason in _STICKY_MESSAGES:
                c.message = before.message  # e.g. "no progress for 612s" would change each step
        else:
            c.last_transition_time.FromDatetime(now)
    for r in sorted(records, key=lambda r: r.id):
        inst = st.instances.add()
        inst.CopyFrom(r)
        inst.ClearField("resource_version")
    return st


# Conditions whose message is kept from the transition on while they hold.
_STICKY_MESSAGES = frozenset({"RolloutHalted", "ProgressDeadlineExceeded"})
_CONDITION_EVENTS = {
    ("RolloutHalted", "True"): ("RolloutHalted", True),
    ("Progressing", "RolloutComplete"): ("RolloutComplete", False),
    ("Complete", "True"): ("JobRunSucceeded", False),
    ("Failed", "True"): ("JobRunFailed", True),
}


def condition_events(
    workload: kat_pb2.Workload, status: kat_pb2.WorkloadStatus
) -> list[kat_pb2.Event]:
    """Events for conditions that newly hold (a halted rollout, a finished job run...)."""
    before = {(c.type, c.status, c.reason, c.message) for c in workload.status.conditions}
    out = []
    for c in status.conditions:
        if (c.type, c.status, c.reason, c.message) in before:
            continue
        hit = _CONDITION_EVENTS.get((c.type, c.status)) or _CONDITION_EVENTS.get((c.type, c.reason))
        if hit is None:
            continue
        was = [p for p in workload.status.conditions if p.type == c.type]
        if c.type == "Progressing" and was and was[0].reason == "RolloutComplete":
            continue  # still complete; only the message (counts) changed
        reason, warning = hit
        out.append(workload_event(workload, reason, c.message, warning))
    return out
