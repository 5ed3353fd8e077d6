"""One reconcile step of one workload, as pure functions (no I/O, no clock: `now` is given).

The leader's workload controller (kat_agent/leader/controllers.py) reads the workloads, their
instance records, the nodes and what the agents last reported, calls `plan_workload` for each
workload (and `plan_orphans` for instances whose workload is gone), writes what the plans say
and publishes the assignments. Everything here is deterministic given its inputs (new instance
ids come from the `new_id` callable), so a step can be replayed and tested without etcd.

Instance records hold the leader's view of each instance:
- `phase` follows what the node reports (STARTING, RUNNING, ...), except that an exit
  (SUCCEEDED/FAILED reported by the node) goes through the restart policy first
  (`rollout.decide_restart`): a restart bumps `restart_count` (the node starts the container
  again when it sees the higher count) and waits in STARTING through the back-off; giving up
  leaves the record SUCCEEDED or FAILED for good. TERMINATING is the leader's decision and
  is never overwritten by reports.
- A report counts only once the node has acted on the record's `restart_count`
  (`reported.restart_count >= record.restart_count`); older reports describe the run before
  the restart the leader asked for.
- `restart_count` only grows (it is what the node acts on and what users see);
  `policy_restart_count` is the count the restart policy uses, reset after a clean run.

Instances of a workload run the workload's *template generation* (status.templateGeneration,
set by apply): replicas, updateStrategy and restartPolicy changes keep it, so they never
restart instances. JOB instances run the workload generation itself (one run per apply).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from api.v1alpha1 import kat_pb2
from internal.core import jobs, rollout, scheduler
from internal.core.observe import observe_instance
from internal.core.reconcile_model import (
    JOB_HISTORY,
    MAX_ID_PREFIX,
    MAX_LISTED,
    TERMINAL,
    NodeFacts,
    Observed,
    Plan,
    copy_record,
    instance_time,
    job_run_name,
    job_run_start,
    listing,
    template_generation,
    workload_event,
)
from internal.core.workload_status import aggregate_status, condition_events

_Inst = kat_pb2.Instance
_Spec = kat_pb2.WorkloadSpec
_Restart = rollout.RestartAction

# ------------------------------------------------------------------ the plan of one workload


@dataclass
class _Step:
    """Working state of one plan_workload call."""

    workload: kat_pb2.Workload
    plan: Plan
    records: dict[str, kat_pb2.Instance]  # id -> current working copy (deleted ones removed)
    original: dict[str, kat_pb2.Instance]
    created: list[kat_pb2.Instance] = field(default_factory=list)
    deleted: dict[str, kat_pb2.Instance] = field(default_factory=dict)
    scheduled: list[str] = field(default_factory=list)
    unschedulable: list[str] = field(default_factory=list)
    unschedulable_reason: str = ""
    stopped: dict[str, list[str]] = field(default_factory=dict)  # reason -> ids
    taken: set[str] = field(default_factory=set)  # ids given to new instances

    def alive(self) -> list[kat_pb2.Instance]:
        return [r for r in self.records.values() if r.phase != _Inst.TERMINATING]

    def delete(self, inst: kat_pb2.Instance) -> None:
        self.records.pop(inst.id, None)
        if inst.id in self.original:
            self.deleted[inst.id] = self.original[inst.id]
        else:
            self.created = [c for c in self.created if c.id != inst.id]

    def stop(self, inst_id: str, reason: str) -> None:
        rec = self.records.get(inst_id)
        if rec is None or rec.phase == _Inst.TERMINATING:
            return
        if rec.phase == _Inst.PENDING or not rec.node:
            self.delete(rec)
            return
        if rec.phase not in TERMINAL:  # an exited container needs no stop: still say so
            self.stopped.setdefault(reason, []).append(inst_id)
        rec.phase = _Inst.TERMINATING
        rec.ready = False
        rec.message = f"stopping: {reason}"


def _new_instance(
    step: _Step, generation: int, new_id: Callable[[], str], job_run: str = ""
) -> kat_pb2.Instance:
    """A new PENDING instance with an id no other instance of the workload has."""
    meta = step.workload.metadata
    prefix = meta.name[:MAX_ID_PREFIX].rstrip("-")
    while True:
        inst_id = f"{prefix}-{new_id()}"
        if inst_id not in step.original and inst_id not in step.taken:
            break
    step.taken.add(inst_id)
    return _Inst(
        id=inst_id,
        workload=meta.name,
        namespace=meta.namespace,
        generation=generation,
        phase=_Inst.PENDING,
        job_run=job_run,
    )


def _place(
    step: _Step,
    cluster: scheduler.Cluster,
    profile: scheduler.WorkloadProfile,
    pending: list[kat_pb2.Instance],
    new: list[kat_pb2.Instance],
) -> None:
    """Place pending and new instances (new ones are added to the step either way)."""
    result = cluster.schedule(profile, len(pending) + len(new))
    nodes = list(result.nodes)
    new_ids = {i.id for i in new}
    for inst in [*pending, *new]:
        if inst.id not in step.records:
            step.records[inst.id] = inst
            step.created.append(inst)
        if nodes:
            inst.node = nodes.pop(0)
            inst.phase = _Inst.SCHEDULED
            inst.message = ""
            step.scheduled.append(inst.id)
        else:
            if inst.message != result.reason or inst.id in new_ids:
                step.unschedulable.append(inst.id)
                step.unschedulable_reason = result.reason
            inst.message = result.reason


def plan_workload(
    workload: kat_pb2.Workload,
    bundle: kat_pb2.Bundle,
    instances: Sequence[kat_pb2.Instance],
    *,
    cluster: scheduler.Cluster,
    nodes: NodeFacts,
    observed: Observed,
    now: datetime,
    new_id: Callable[[], str],
    progress: rollout.Progress | None = None,
    schedule_since: datetime | None = None,
) -> Plan:
    """One reconcile step of one workload.

    `bundle` is the bundle of the workload's current generation (defaults applied);
    `cluster` is shared by all workloads of the pass (placements update it); `progress` is
    what the previous step returned; `schedule_since` is when the current JobDefinition
    schedule took effect (the revision's creation time).
    """
    spec = workload.spec
    kind = spec.type
    is_job = kind == _Spec.JOB
    key = (workload.metadata.namespace, workload.metadata.name)
    plan = Plan(progress=progress)
    original = {i.id: i for i in instances}
    step = _Step(workload, plan, {i.id: copy_record(i) for i in instances}, original)

    # 1. Reports and restart decisions.
    for inst_id, rec in list(step.records.items()):
        obs = observe_instance(
            rec,
            observed.instances.get(inst_id),
            policy=spec.restart_policy,
            run_to_completion=is_job,
            now=now,
            workload=key,
        )
        step.records[inst_id] = obs.record
        plan.events.extend(obs.events)
        plan.wake(obs.wake_at)

    # 2. Node loss, and instances that are gone from their nodes.
    _collect(step, nodes, observed, keep_on_lost=kind == _Spec.DAEMON_SERVICE)

    # 3. The workload's own logic.
    profile = scheduler.WorkloadProfile.from_workload(workload)
    deadline = float(
        spec.update_strategy.progress_deadline_seconds or rollout.DEFAULT_PROGRESS_DEADLINE_SECONDS
    )
    conditions: list[kat_pb2.Condition]
    if kind == _Spec.DAEMON_SERVICE:
        desired, conditions = _daemon(step, cluster, profile, now, new_id, progress, deadline)
    elif is_job:
        desired, conditions = _job(step, bundle, cluster, profile, now, new_id, schedule_since)
    else:
        desired, conditions = _service(step, cluster, profile, now, new_id, progress, deadline)

    # 4. What to write, events for the decisions, and the status.
    _finish(step, now)
    plan.status = aggregate_status(workload, list(step.records.values()), desired, conditions, now)
    plan.events.extend(condition_events(workload, plan.status))
    if plan.status == workload.status:
        plan.status = None
    return plan


def _collect(step: _Step, nodes: NodeFacts, observed: Observed, *, keep_on_lost: bool) -> None:
    lost: list[str] = []
    for rec in list(step.records.values()):
        if rec.phase == _Inst.PENDING:
            continue
        if rec.phase == _Inst.TERMINATING:
            seen = observed.reported.get(rec.node)
            if not rec.node or nodes.lost(rec.node) or (seen is not None and rec.id not in seen):
                step.delete(rec)
            continue
        if rec.phase in TERMINAL or not nodes.lost(rec.node):
            continue
        if keep_on_lost and nodes.known(rec.node):
            continue  # DAEMON_SERVICE copies stay with their node (no other node can take them)
        step.delete(rec)
        lost.append(rec.id)
    if lost:
        on = sorted({step.original[i].node for i in lost})
        step.plan.events.append(
            workload_event(
                step.workload,
                "NodeLost",
                f"node {', '.join(on)} is not ready: {listing(lost)} will run elsewhere",
                True,
            )
        )


def _views(records: Iterable[kat_pb2.Instance]) -> list[rollout.InstanceView]:
    return [rollout.InstanceView.from_proto(r) for r in records]


def _stop_reason(rec: kat_pb2.Instance | None, generation: int) -> str:
    if rec is not None and rec.generation != generation:
        return f"replaced by generation {generation}"
    return "scaled down"


def _rollout_conditions(
    state: rollout.RolloutState, message: str, ready: int, desired: int
) -> list[kat_pb2.Condition]:
    available = kat_pb2.Condition(
        type="Available",
        status="True" if ready >= desired else "False",
        reason="InstancesReady" if ready >= desired else "InstancesNotReady",
        message=f"{ready}/{desired} instances ready",
    )
    if state is rollout.RolloutState.COMPLETE:
        progressing = kat_pb2.Condition(
            type="Progressing", status="False", reason="RolloutComplete", message=message
        )
        return [available, progressing]
    if state is rollout.RolloutState.HALTED:
        return [
            available,
            kat_pb2.Condition(
                type="Progressing", status="False", reason="RolloutHalted", message=message
            ),
            kat_pb2.Condition(
                type="RolloutHalted",
                status="True",
                reason="ProgressDeadlineExceeded",
                message=message,
            ),
        ]
    return [
        available,
        kat_pb2.Condition(type="Progressing", status="True", reason="RollingOut", message=message),
    ]


def _service(
    step: _Step,
    cluster: scheduler.Cluster,
    profile: scheduler.WorkloadProfile,
    now: datetime,
    new_id: Callable[[], str],
    progress: rollout.Progress | None,
    deadline: float,
) -> tuple[int, list[kat_pb2.Condition]]:
    w = step.workload
    generation = template_generation(w)
    replicas = w.spec.replicas if w.spec.HasField("replicas") else 1
    rs = rollout.plan_rollout(
        replicas=replicas,
        generation=generation,
        strategy=w.spec.update_strategy,
        instances=_views(step.records.values()),
        now=now,
        progress=progress,
        deadline_seconds=deadline,
    )
    step.plan.progress = rs.progress
    for inst_id in rs.stop:
        step.stop(inst_id, _stop_reason(step.records.get(inst_id), generation))
    pending = [r for r in step.alive() if r.phase == _Inst.PENDING]
    new = [_new_instance(step, generation, new_id) for _ in range(rs.create)]
    if pending or new:
        _place(step, cluster, profile, pending, new)
    if rs.state is rollout.RolloutState.PROGRESSING:
        step.plan.wake(rs.progress.since + timedelta(seconds=deadline + 0.5))
    return replicas, _rollout_conditions(rs.state, rs.message, rs.ready, replicas)


def _daemon(
    step: _Step,
    cluster: scheduler.Cluster,
    profile: scheduler.WorkloadProfile,
    now: datetime,
    new_id: Callable[[], str],
    progress: rollout.Progress | None,
    deadline: float,
) -> tuple[int, list[kat_pb2.Condition]]:
    w = step.workload
    generation = template_generation(w)
    where = cluster.daemon_nodes(profile)
    ds = rollout.plan_daemon_rollout(
        eligible=where.eligible,
        keep=where.keep,
        generation=generation,
        strategy=w.spec.update_strategy,
        instances=_views(step.records.values()),
        now=now,
        progress=progress,
        deadline_seconds=deadline,
    )
    step.plan.progress = ds.progress
    for inst_id in ds.stop:
        step.stop(inst_id, _stop_reason(step.records.get(inst_id), generation))
    waiting = [r for r in step.alive() if r.phase == _Inst.PENDING]
    targets = [(r, r.node) for r in waiting] + [
        (_new_instance(step, generation, new_id), node) for node in ds.create_on
    ]
    for inst, node in targets:
        if inst.id not in step.records:
            step.records[inst.id] = inst
            step.created.append(inst)
        inst.node = node
        why = cluster.place_on(profile, node)
        if why is None:
            inst.phase = _Inst.SCHEDULED
            inst.message = ""
            step.scheduled.append(inst.id)
        else:
            if inst.message != why:
                step.unschedulable.append(inst.id)
                step.unschedulable_reason = why
            inst.message = why
    alive = step.alive()
    desired = len(set(where.eligible) | {r.node for r in alive if r.node in where.keep})
    ready = sum(1 for v in _views(alive) if v.serving)
    if ds.state is rollout.RolloutState.PROGRESSING:
        step.plan.wake(ds.progress.since + timedelta(seconds=deadline + 0.5))
    return desired, _rollout_conditions(ds.state, ds.message, ready, desired)


def _job(
    step: _Step,
    bundle: kat_pb2.Bundle,
    cluster: scheduler.Cluster,
    profile: scheduler.WorkloadProfile,
    now: datetime,
    new_id: Callable[[], str],
    schedule_since: datetime | None,
) -> tuple[int, list[kat_pb2.Condition]]:
    w = step.workload
    generation = w.metadata.generation
    js = jobs.JobSpec.from_proto(bundle.job_definition.spec)
    runs: dict[str, list[kat_pb2.Instance]] = {}
    for rec in step.records.values():
        runs.setdefault(rec.job_run, []).append(rec)
    names = sorted(runs, key=lambda n: (job_run_start(n) or datetime.min.replace(tzinfo=UTC), n))

    # Old runs: keep the newest JOB_HISTORY, stop anything of older runs that still runs.
    for name in names[:-JOB_HISTORY]:
        for rec in runs[name]:
            if rec.phase in TERMINAL:
                step.delete(rec)
            else:
                step.stop(rec.id, "superseded by a newer run")

    latest = names[-1] if names else None
    pending: list[kat_pb2.Instance] = []
    new: list[kat_pb2.Instance] = []
    result: jobs.JobStep | None = None
    run_active = False
    latest_gen = 0

    def advance(run: str, started: datetime) -> jobs.JobStep:
        members = [r for r in step.records.values() if r.job_run == run]
        js_step = jobs.plan_job_run(
            js, [jobs.JobInstance.from_proto(r) for r in members], started_at=started, now=now
        )
        for inst_id in js_step.stop:
            step.stop(inst_id, f"job run {js_step.state.value.lower()}: {js_step.reason}")
        pending.extend(r for r in members if r.phase == _Inst.PENDING and r.id in step.records)
        new.extend(_new_instance(step, generation, new_id, run) for _ in range(js_step.create))
        step.plan.wake(js_step.retry_at)
        if js_step.state is jobs.RunState.RUNNING:
            step.plan.wake(js_step.deadline_at)
        return js_step

    if latest is not None:
        started = job_run_start(latest) or now
        latest_gen = max(r.generation for r in runs[latest])
        if not js.schedule and latest_gen != generation:
            # A new apply supersedes the run of an older generation.
            for rec in runs[latest]:
                step.stop(rec.id, f"superseded by generation {generation}")
        else:
            result = advance(latest, started)
        run_active = any(r.phase not in TERMINAL for r in runs[latest] if r.id in step.records)

    start_run = False
    if not js.schedule:
        start_run = not run_active and (latest is None or latest_gen != generation)
    else:
        last_start = job_run_start(latest) if latest else None
        last_end = None
        if latest is not None and not run_active:
            ends = [instance_time(r, "finished_at") for r in runs[latest]]
            last_end = max((e for e in ends if e is not None), default=last_start)
        created = schedule_since or (
            w.metadata.creation_timestamp.ToDatetime(tzinfo=UTC)
            if w.metadata.HasField("creation_timestamp")
            else now
        )
        decision = jobs.plan_schedule(
            js.schedule,
            now=now,
            created=created,
            last_run_start=last_start,
            last_run_end=last_end,
            run_active=run_active,
        )
        start_run = decision.start_now
        step.plan.wake(decision.next_tick)
    if start_run:
        run = job_run_name(now)
        step.plan.events.append(
            workload_event(w, "JobRunStarted", f"run {run} of generation {generation}")
        )
        result = advance(run, now)
        latest = run

    if pending or new:
        _place(step, cluster, profile, pending, new)
    return max(js.completions, 1), _job_conditions(result, latest, js)


def _job_conditions(
    result: jobs.JobStep | None, run: str | None, js: jobs.JobSpec
) -> list[kat_pb2.Condition]:
    if result is None or run is None:
        message = f"waiting for schedule {js.schedule}" if js.schedule else "no run yet"
        return [
            kat_pb2.Condition(type="Progressing", status="False", reason="Idle", message=message)
        ]
    text = f"run {run}: {result.message}"
    if result.state is jobs.RunState.SUCCEEDED:
        return [
            kat_pb2.Condition(type="Progressing", status="False", reason="Completed", message=text),
            kat_pb2.Condition(type="Complete", status="True", reason="Completed", message=text),
        ]
    if result.state is jobs.RunState.FAILED:
        return [
            kat_pb2.Condition(
                type="Progressing", status="False", reason=result.reason, message=text
            ),
            kat_pb2.Condition(type="Failed", status="True", reason=result.reason, message=text),
        ]
    return [kat_pb2.Condition(type="Progressing", status="True", reason="Running", message=text)]


def _finish(step: _Step, now: datetime) -> None:
    plan, w = step.plan, step.workload
    created_ids = {c.id for c in step.created}
    plan.creates = [step.records[i] for i in created_ids if i in step.records]
    plan.creates.sort(key=lambda i: i.id)
    plan.deletes = sorted(step.deleted.values(), key=lambda i: i.id)
    plan.updates = sorted(
        (
            r
            for r in step.records.values()
            if r.id not in created_ids and r != step.original.get(r.id)
        ),
        key=lambda i: i.id,
    )
    if step.scheduled:
        placed = {i: step.records[i].node for i in step.scheduled if i in step.records}
        text = ", ".join(f"{i} on {n}" for i, n in list(placed.items())[:MAX_LISTED])
        more = len(placed) - MAX_LISTED
        text += f" and {more} more" if more > 0 else ""
        plan.events.append(workload_event(w, "Scheduled", f"scheduled {text}"))
    if step.unschedulable:
        ids = sorted(set(step.unschedulable))
        plan.events.append(
            workload_event(
                w,
                "Unschedulable",
                f"{listing(ids)} cannot be placed: {step.unschedulable_reason}",
                True,
            )
        )
    for reason, ids in sorted(step.stopped.items()):
        plan.events.append(
            workload_event(w, "Stopping", f"stopping {listing(sorted(ids))}: {reason}")
        )


# ------------------------------------------------------------------ orphans


def plan_orphans(
    instances: Sequence[kat_pb2.Instance], *, nodes: NodeFacts, observed: Observed
) -> Plan:
    """Instances whose workload is gone (deleted, or its namespace): stop them, and remove
    the records once their nodes no longer run them."""
    plan = Plan()
    by_workload: dict[tuple[str, str], list[str]] = {}
    for inst in instances:
        if inst.phase == _Inst.TERMINATING:
            seen = observed.reported.get(inst.node)
            if not inst.node or nodes.lost(inst.node) or (seen is not None and inst.id not in seen):
                plan.deletes.append(inst)
            continue
        if inst.phase == _Inst.PENDING or not inst.node or nodes.lost(inst.node):
            plan.deletes.append(inst)
            continue
        rec = copy_record(inst)
        rec.phase = _Inst.TERMINATING
        rec.ready = False
        rec.message = "stopping: its workload was deleted"
        plan.updates.append(rec)
        by_workload.setdefault((inst.namespace, inst.workload), []).append(inst.id)
    for key, ids in sorted(by_workload.items()):
        plan.events.append(
            workload_event(key, "Stopping", f"stopping {listing(ids)}: workload deleted")
        )
    return plan
