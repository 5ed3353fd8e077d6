"""What the node's reconciler (kat_agent/node/instances.py) keeps per instance: the facts
(assignment, observed container, backend), the node's memory of it (node_plan.Memory, field
by field, so that the executor records outcomes where they happen) and its own bookkeeping
(what it is doing right now, its worker and watcher tasks)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from api.v1alpha1 import kat_pb2
from internal.core.node_plan import InstanceView, Memory, instance_report
from kat_agent.node.podman.observe import ObservedContainer
from kat_agent.node.podman.runtime import RuntimeBackend


@dataclass(eq=False)
class InstanceState:
    """One instance as the executor tracks it: the facts (assignment, observed container),
    the node's memory of it (the fields of node_plan.Memory) and the executor's own
    bookkeeping (what it is doing, its tasks)."""

    id: str
    assignment: kat_pb2.Assignment | None = None
    backend: RuntimeBackend | None = None
    observed: ObservedContainer | None = None
    # node_plan.Memory, field by field (see there)
    acted_restarts: int | None = None
    error: str = ""
    vanished: bool = False
    failed_at: datetime | None = None
    health_failed: str = ""
    ready: bool = False
    purged: bool = False
    local_restarts: int = 0
    passing: tuple[str, datetime] | None = None
    # the executor's
    activity: int | None = None  # PULLING / STARTING / TERMINATING while doing it
    message: str = ""  # with activity: what is going on
    busy: bool = False  # a step is running
    epoch: int = 0  # bumped by every action (resync compares it)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    waiter: tuple[str, asyncio.Task[None]] | None = None
    health: tuple[str, asyncio.Task[None]] | None = None
    wake_at: datetime | None = None  # with Step.LATER: when to look again

    @property
    def namespace(self) -> str:
        if self.assignment is not None:
            return self.assignment.instance.namespace
        return self.observed.namespace if self.observed else ""

    @property
    def workload(self) -> str:
        if self.assignment is not None:
            return self.assignment.instance.workload
        return self.observed.workload if self.observed else ""

    def memory(self) -> Memory:
        # Every field of Memory (a field added there and not here fails at once).
        return Memory(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Memory)})

    def remember(self, mem: Memory) -> bool:
        """Take the plan's memory; True if it changed."""
        if mem == self.memory():
            return False
        for f in dataclasses.fields(Memory):
            setattr(self, f.name, getattr(mem, f.name))
        return True

    def view(self) -> InstanceView:
        return InstanceView(self.id, self.assignment, self.observed, self.memory())

    def watchers(self) -> list[asyncio.Task[None]]:
        return [pair[1] for pair in (self.waiter, self.health) if pair is not None]

    def cancel_watchers(self) -> None:
        for task in self.watchers():
            task.cancel()
        self.waiter = self.health = None

    def report(self, node: str) -> kat_pb2.Instance | None:
        """The instance as the node sees it; None once the node has nothing of it."""
        return instance_report(node, self.view(), self.activity, self.message)


def find_containers(
    states: Iterable[InstanceState], namespace: str, workload: str, instance_id: str
) -> list[tuple[InstanceState, RuntimeBackend, str]]:
    """Instances with a container matching the request (instance id, else all of the
    workload's), as (state, backend, container id), by instance id."""
    out = []
    for st in states:
        if st.observed is None or st.backend is None:
            continue
        if instance_id and st.id != instance_id:
            continue
        if namespace and st.namespace != namespace:
            continue
        if workload and st.workload != workload:
            continue
        if not (instance_id or workload):
            continue
        out.append((st, st.backend, st.observed.container_id))
    return sorted(out, key=lambda x: x[0].id)


@dataclass
class Resync:
    """What one Podman service's list says against what the executor tracks (`compare`):
    containers of unknown instances (adopted), tracked ones that changed, and tracked
    ones whose container is gone."""

    found: list[tuple[str, ObservedContainer]] = field(default_factory=list)
    changed: list[tuple[InstanceState, ObservedContainer]] = field(default_factory=list)
    gone: list[InstanceState] = field(default_factory=list)


def compare(
    states: dict[str, InstanceState],
    backend: RuntimeBackend,
    listed: Iterable[ObservedContainer],
    epochs: dict[str, int],
) -> Resync:
    """Compare `backend`'s container list with the tracked `states`. Instances acted on
    meanwhile (busy, or their epoch moved since `epochs` was taken before listing) are
    left alone: the list may predate the action."""
    out = Resync()
    seen = {c.instance_id: c for c in listed if c.instance_id}
    for iid, c in seen.items():
        st = states.get(iid)
        if st is None:
            out.found.append((iid, c))
        elif st.busy or st.epoch != epochs.get(iid):
            continue
        elif st.backend is not None and st.backend is not backend:
            continue
        elif st.observed != c:
            out.changed.append((st, c))
    for iid, st in states.items():
        if (
            st.backend is backend
            and st.observed is not None
            and iid not in seen
            and not st.busy
            and st.epoch == epochs.get(iid)
        ):
            out.gone.append(st)
    return out


class Step(enum.Enum):
    PROGRESS = "progress"  # did something; look again at once
    IDLE = "idle"  # converged; wait for a change
    DONE = "done"  # not assigned and no container: forget the instance
    RETRY = "retry"  # failed for a passing reason (Podman restarting): back off
    LATER = "later"  # converged for now; look again at `InstanceState.wake_at`
