"""The node's decisions (internal/core/node_plan.py), first as the pure function, then
driven through the real reconciler (kat_agent/node/instances.py) on the in-memory fake
runtime (kat_agent/node/podman/fake.py): adopt, create, restart, stop, report, a
container that vanishes, and the date of a failure without an exit time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from internal.core import node_plan as np
from internal.core.observe import observe_instance
from kat_agent.node.instances import NodeRuntime
from kat_agent.node.podman.fake import FakeBehavior, FakePool, FakeRuntime
from kat_agent.node.podman.observe import ObservedContainer
from kat_agent.node.podman.services import NodeSettings
from katcall.workload_cmd import instance_row
from tests.helpers import wait_until

P = kat_pb2.Instance
NODE = "n1"
IMAGE = "localhost/busybox:latest"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NO_MEMORY = np.Memory()


def assignment(
    iid: str = "w-1",
    *,
    generation: int = 1,
    restart_count: int = 0,
    phase: int = P.SCHEDULED,
    kind: int = kat_pb2.WorkloadSpec.SERVICE,
    health: bool = False,
) -> kat_pb2.Assignment:
    spec = kat_pb2.WorkloadSpec(type=kind, source=kat_pb2.WorkloadSource(image=IMAGE))
    bundle = kat_pb2.Bundle(
        workload=kat_pb2.Workload(metadata=kat_pb2.ObjectMeta(name="w", namespace="ns"), spec=spec)
    )
    if health:
        check = bundle.virtual_load_balancer.spec.health_check
        check.exec.command.append("true")
        check.period_seconds = 1
        check.failure_threshold = 1
    inst = P(
        id=iid,
        workload="w",
        namespace="ns",
        node=NODE,
        generation=generation,
        phase=phase,
        restart_count=restart_count,
    )
    return kat_pb2.Assignment(instance=inst, bundle=bundle)


def container(
    state: str = "running", *, generation: int = 1, restarts: str | None = "0", cid: str = "c1"
) -> ObservedContainer:
    labels = {np.LABEL_INSTANCE: "w-1"}
    if restarts is not None:
        labels[np.LABEL_RESTARTS] = restarts
    return ObservedContainer(
        container_id=cid,
        name="kat_ns_w_w-1",
        namespace="ns",
        workload="w",
        instance_id="w-1",
        generation=generation,
        state=state,
        exit_code=3 if state == "exited" else None,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1) if state == "exited" else None,
        restart_count=0,
        image=IMAGE,
        oom_killed=False,
        labels=labels,
    )


def plan(
    a: kat_pb2.Assignment | None,
    obs: ObservedContainer | None,
    mem: np.Memory = NO_MEMORY,
    now: datetime = T0,
    desired_known: bool = True,
) -> np.InstancePlan:
    return np.plan_instance(np.InstanceView("w-1", a, obs, mem), now, desired_known=desired_known)


def kinds(p: np.InstancePlan) -> list[type]:
    return [type(a) for a in p.actions]


# ---------------------------------------------------------------- the pure decisions


def test_nothing_is_touched_before_a_desired_state_is_known() -> None:
    p = plan(None, container(), desired_known=False)
    assert kinds(p) == [np.Watch] and not p.progress and not p.done
    assert plan(None, container("exited"), desired_known=False).actions == ()


def test_create_when_assigned_without_container() -> None:
    p = plan(assignment(), None)
    assert kinds(p) == [np.Create] and p.progress


def test_adopt_a_found_container_and_take_its_restart_count() -> None:
    p = plan(assignment(restart_count=2), container(restarts="2"))
    assert kinds(p) == [np.Adopt, np.Watch]
    assert p.memory.acted_restarts == 2 and not p.progress
    # Without the label: the assignment's count (the container is not restarted).
    p = plan(assignment(restart_count=4), container(restarts=None))
    assert kinds(p) == [np.Adopt, np.Watch] and p.memory.acted_restarts == 4


def test_restart_only_when_the_leader_asks() -> None:
    mem = np.Memory(acted_restarts=0)
    assert plan(assignment(restart_count=0), container("exited"), mem).actions == ()
    p = plan(assignment(restart_count=1), container("exited"), mem)
    (stop,) = p.actions
    assert isinstance(stop, np.StopAndRemove) and stop.reason == "restart"
    # The leader reset its count (MAX_COUNT resetSeconds): followed, nothing restarted.
    p = plan(assignment(restart_count=0), container(), np.Memory(acted_restarts=3))
    assert p.memory.acted_restarts == 0 and kinds(p) == [np.Watch]


def test_replace_another_generation_and_an_unstarted_container() -> None:
    mem = np.Memory(acted_restarts=0)
    (a,) = plan(assignment(generation=2), container(), mem).actions
    assert isinstance(a, np.StopAndRemove) and a.reason == "replace"
    (a,) = plan(assignment(), container("created"), mem).actions
    assert isinstance(a, np.StopAndRemove) and a.reason == "unstarted"


def test_a_container_stuck_in_a_passing_state_is_made_again() -> None:
    """Podman's record can outlive the container's processes (everything killed at
    once): "stopping" for ever. Within STUCK_AFTER it is left alone (a real stop takes
    seconds), after that it is removed (and then created again)."""
    mem = np.Memory(acted_restarts=0)
    first = plan(assignment(), container("stopping"), mem)
    assert first.actions == () and first.wake_at == T0 + np.STUCK_AFTER
    later = T0 + np.STUCK_AFTER - timedelta(seconds=1)
    assert plan(assignment(), container("stopping"), first.memory, now=later).actions == ()
    due = T0 + np.STUCK_AFTER
    (stop,) = plan(assignment(), container("stopping"), first.memory, now=due).actions
    assert isinstance(stop, np.StopAndRemove) and stop.reason == "stuck"
    assert "stopping" in stop.message
    # Another container (or one seen running in between) starts its own clock.
    other = plan(assignment(), container("stopping", cid="c2"), first.memory, now=due)
    assert other.actions == () and other.wake_at == due + np.STUCK_AFTER
    running = plan(assignment(), container(), first.memory, now=due).memory
    assert plan(assignment(), container("stopping"), running, now=due).actions == ()
    assert kinds(plan(None, None, first.memory, now=due)) == [np.Forget]


def test_a_passing_state_whose_conmon_is_gone_is_made_again_at_once() -> None:
    """Every process of a rootless workload user killed: Podman shows "stopping" and
    the conmon it names no longer runs. Nothing will move it on: no STUCK_AFTER wait."""
    from dataclasses import replace

    mem = np.Memory(acted_restarts=0)
    dead = replace(container("stopping"), monitor_gone=True)
    (stop,) = plan(assignment(), dead, mem).actions
    assert isinstance(stop, np.StopAndRemove) and stop.reason == "stuck"
    assert "conmon is gone" in stop.message


def test_the_monitor_of_a_container_is_looked_up_by_pid(tmp_path: Path) -> None:
    """orphans.monitor_gone: a live conmon of that container is not gone; one of another
    container, a pid that runs another program, or one that no longer runs, is."""
    import os
    import subprocess
    import sys
    import time

    from kat_agent.node.podman.orphans import monitor_gone

    fake = tmp_path / "conmon"  # a program named conmon, run as `conmon ... -c <id>`
    fake.symlink_to(sys.executable)
    script = tmp_path / "wait.py"
    script.write_text("import time\ntime.sleep(30)\n")
    proc = subprocess.Popen([str(fake), str(script), "-c", "abc123"])
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd (its cmdline)
        while monitor_gone("abc123", proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not monitor_gone("abc123", proc.pid)
        assert monitor_gone("def456", proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert monitor_gone("abc123", proc.pid)
    assert monitor_gone("abc123", os.getpid())  # not a conmon
    assert not monitor_gone("abc123", 0)  # Podman named none: nothing to tell


def test_stop_what_is_terminating_or_unassigned_then_forget() -> None:
    mem = np.Memory(acted_restarts=0)
    (a,) = plan(assignment(phase=P.TERMINATING), container(), mem).actions
    assert isinstance(a, np.StopAndRemove) and a.phase == P.TERMINATING
    (a,) = plan(None, container(), mem).actions
    assert isinstance(a, np.StopAndRemove)
    p = plan(None, None, replace(mem, vanished=True))
    assert p.done and not p.memory.vanished
    term = assignment(phase=P.TERMINATING)
    term.instance.purge_volumes = True
    assert kinds(plan(term, None, mem)) == [np.PurgeVolumes]
    assert plan(term, None, replace(mem, purged=True)).actions == ()


def test_done_instances_are_never_started_again() -> None:
    for phase in (P.SUCCEEDED, P.FAILED):
        p = plan(assignment(phase=phase), None)
        assert p.actions == () and p.memory.acted_restarts == 0


def test_unhealthy_container_is_stopped() -> None:
    mem = np.Memory(acted_restarts=0, health_failed="c1")
    assert kinds(plan(assignment(), container(), mem)) == [np.StopUnhealthy]


def test_a_failure_without_exit_time_is_dated_once_and_kept() -> None:
    """The leader's back-off runs from finished_at: it must not move on every pass."""
    mem = np.Memory(acted_restarts=0, vanished=True)
    first = plan(assignment(), None, mem, now=T0)
    assert first.actions == () and first.memory.failed_at == T0  # waiting for the leader
    later = plan(assignment(), None, first.memory, now=T0 + timedelta(minutes=5))
    assert later.memory.failed_at == T0
    report = np.instance_report(NODE, np.InstanceView("w-1", assignment(), None, later.memory))
    assert report is not None and report.phase == P.FAILED
    assert report.message == np.VANISHED and report.finished_at.ToDatetime(UTC) == T0
    # The leader restarts (count 1): created again, the failure is cleared.
    again = plan(assignment(restart_count=1), None, later.memory)
    assert kinds(again) == [np.Create]


