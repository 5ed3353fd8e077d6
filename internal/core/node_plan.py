"""The node's decisions, as pure functions: what to do about each instance, given what the
leader assigned (desired), what Podman reports (observed), what the node remembers of it
and `now`. No asyncio, no I/O: kat_agent/node/instances.py observes, calls these, executes
the actions through the container runtime and reports.

The contract with the leader is written out in kat_agent/leader/assignments.py; in short:
- until a desired state is known (a snapshot from the leader or the saved copy), nothing is
  started or stopped: running containers are only watched;
- an assigned instance without a container is created and started; one that is TERMINATING
  or no longer assigned is stopped and removed (then forgotten);
- restarts are the leader's: a fresh container is started only when the assignment's
  `restart_count` is above the count last acted on (kept in a container label, so that it
  survives agent restarts); a container of another generation is replaced;
- a failure without an exit time (the container could not be created, or vanished: removed
  behind KAT's back) is dated when the node first sees it, and that date is kept and
  reported as `finished_at`, so the leader's back-off runs from a fixed point and ends;
- containers found at start (or of earlier runs) are adopted, never restarted;
- except while the leader is unreachable (`detached`): then the node restarts a failed
  service instance under restartPolicy ALWAYS itself (an exited container, one that
  vanished or could not be created), with the leader's back-off (rollout.backoff_delay)
  counted from the failure, so an edge site keeps its services up through a leader
  outage. MAX_COUNT counting and NEVER stay the leader's; the count of local restarts is
  forgotten once the leader is back (which then sees the instance running).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from api.v1alpha1 import kat_pb2
from internal.core.rollout import backoff_delay

P = kat_pb2.Instance

# Every container KAT starts carries these labels (see kat_agent/node/podman/spec.py).
LABEL_PREFIX = "kat.dws.rip/"
LABEL_WORKLOAD = LABEL_PREFIX + "workload"
LABEL_NAMESPACE = LABEL_PREFIX + "namespace"
LABEL_INSTANCE = LABEL_PREFIX + "instance"
LABEL_GENERATION = LABEL_PREFIX + "generation"
LABEL_MANAGED = LABEL_PREFIX + "managed"
# ... and these, the node's memory that must survive an agent restart.
LABEL_RESTARTS = LABEL_PREFIX + "restart-count"
LABEL_TYPE = LABEL_PREFIX + "workload-type"
LABEL_JOB_RUN = LABEL_PREFIX + "job-run"

NOT_STARTED = ("created", "configured", "initialized")
# The states Podman leaves a container in; any other is a passing one (stopping, ...).
SETTLED = ("running", "exited", "paused", *NOT_STARTED)
# Podman's passing states (stopping, removing, ...) last seconds. A container still in one
# after this long is stuck: Podman's record outlived the container's processes (conmon and
# all killed at once, e.g. every process of a session or a service ended together), and
# Podman never moves it on by itself. It is removed and made again; at once when the
# observation says that the container's conmon no longer runs (`monitor_gone`).
STUCK_AFTER = timedelta(seconds=60)
TERMINAL = (P.SUCCEEDED, P.FAILED)
VANISHED = "container removed outside KAT"


class Container(Protocol):
    """What the plan needs of an observed container (kat_agent.node.podman.observe's
    ObservedContainer, or the fake runtime's)."""

    @property
    def container_id(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def workload(self) -> str: ...
    @property
    def generation(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def running(self) -> bool: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def oom_killed(self) -> bool: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def ip(self) -> str: ...
    @property
    def monitor_gone(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Memory:
    """What the node remembers of one instance between passes (lost on an agent restart,
    except `acted_restarts`, which is also in the container's label)."""

    acted_restarts: int | None = None  # the leader's restart count last acted on
    error: str = ""  # creating failed: FAILED without a container
    vanished: bool = False  # no container where one should be (removed behind KAT's back)
    failed_at: datetime | None = None  # when error/vanished was first seen (kept)
    health_failed: str = ""  # id of the container whose health check failed
    ready: bool = False  # its health check passed (only used with a health check)
    purged: bool = False  # its workload's volumes were purged (purge_volumes)
    local_restarts: int = 0  # restarts the node made itself while detached
    # (container id, when first seen) of a container seen in a passing state (STUCK_AFTER)
    passing: tuple[str, datetime] | None = None


@dataclass(frozen=True, slots=True)
class InstanceView:
    """Everything known about one instance at one moment."""

    id: str
    assignment: kat_pb2.Assignment | None = None
    observed: Container | None = None
    memory: Memory = Memory()


# ------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Adopt:
    """A container found for the instance (agent restart): taken as it is."""

    instance_id: str
    container_id: str
    restart_count: int


@dataclass(frozen=True, slots=True)
class Create:
    """Pull (or build) the image, create and start the container."""

    instance_id: str
    assignment: kat_pb2.Assignment


@dataclass(frozen=True, slots=True)
class StopAndRemove:
    """Stop (SIGTERM, grace, SIGKILL) and remove the container, showing `phase` and
    `message` meanwhile. `reason`: terminate, replace (other generation), restart (the
    leader asked for one), unstarted (created but never started), stuck (left in a passing
    state: STUCK_AFTER)."""

    instance_id: str
    container_id: str
    reason: str
    phase: int
    message: str


@dataclass(frozen=True, slots=True)
class StopUnhealthy:
    """The health check failed: stop the container, keep it (reported FAILED)."""

    instance_id: str
    container_id: str


@dataclass(frozen=True, slots=True)
class Watch:
    """Converged on a running container: watch for its exit (and run its health checks)."""

    instance_id: str
    container_id: str
    health: bool


@dataclass(frozen=True, slots=True)
class PurgeVolumes:
    """delete --purge-volumes: remove the workload's simpleClusterStorage on this node
    (once none of the workload's containers is left)."""

    instance_id: str
    namespace: str
    workload: str


@dataclass(frozen=True, slots=True)
class Forget:
    """Not assigned and no container: nothing of it is left to report."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class Report:
    """The instance as the node reports it (the heartbeat's entry)."""

    instance_id: str
    instance: kat_pb2.Instance


Action = Adopt | Create | StopAndRemove | StopUnhealthy | Watch | PurgeVolumes | Forget | Report
# Actions after which the executor looks again at once (the others wait for a change).
PROGRESS = (Create, StopAndRemove, StopUnhealthy)


@dataclass(frozen=True, slots=True)
class InstancePlan:
    memory: Memory
    actions: tuple[Action, ...] = ()
    wake_at: datetime | None = None  # look again then (a detached restart's back-off)

    @property
    def progress(self) -> bool:
        return any(isinstance(a, PROGRESS) for a in self.actions)

    @property
    def done(self) -> bool:
        return any(isinstance(a, Forget) for a in self.actions)


@dataclass(frozen=True, slots=True)
class NodePlan:
    memory: dict[str, Memory]
    actions: list[Action]


# ------------------------------------------------------------------ deciding


def plan_instance(
    view: InstanceView, now: datetime, *, desired_known: bool, detached: bool = False
) -> InstancePlan:
    """The next step for one instance (see the module docstring)."""
    iid, a, obs, mem = view.id, view.assignment, view.observed, view.memory
    mem = _date_failure(mem, now)
    if not detached and mem.local_restarts:
        mem = replace(mem, local_restarts=0)  # the leader is back: restarts are its own
    if not desired_known:
        if obs is not None and obs.running:
            return InstancePlan(mem, (Watch(iid, obs.container_id, health=False),))
        return InstancePlan(mem)  # no desired state known yet: touch nothing
    if a is None or a.instance.phase == P.TERMINATING:
        if obs is not None:
            stop = StopAndRemove(iid, obs.container_id, "terminate", P.TERMINATING, "stopping")
            return InstancePlan(mem, (stop,))
        mem = replace(mem, error="", vanished=False, failed_at=None)
        if a is None:
            return InstancePlan(mem, (Forget(iid),))
        if a.instance.purge_volumes and not mem.purged:
            purge = PurgeVolumes(iid, a.instance.namespace, a.instance.workload)
            return InstancePlan(mem, (purge,))
        return InstancePlan(mem)
    want = a.instance.restart_count
    if mem.acted_restarts is not None and want < mem.acted_restarts:
        # The leader reset its count (MAX_COUNT's resetSeconds): follow it.
        mem = replace(mem, acted_restarts=want)
    if obs is None:
        if a.instance.phase in TERMINAL:
            # Done as far as the leader knows: never started again.
            if mem.acted_restarts is None:
                mem = replace(mem, acted_restarts=want)
            return InstancePlan(mem)
        waiting = mem.acted_restarts is not None and want <= mem.acted_restarts
        if waiting and (mem.error or mem.vanished):
            due = _detached_restart_due(a, mem, mem.failed_at or now, detached)
            if due is None:
                return InstancePlan(mem)  # FAILED: waiting for the leader's restart
            if now < due:
                return InstancePlan(mem, wake_at=due)
            mem = replace(mem, local_restarts=mem.local_restarts + 1)
        return InstancePlan(mem, (Create(iid, a),))
    actions: list[Action] = []
    if mem.acted_restarts is None:
        label = label_restarts(obs)
        mem = replace(mem, acted_restarts=want if label is None else label)
        actions.append(Adopt(iid, obs.container_id, mem.acted_restarts or 0))
    acted = mem.acted_restarts or 0
    if obs.generation != a.instance.generation:
        message = "replacing the container"
        actions.append(StopAndRemove(iid, obs.container_id, "replace", P.STARTING, message))
    elif want > acted:
        actions.append(StopAndRemove(iid, obs.container_id, "restart", P.STARTING, "restarting"))
    elif obs.running:
        mem = replace(mem, passing=None)
        if obs.container_id == mem.health_failed:
            actions.append(StopUnhealthy(iid, obs.container_id))
        else:
            actions.append(Watch(iid, obs.container_id, health=health_check(a) is not None))
    elif obs.state in NOT_STARTED:
        # Created but never started (an agent crash in between): start afresh.
        actions.append(StopAndRemove(iid, obs.container_id, "unstarted", P.STARTING, ""))
    elif obs.state not in SETTLED:
        since = mem.passing[1] if mem.passing and mem.passing[0] == obs.container_id else None
        if since is None:
            since = now
            mem = replace(mem, passing=(obs.container_id, now))
        if now - since < STUCK_AFTER and not obs.monitor_gone:
            return InstancePlan(mem, tuple(actions), wake_at=since + STUCK_AFTER)
        gone = " (its conmon is gone)" if obs.monitor_gone else ""
        message = f"container stuck in Podman state '{obs.state}'{gone}; making it again"
        actions.append(StopAndRemove(iid, obs.container_id, "stuck", P.STARTING, message))
    else:
        # Exited: reported; the leader decides about a restart (unless it is unreachable).
        # (Without an exit time: as if it exited one back-off ago, i.e. due now.)
        exited = obs.finished_at or now - backoff_delay(mem.local_restarts)
        due = _detached_restart_due(a, mem, exited, detached)
        if due is not None and now < due:
            return InstancePlan(mem, tuple(actions), wake_at=due)
        if due is not None:
            mem = replace(mem, local_restarts=mem.local_restarts + 1)
            message = "restarting (the leader is unreachable)"
            actions.append(StopAndRemove(iid, obs.container_id, "restart", P.STARTING, message))
    return InstancePlan(mem, tuple(actions))


def _detached_restart_due(
    a: kat_pb2.Assignment, mem: Memory, failed_at: datetime, detached: bool
) -> datetime | None:
    """When the node may restart a failed instance itself (module docstring), or None
    when that is the leader's to decide."""
    spec = a.bundle.workload.spec
    if not detached or spec.type == kat_pb2.WorkloadSpec.JOB:
        return None
    if spec.restart_policy.condition not in (
        kat_pb2.RestartPolicy.ALWAYS,
        kat_pb2.RestartPolicy.CONDITION_UNSPECIFIED,
    ):
        return None
    return failed_at + backoff_delay(mem.local_restarts)


def created(mem: Memory, a: kat_pb2.Assignment) -> Memory:
    """The memory once a container is being created for assignment `a`: acting on its
    restart count, with no failure, health verdict or readiness yet."""
    return replace(
        mem,
        acted_restarts=a.instance.restart_count,
        error="",
        vanished=False,
        failed_at=None,
        health_failed="",
        ready=False,
    )


def node_labels(a: kat_pb2.Assignment) -> dict[str, str]:
    """The labels that carry the node's memory on the container of `a`."""
    labels = {
        LABEL_RESTARTS: str(a.instance.restart_count),
        LABEL_TYPE: kat_pb2.WorkloadSpec.Type.Name(a.bundle.workload.spec.type),
    }
    if a.instance.job_run:
        labels[LABEL_JOB_RUN] = a.instance.job_run
    return labels


def _date_failure(mem: Memory, now: datetime) -> Memory:
    """A failure without an exit time is dated when first seen, and keeps that date."""
    failing = bool(mem.error or mem.vanished)
    if failing and mem.failed_at is None:
        return replace(mem, failed_at=now)
    if not failing and mem.failed_at is not None:
        return replace(mem, failed_at=None)
    return mem


def desired_by_id(
    snapshot: kat_pb2.AssignmentSet, node: str
) -> tuple[dict[str, kat_pb2.Assignment], list[kat_pb2.Assignment]]:
    """The snapshot's assignments for `node` by instance id, and those that name another
    node (never acted on)."""
    desired: dict[str, kat_pb2.Assignment] = {}
    foreign: list[kat_pb2.Assignment] = []
    for a in snapshot.assignments:
        if not a.instance.id:
            continue
        if a.instance.node and a.instance.node != node:
            foreign.append(a)
            continue
        desired[a.instance.id] = a
    return desired, foreign


def node_plan(
    desired: Mapping[str, kat_pb2.Assignment] | None,
    observed: Mapping[str, Container],
    memory: Mapping[str, Memory],
    now: datetime,
    *,
    node: str,
) -> NodePlan:
    """One pass over every instance the node knows of: the assigned ones (`desired`, by
    instance id; None while no desired state is known), the observed containers (by
    instance id) and the remembered ones. Returns each instance's new memory and the
    actions, a Report last for every instance that has something to report."""
    ids = sorted(set(desired or {}) | set(observed) | set(memory))
    new_memory: dict[str, Memory] = {}
    actions: list[Action] = []
    for iid in ids:
        view = InstanceView(
            iid, (desired or {}).get(iid), observed.get(iid), memory.get(iid, Memory())
        )
        plan = plan_instance(view, now, desired_known=desired is not None)
        actions += plan.actions
        if plan.done:
            continue
        new_memory[iid] = plan.memory
        inst = instance_report(node, replace(view, memory=plan.memory))
        if inst is not None:
            actions.append(Report(iid, inst))
    return NodePlan(new_memory, actions)


# ------------------------------------------------------------------ reporting


def health_check(a: kat_pb2.Assignment | None) -> kat_pb2.HealthCheck | None:
    if a is None:
        return None
    check = a.bundle.virtual_load_balancer.spec.health_check
    return check if check.exec.command else None


def is_job(view: InstanceView) -> bool:
    if view.assignment is not None:
        return view.assignment.bundle.workload.spec.type == kat_pb2.WorkloadSpec.JOB
    obs = view.observed
    return bool(obs and obs.labels.get(LABEL_TYPE) == "JOB")


def instance_report(
    node: str, view: InstanceView, activity: int | None = None, message: str = ""
) -> kat_pb2.Instance | None:
    """The instance as the node sees it; None once the node has nothing of it.
    `activity` (PULLING, BUILDING, STARTING, TERMINATING) and `message`: what the
    executor is doing with it right now."""
    a, obs, mem = view.assignment, view.observed, view.memory
    if obs is None and activity is None and not mem.error and not mem.vanished:
        if a is None or a.instance.phase in (P.TERMINATING, *TERMINAL):
            return None
    inst = kat_pb2.Instance(id=view.id, node=node)
    if a is not None:
        inst.namespace, inst.workload = a.instance.namespace, a.instance.workload
        inst.generation = a.instance.generation
        inst.job_run = a.instance.job_run
    elif obs is not None:
        inst.namespace, inst.workload = obs.namespace, obs.workload
    if obs is not None:
        inst.generation = obs.generation or inst.generation
        inst.job_run = inst.job_run or obs.labels.get(LABEL_JOB_RUN, "")
        inst.container_id = obs.container_id
        inst.ip = obs.ip
        if obs.started_at:
            inst.started_at.FromDatetime(obs.started_at)
        if obs.finished_at:
            inst.finished_at.FromDatetime(obs.finished_at)
        if obs.exit_code is not None:
            inst.exit_code = obs.exit_code
    elif mem.failed_at is not None and activity is None:
        inst.finished_at.FromDatetime(mem.failed_at)
    inst.restart_count = mem.acted_restarts or 0
    inst.phase, inst.message = _phase(view, activity, message)
    inst.ready = bool(
        inst.phase == P.RUNNING
        and obs is not None
        and obs.container_id != mem.health_failed
        and (mem.ready or health_check(a) is None)
    )
    return inst


def _phase(view: InstanceView, activity: int | None, message: str) -> tuple[int, str]:
    obs, mem = view.observed, view.memory
    if activity is not None:
        return activity, message
    if obs is not None:
        if obs.running or obs.state == "paused":
            if obs.container_id == mem.health_failed:
                return P.RUNNING, "health check failed; stopping"
            return P.RUNNING, "" if obs.running else obs.state
        if obs.state == "exited":
            code = obs.exit_code or 0
            if obs.container_id == mem.health_failed:
                return P.FAILED, "health check failed"
            if code == 0 and is_job(view):
                return P.SUCCEEDED, "completed"
            why = f"exited with code {code}"
            return P.FAILED, f"{why} (out of memory)" if obs.oom_killed else why
        if obs.state in NOT_STARTED:
            return P.STARTING, ""
        return P.RUNNING, obs.state  # stopping, removing: passing states
    if mem.error:
        return P.FAILED, mem.error
    if mem.vanished:
        return P.FAILED, VANISHED
    return P.SCHEDULED, ""


def label_restarts(c: Container) -> int | None:
    """The restart count a container was started for (its label), if it says."""
    try:
        return int(c.labels[LABEL_RESTARTS])
    except (KeyError, ValueError):
        return None
