"""Folding a node's report into an instance record: phases, the restart policy, events.
Pure (the time is given)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from api.v1alpha1 import kat_pb2
from internal.core import rollout
from internal.core.reconcile_model import (
    LIVE_REPORTS,
    NO_EXIT,
    TERMINAL,
    copy_record,
    instance_time,
    workload_event,
)

_Inst = kat_pb2.Instance
_Spec = kat_pb2.WorkloadSpec
_Restart = rollout.RestartAction

# The message prefix of an instance failing again and waiting out its back-off (the word
# users know from Kubernetes; katcall shows it in the PHASE column).
CRASH_LOOP = "CrashLoopBackOff"

# ------------------------------------------------------------------ observed state


@dataclass(frozen=True, slots=True)
class Observation:
    record: kat_pb2.Instance  # the record after folding in the report (a copy)
    events: tuple[kat_pb2.Event, ...] = ()
    wake_at: datetime | None = None


def observe_instance(
    record: kat_pb2.Instance,
    report: kat_pb2.Instance | None,
    *,
    policy: kat_pb2.RestartPolicy,
    run_to_completion: bool,
    now: datetime,
    workload: tuple[str, str] = ("", ""),
) -> Observation:
    """Fold a node's report into the instance record and apply the restart policy to an
    exit (see the module docstring)."""
    rec = copy_record(record)
    key = workload if workload[1] else (record.namespace, record.workload)
    if rec.phase == _Inst.PENDING or rec.phase in TERMINAL:
        return Observation(rec)
    if report is None or report.node != rec.node or report.restart_count < rec.restart_count:
        return Observation(rec)
    rec.container_id = report.container_id or rec.container_id
    rec.ip = report.ip or rec.ip
    for name in ("started_at", "finished_at"):
        if report.HasField(name):
            getattr(rec, name).CopyFrom(getattr(report, name))
    if rec.phase == _Inst.TERMINATING:
        rec.ready = False
        return Observation(rec)
    if report.phase not in TERMINAL:
        rec.ready = report.ready and report.phase == _Inst.RUNNING
        rec.message = report.message
        events: tuple[kat_pb2.Event, ...] = ()
        if report.phase in LIVE_REPORTS:
            if report.phase == _Inst.RUNNING and rec.phase != _Inst.RUNNING:
                events = (
                    workload_event(key, "Started", f"instance {rec.id} started on node {rec.node}"),
                )
            rec.phase = report.phase
        return Observation(rec, events)

    # The container exited (or failed its health checks, or could not be started at all:
    # FAILED without an exit): apply the restart policy.
    rec.ready = False
    rec.exit_code = report.exit_code
    exited = instance_time(report, "finished_at") or now
    started = instance_time(report, "started_at") or exited
    # A failure that is not an exit (no container could be created, or it vanished) has no
    # start; the node dates it when it first saw it (finished_at), so the back-off runs
    # from a fixed point (without a date it would be "now" on every pass, for ever).
    no_exit = (
        report.phase == _Inst.FAILED
        and not report.exit_code
        and (report.finished_at.seconds == 0 or not report.HasField("started_at"))
    )
    code = NO_EXIT if no_exit else report.exit_code
    d = rollout.decide_restart(
        policy,
        restart_count=rec.policy_restart_count,
        started_at=started,
        exited_at=exited,
        now=now,
        exit_code=code,
        run_to_completion=run_to_completion,
    )
    exited_text = f"exited with code {code}"
    if no_exit:
        why = d.reason.replace(exited_text, report.message or "failed to start", 1)
    elif report.message and report.message != exited_text:
        why = f"{report.message}; {d.reason}"
    else:
        why = d.reason
    if d.action is _Restart.GIVE_UP:
        rec.phase = d.phase
        rec.policy_restart_count = d.restart_count
        rec.message = why
        if d.phase == _Inst.SUCCEEDED:
            ev = workload_event(key, "Completed", f"instance {rec.id} completed on node {rec.node}")
        else:
            ev = workload_event(key, "Failed", f"instance {rec.id} on node {rec.node}: {why}", True)
        return Observation(rec, (ev,))
    if d.action is _Restart.RESTART_LATER:
        rec.phase = _Inst.STARTING
        # After the first restart a failing instance is in a crash loop: say so the way
        # users know it from Kubernetes (shown in `get instances -o wide`, and in events).
        label = CRASH_LOOP if rec.policy_restart_count > 0 else "back-off"
        rec.message = f"{label}: {why}"
        if record.message == rec.message:
            return Observation(rec, (), d.at)  # still the same back-off: said already
        text = f"instance {rec.id} on node {rec.node}: {why}"
        return Observation(rec, (workload_event(key, "BackOff", text, True),), d.at)
    rec.phase = _Inst.STARTING
    rec.restart_count += 1
    rec.policy_restart_count = d.restart_count
    rec.message = f"restarting: {why}"
    ev = workload_event(key, "Restarted", f"instance {rec.id} on node {rec.node}: {why}", True)
    return Observation(rec, (ev,))
