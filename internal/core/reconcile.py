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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from api.v1alpha1 import kat_pb2
from internal.core import jobs, rollout, scheduler
from internal.core.events import new_event

_Inst = kat_pb2.Instance
_Spec = kat_pb2.WorkloadSpec
_Restart = rollout.RestartAction

TERMINAL = frozenset({_Inst.SUCCEEDED, _Inst.FAILED})
# Phases a node may report for a container that exists and has not exited.
_LIVE_REPORTS = frozenset({_Inst.BUILDING, _Inst.PULLING, _Inst.STARTING, _Inst.RUNNING})
JOB_HISTORY = 3  # runs of a JOB whose instances are kept (the newest ones)
MAX_ID_PREFIX = 57  # instance ids are DNS labels: <workload, cut to 57>-<5 chars>
_MAX_LISTED = 5  # instance ids named in one aggregated event
# The exit code given to the restart policy for a FAILED report that is not an exit (the
# container could not be created or started): a failure, never a success.
_NO_EXIT = -1


@dataclass(frozen=True, slots=True)
class Observed:
    """What the agents reported: `instances` by id (with `node` set to the reporting node);
    `reported` maps each node heard from since this leader started to the ids it reported
    in its latest heartbeat."""

    instances: Mapping[str, kat_pb2.Instance] = field(default_factory=dict)
    reported: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """Node conditions by name (nodes missing here are unknown: removed)."""

    ready: Mapping[str, bool] = field(default_factory=dict)

    def lost(self, node: str) -> bool:
        return not self.ready.get(node, False)

    def known(self, node: str) -> bool:
        return node in self.ready


@dataclass
class Plan:
    """What one step wants written. `updates` and `deletes` carry the record's
    resource_version as read, for guarded writes."""

    creates: list[kat_pb2.Instance] = field(default_factory=list)
    updates: list[kat_pb2.Instance] = field(default_factory=list)
    deletes: list[kat_pb2.Instance] = field(default_factory=list)
    events: list[kat_pb2.Event] = field(default_factory=list)
    status: kat_pb2.WorkloadStatus | None = None  # None: unchanged
    progress: rollout.Progress | None = None
    wake_at: datetime | None = None

    def wake(self, at: datetime | None) -> None:
        if at is not None and (self.wake_at is None or at < self.wake_at):
            self.wake_at = at


# ------------------------------------------------------------------ small helpers


def template_generation(workload: kat_pb2.Workload) -> int:
    """The generation instances of this workload should run."""
    meta, status = workload.metadata, workload.status
    if workload.spec.type == _Spec.JOB or not status.template_generation:
        return meta.generation
    return status.template_generation


def same_instances(old: kat_pb2.Bundle, new: kat_pb2.Bundle) -> bool:
    """Whether instances started from `old` are what `new` asks for, so that applying `new`
    needs no new instances: the template is the same (`rollout.same_template`) and so are
    the parts the node uses (health check and ports, build)."""
    if old.workload.spec.type != new.workload.spec.type:
        return False
    if not rollout.same_template(old.workload.spec, new.workload.spec):
        return False
    return (
        old.virtual_load_balancer.spec == new.virtual_load_balancer.spec
        and old.build_definition.spec == new.build_definition.spec
    )


def same_spec(old: kat_pb2.Bundle, new: kat_pb2.Bundle) -> bool:
    """Whether two bundles differ only in the workload's metadata (no new generation)."""
    a, b = kat_pb2.Bundle(), kat_pb2.Bundle()
    a.CopyFrom(old)
    b.CopyFrom(new)
    for x in (a, b):
        x.workload.ClearField("metadata")
        x.workload.ClearField("status")
    return a == b


