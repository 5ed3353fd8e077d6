"""The inputs and outputs of one reconcile step (`Observed`, `NodeFacts`, `Plan`) and the
small helpers on workloads and instance records that the planners share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from api.v1alpha1 import kat_pb2
from internal.core import rollout
from internal.core.events import new_event

_Inst = kat_pb2.Instance
_Spec = kat_pb2.WorkloadSpec
_Restart = rollout.RestartAction


TERMINAL = frozenset({_Inst.SUCCEEDED, _Inst.FAILED})
# Phases a node may report for a container that exists and has not exited.
LIVE_REPORTS = frozenset({_Inst.BUILDING, _Inst.PULLING, _Inst.STARTING, _Inst.RUNNING})
JOB_HISTORY = 3  # runs of a JOB whose instances are kept (the newest ones)
MAX_ID_PREFIX = 57  # instance ids are DNS labels: <workload, cut to 57>-<5 chars>
MAX_LISTED = 5  # instance ids named in one aggregated event
# The exit code given to the restart policy for a FAILED report that is not an exit (the
# container could not be created or started): a failure, never a success.
NO_EXIT = -1


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


def instance_time(inst: kat_pb2.Instance, name: str) -> datetime | None:
    if not inst.HasField(name):
        return None
    return getattr(inst, name).ToDatetime(tzinfo=UTC)


def copy_record(inst: kat_pb2.Instance) -> kat_pb2.Instance:
    out = kat_pb2.Instance()
    out.CopyFrom(inst)
    return out


def phase_name(value: int) -> str:
    return _Inst.Phase.Name(value) if value else "PENDING"


def listing(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:MAX_LISTED])
    more = len(ids) - MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def workload_event(
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