def test_the_leader_ends_the_back_off_of_a_dated_failure() -> None:
    """With the node's date the leader's back-off ends and the instance is restarted
    (without it, "restart 1 after 1s back-off" stayed one second away for ever)."""
    mem = np.Memory(acted_restarts=0, vanished=True, failed_at=T0)
    report = np.instance_report(NODE, np.InstanceView("w-1", assignment(), None, mem))
    assert report is not None
    record = P(id="w-1", node=NODE, phase=P.RUNNING, workload="w", namespace="ns")
    policy = kat_pb2.RestartPolicy(condition=kat_pb2.RestartPolicy.ALWAYS)
    wait = observe_instance(record, report, policy=policy, run_to_completion=False, now=T0)
    assert wait.record.phase == P.STARTING and wait.record.restart_count == 0
    assert wait.record.message.startswith("back-off: container removed outside KAT")
    assert [e.reason for e in wait.events] == ["BackOff"]
    assert wait.events[0].type == kat_pb2.Event.WARNING
    # The same report a little later: the same back-off, no second event ...
    again = observe_instance(wait.record, report, policy=policy, run_to_completion=False, now=T0)
    assert again.events == ()
    # ... and once the back-off is over, the restart.
    done = observe_instance(
        wait.record, report, policy=policy, run_to_completion=False, now=T0 + timedelta(seconds=2)
    )
    assert done.record.restart_count == 1 and [e.reason for e in done.events] == ["Restarted"]
    # A second failure (after the restart) is a crash loop, and the message says so.
    second = P()
    second.CopyFrom(report)
    second.restart_count = 1
    second.finished_at.FromDatetime(T0 + timedelta(seconds=3))
    crash = observe_instance(
        done.record, second, policy=policy, run_to_completion=False, now=T0 + timedelta(seconds=3)
    )
    assert crash.record.message.startswith("CrashLoopBackOff: ")
    # `katcall get instances` shows it in the default table, as kubectl's STATUS does.
    assert instance_row(crash.record, wide=False)[3] == "CrashLoopBackOff"
    assert instance_row(wait.record, wide=False)[3] == "STARTING"