def job_run_name(start: datetime) -> str:
    """A run's name is its start time, so runs sort by start and the start survives failover."""
    return start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_run_start(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _time(inst: kat_pb2.Instance, name: str) -> datetime | None:
    if not inst.HasField(name):
        return None
    return getattr(inst, name).ToDatetime(tzinfo=UTC)


def _copy(inst: kat_pb2.Instance) -> kat_pb2.Instance:
    out = kat_pb2.Instance()
    out.CopyFrom(inst)
    return out


def _phase(value: int) -> str:
    return _Inst.Phase.Name(value) if value else "PENDING"


def _listing(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_LISTED])
    more = len(ids) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _event(
    workload: kat_pb2.Workload | tuple[str, str], reason: str, message: str, warning: bool = False
) -> kat_pb2.Event:
    if isinstance(workload, tuple):
        namespace, name = workload
    else:
        namespace, name = workload.metadata.namespace, workload.metadata.name
    return new_event(
        reason,
        message,
        kind="Workload",
        name=name,
        namespace=namespace,
        warning=warning,
        source="controller",
    )


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
    rec = _copy(record)
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
        if report.phase in _LIVE_REPORTS:
            if report.phase == _Inst.RUNNING and rec.phase != _Inst.RUNNING:
                events = (_event(key, "Started", f"instance {rec.id} started on node {rec.node}"),)
            rec.phase = report.phase
        return Observation(rec, events)

    # The container exited (or failed its health checks, or could not be started at all:
    # FAILED without an exit): apply the restart policy.
    rec.ready = False
    rec.exit_code = report.exit_code
    exited = _time(report, "finished_at") or now
    started = _time(report, "started_at") or exited
    # A failure that is not an exit (no container could be created, or it vanished) has no
    # start; the node dates it when it first saw it (finished_at), so the back-off runs
    # from a fixed point (without a date it would be "now" on every pass, for ever).
    no_exit = (
        report.phase == _Inst.FAILED
        and not report.exit_code
        and (report.finished_at.seconds == 0 or not report.HasField("started_at"))
    )
    code = _NO_EXIT if no_exit else report.exit_code
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
            ev = _event(key, "Completed", f"instance {rec.id} completed on node {rec.node}")
        else:
            ev = _event(key, "Failed", f"instance {rec.id} on node {rec.node}: {why}", True)
        return Observation(rec, (ev,))
    if d.action is _Restart.RESTART_LATER:
        rec.phase = _Inst.STARTING
        # After the first restart a failing instance is in a crash loop: say so the way
        # users know it from Kubernetes (shown in `get instances -o wide`, and in events).
        label = "CrashLoopBackOff" if rec.policy_restart_count > 0 else "back-off"
        rec.message = f"{label}: {why}"
        if record.message == rec.message:
            return Observation(rec, (), d.at)  # still the same back-off: said already
        text = f"instance {rec.id} on node {rec.node}: {why}"
        return Observation(rec, (_event(key, "BackOff", text, True),), d.at)
    rec.phase = _Inst.STARTING
    rec.restart_count += 1
    rec.policy_restart_count = d.restart_count
    rec.message = f"restarting: {why}"
    ev = _event(key, "Restarted", f"instance {rec.id} on node {rec.node}: {why}", True)
    return Observation(rec, (ev,))


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
    step = _Step(workload, plan, {i.id: _copy(i) for i in instances}, original)

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
    plan.events.extend(_condition_events(workload, plan.status))
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
            _event(
                step.workload,
                "NodeLost",
                f"node {', '.join(on)} is not ready: {_listing(lost)} will run elsewhere",
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
            ends = [_time(r, "finished_at") for r in runs[latest]]
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
        step.plan.events.append(_event(w, "JobRunStarted", f"run {run} of generation {generation}"))
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
        text = ", ".join(f"{i} on {n}" for i, n in list(placed.items())[:_MAX_LISTED])
        more = len(placed) - _MAX_LISTED
        text += f" and {more} more" if more > 0 else ""
        plan.events.append(_event(w, "Scheduled", f"scheduled {text}"))
    if step.unschedulable:
        ids = sorted(set(step.unschedulable))
        plan.events.append(
            _event(
                w,
                "Unschedulable",
                f"{_listing(ids)} cannot be placed: {step.unschedulable_reason}",
                True,
            )
        )
    for reason, ids in sorted(step.stopped.items()):
        plan.events.append(_event(w, "Stopping", f"stopping {_listing(sorted(ids))}: {reason}"))


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


def _condition_events(
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
        out.append(_event(workload, reason, c.message, warning))
    return out


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
        rec = _copy(inst)
        rec.phase = _Inst.TERMINATING
        rec.ready = False
        rec.message = "stopping: its workload was deleted"
        plan.updates.append(rec)
        by_workload.setdefault((inst.namespace, inst.workload), []).append(inst.id)
    for key, ids in sorted(by_workload.items()):
        plan.events.append(_event(key, "Stopping", f"stopping {_listing(ids)}: workload deleted"))
    return plan


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


__all__ = [
    "JOB_HISTORY",
    "NodeFacts",
    "Observation",
    "Observed",
    "Plan",
    "aggregate_status",
    "assignments_by_node",
    "desired_instance",
    "job_run_name",
    "job_run_start",
    "observe_instance",
    "plan_orphans",
    "plan_workload",
    "same_instances",
    "same_spec",
    "template_generation",
]