def test_node_plan_reports_every_instance_it_has() -> None:
    desired = {"w-1": assignment()}
    out = np.node_plan(desired, {}, {}, T0, node=NODE)
    assert [type(a) for a in out.actions] == [np.Create, np.Report]
    report = out.actions[-1]
    assert isinstance(report, np.Report) and report.instance.phase == P.SCHEDULED
    # Unassigned and gone: forgotten, nothing reported, no memory kept.
    out = np.node_plan({}, {}, {"w-1": np.Memory(acted_restarts=0)}, T0, node=NODE)
    assert [type(a) for a in out.actions] == [np.Forget] and out.memory == {}
    # A snapshot that names another node for an instance: never acted on.
    snap = kat_pb2.AssignmentSet(assignments=[assignment(), assignment("x-1")])
    snap.assignments[1].instance.node = "n2"
    mine, foreign = np.desired_by_id(snap, NODE)
    assert list(mine) == ["w-1"] and [a.instance.id for a in foreign] == ["x-1"]


# ---------------------------------------------------------------- through the fake runtime


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def node(tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[NodeRuntime]:
    settings = NodeSettings(
        node_name=NODE, state_dir=tmp_path / "agent", run_dir=tmp_path / "run", grace_seconds=0
    )
    settings.resync_seconds = 0.2
    rt = NodeRuntime(settings, pool=FakePool(fake))
    task = asyncio.create_task(rt.run())
    try:
        await wait_until(rt.ready.is_set, within=5, message="the node runtime started")
        yield rt
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def reported(rt: NodeRuntime, iid: str = "w-1") -> kat_pb2.Instance | None:
    return next((i for i in rt.report() if i.id == iid), None)


def phase_is(rt: NodeRuntime, phase: int, iid: str = "w-1") -> bool:
    r = reported(rt, iid)
    return r is not None and r.phase == phase


async def test_fake_create_run_and_report(tmp_path: Path) -> None:
    fake = FakeRuntime()
    async with node(tmp_path, fake) as rt:
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment()]))
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="RUNNING")
        r = reported(rt)
        assert r is not None and r.ready and r.container_id.startswith("fake")
        obs = fake.by_instance("w-1")
        assert obs is not None and obs.labels[np.LABEL_RESTARTS] == "0"
        assert [op for op, _ in fake.calls].count("create") == 1


async def test_fake_stop_when_unassigned(tmp_path: Path) -> None:
    fake = FakeRuntime()
    async with node(tmp_path, fake) as rt:
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment()]))
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="RUNNING")
        rt.offer(kat_pb2.AssignmentSet())
        await wait_until(lambda: reported(rt) is None, within=5, message="stopped, forgotten")
        assert fake.containers == {}
        ops = [op for op, _ in fake.calls]
        assert ops.index("stop") < ops.index("remove")  # SIGTERM first, then remove


async def test_fake_adopts_instead_of_restarting(tmp_path: Path) -> None:
    fake = FakeRuntime()
    async with node(tmp_path / "a", fake) as rt:
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment()]))
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="RUNNING")
    (cid,) = fake.containers
    # A new agent (same fake Podman) with the same assignment: it adopts the container.
    async with node(tmp_path / "b", fake) as rt:
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment()]))
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="adopted")
        r = reported(rt)
        assert r is not None and r.container_id == cid
        assert [op for op, _ in fake.calls].count("create") == 1


async def test_fake_restart_only_on_the_leaders_count(tmp_path: Path) -> None:
    fake = FakeRuntime()
    async with node(tmp_path, fake) as rt:
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment()]))
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="RUNNING")
        (cid,) = fake.containers
        fake.exit(cid, 3)
        await wait_until(lambda: phase_is(rt, P.FAILED), within=5, message="FAILED")
        r = reported(rt)
        assert r is not None and r.exit_code == 3 and r.message == "exited with code 3"
        await rt.resync()
        assert list(fake.containers) == [cid]  # not restarted on its own
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment(restart_count=1)]))
        await wait_until(
            lambda: phase_is(rt, P.RUNNING) and cid not in fake.containers,
            within=5,
            message="restarted",
        )
        r = reported(rt)
        assert r is not None and r.restart_count == 1


async def test_fake_vanished_container_is_reported_dated_and_recreated(tmp_path: Path) -> None:
    clock = Clock()
    fake = FakeRuntime(clock=clock)
    async with node(tmp_path, fake) as rt:
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment()]))
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="RUNNING")
        (cid,) = fake.containers
        fake.vanish(cid)  # podman rm -f behind KAT's back
        await wait_until(lambda: phase_is(rt, P.FAILED), within=5, message="FAILED")
        first = reported(rt)
        assert first is not None and first.message == np.VANISHED

        def dated() -> bool:
            r = reported(rt)
            return r is not None and r.HasField("finished_at")

        await wait_until(dated, within=5, message="the failure dated")
        first = reported(rt)
        assert first is not None
        await rt.resync()
        again = reported(rt)
        assert again is not None and again.finished_at == first.finished_at  # kept
        assert fake.containers == {}  # the node does not restart on its own ...
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment(restart_count=1)]))
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="recreated")
        assert len(fake.containers) == 1 and cid not in fake.containers  # ... the leader does


async def test_fake_container_stuck_stopping_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(np, "STUCK_AFTER", timedelta(seconds=0.3))
    fake = FakeRuntime()
    async with node(tmp_path, fake) as rt:
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment()]))
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="RUNNING")
        (cid,) = fake.containers
        fake.stick(cid)

        def made_again() -> bool:
            return cid not in fake.containers and len(fake.containers) == 1

        await wait_until(made_again, within=5, message="the stuck container made again")
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=5, message="RUNNING again")


async def test_fake_health_check_readiness_and_failure(tmp_path: Path) -> None:
    healthy = {"ok": True}
    fake = FakeRuntime(behave=lambda _spec: FakeBehavior(healthy=healthy["ok"]))
    async with node(tmp_path, fake) as rt:
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment(health=True)]))
        await wait_until(lambda: bool((r := reported(rt)) and r.ready), within=5, message="ready")
        # A container that fails its checks is stopped and reported FAILED.
        healthy["ok"] = False
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment(health=True, restart_count=1)]))
        await wait_until(
            lambda: bool((r := reported(rt)) and r.message == "health check failed"),
            within=15,
            message="health check failed",
        )


async def test_fake_podman_down_is_retried(tmp_path: Path) -> None:
    fake = FakeRuntime()
    fake.images.add(IMAGE)
    async with node(tmp_path, fake) as rt:
        fake.available = False
        rt.offer(kat_pb2.AssignmentSet(assignments=[assignment()]))
        await wait_until(lambda: ("pull", IMAGE) in fake.calls, within=5, message="a try")
        fake.available = True
        await wait_until(lambda: phase_is(rt, P.RUNNING), within=10, message="RUNNING after")


# ------------------------------------------------------------------ detached restarts


def _plan(view: np.InstanceView, now: datetime, detached: bool) -> np.InstancePlan:
    return np.plan_instance(view, now, desired_known=True, detached=detached)


def test_a_vanished_service_waits_for_the_leader_while_it_is_reachable() -> None:
    mem = np.Memory(acted_restarts=0, vanished=True, failed_at=T0)
    plan = _plan(np.InstanceView("w-1", assignment(), None, mem), T0 + timedelta(hours=1), False)
    assert plan.actions == () and plan.wake_at is None


def test_detached_the_node_restarts_a_vanished_service_after_the_back_off() -> None:
    """With the leader unreachable the node restarts it itself, with the leader's back-off
    (1 s, 2 s, ...) from the failure, and says when to look again meanwhile."""
    mem = np.Memory(acted_restarts=0, vanished=True, failed_at=T0)
    view = np.InstanceView("w-1", assignment(), None, mem)
    early = _plan(view, T0, True)
    assert early.actions == () and early.wake_at == T0 + timedelta(seconds=1)
    due = _plan(view, T0 + timedelta(seconds=1), True)
    assert [type(a) for a in due.actions] == [np.Create]
    assert due.memory.local_restarts == 1
    # It fails again: the next restart waits twice as long.
    again = replace(due.memory, vanished=True, failed_at=T0 + timedelta(seconds=5))
    later = _plan(
        np.InstanceView("w-1", assignment(), None, again), T0 + timedelta(seconds=6), True
    )
    assert later.actions == () and later.wake_at == T0 + timedelta(seconds=7)


def test_detached_the_node_restarts_an_exited_service_but_not_a_job_or_max_count() -> None:
    exited = container("exited")  # finished at T0 + 1 s
    now = T0 + timedelta(seconds=3)
    plan = _plan(
        np.InstanceView("w-1", assignment(), exited, np.Memory(acted_restarts=0)), now, True
    )
    assert [a.reason for a in plan.actions if isinstance(a, np.StopAndRemove)] == ["restart"]
    job = assignment(kind=kat_pb2.WorkloadSpec.JOB)
    assert (
        _plan(np.InstanceView("w-1", job, exited, np.Memory(acted_restarts=0)), now, True).actions
        == ()
    )
    counted = assignment()
    counted.bundle.workload.spec.restart_policy.condition = kat_pb2.RestartPolicy.MAX_COUNT
    view = np.InstanceView("w-1", counted, exited, np.Memory(acted_restarts=0))
    assert _plan(view, now, True).actions == ()


def test_the_leader_back_the_local_restart_count_is_forgotten() -> None:
    mem = np.Memory(acted_restarts=0, local_restarts=3)
    plan = _plan(np.InstanceView("w-1", assignment(), container(), mem), T0, False)
    assert plan.memory.local_restarts == 0
