"""The pure parts of the leader's workload handling: one reconcile step of a workload
(internal/core/reconcile.py), apply planning (internal/core/apply.py), change lists
(internal/manifests/changes.py) and the assignment book."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

from api.v1alpha1 import kat_pb2
from internal.core import reconcile, scheduler
from internal.core.apply import plan_apply
from internal.core.assignments import assignments_by_node
from internal.core.observe import observe_instance
from internal.core.reconcile_model import NodeFacts, Observed, Plan, job_run_start
from internal.manifests import resources
from internal.manifests.changes import bundle_changes
from kat_agent.leader.assignments import AssignmentBook

P = kat_pb2.Instance
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ALWAYS = kat_pb2.RestartPolicy(condition=kat_pb2.RestartPolicy.ALWAYS)
NEVER = kat_pb2.RestartPolicy(condition=kat_pb2.RestartPolicy.NEVER)


def ts(inst: P, name: str, when: datetime) -> P:
    getattr(inst, name).FromDatetime(when)
    return inst


def ids() -> object:
    counter = itertools.count()
    return lambda: f"{next(counter):05d}"


def workload(
    name: str = "web", replicas: int = 3, kind: str = "SERVICE", image: str = "img:1"
) -> kat_pb2.Bundle:
    files = {
        "workload.kat": (
            "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\n"
            f"metadata: {{name: {name}}}\nspec:\n  type: {kind}\n"
            f"  source: {{image: '{image}'}}\n"
            + (f"  replicas: {replicas}\n" if kind == "SERVICE" else "")
            + "  container: {command: [sleep, '60']}\n"
        )
    }
    if kind == "JOB":
        files["JobDefinition.kat"] = (
            "apiVersion: kat.dws.rip/v1alpha1\nkind: JobDefinition\n"
            f"metadata: {{name: {name}}}\nspec: {{completions: 3, parallelism: 2}}\n"
        )
    b = resources.load_bundle_files({k: v.encode() for k, v in files.items()})
    return resources.apply_defaults(b)


def stored(bundle: kat_pb2.Bundle, generation: int = 1) -> kat_pb2.Workload:
    w = kat_pb2.Workload()
    w.CopyFrom(bundle.workload)
    w.metadata.uid = "uid-1"
    w.metadata.generation = generation
    w.status.template_generation = generation
    return w


def node(name: str, ready: bool = True) -> kat_pb2.Node:
    n = kat_pb2.Node()
    n.metadata.name = name
    n.status.condition = kat_pb2.NodeStatus.READY if ready else kat_pb2.NodeStatus.NOT_READY
    n.status.allocatable.cpu_millis = 4000
    n.status.allocatable.memory_bytes = 8 << 30
    return n


def plan(
    bundle: kat_pb2.Bundle,
    instances: list[P],
    nodes: list[kat_pb2.Node],
    observed: Observed | None = None,
    w: kat_pb2.Workload | None = None,
    now: datetime = NOW,
) -> Plan:
    w = w or stored(bundle)
    return reconcile.plan_workload(
        w,
        bundle,
        instances,
        cluster=scheduler.Cluster.from_protos(nodes),
        nodes=NodeFacts(
            {n.metadata.name: n.status.condition == kat_pb2.NodeStatus.READY for n in nodes}
        ),
        observed=observed or Observed(),
        now=now,
        new_id=ids(),  # type: ignore[arg-type]
    )


def inst(id_: str, node: str = "n1", phase: int = P.RUNNING, ready: bool = True, gen: int = 1) -> P:
    return P(
        id=id_,
        workload="web",
        namespace="default",
        node=node,
        generation=gen,
        phase=phase,
        ready=ready,
        resource_version=7,
    )


# ------------------------------------------------------------------ observed states


def test_a_running_report_is_folded_in_once_with_a_started_event() -> None:
    rec = inst("a", phase=P.SCHEDULED, ready=False)
    report = ts(inst("a", ready=True), "started_at", NOW)
    obs = observe_instance(rec, report, policy=ALWAYS, run_to_completion=False, now=NOW)
    assert obs.record.phase == P.RUNNING and obs.record.ready
    assert [e.reason for e in obs.events] == ["Started"]
    again = observe_instance(obs.record, report, policy=ALWAYS, run_to_completion=False, now=NOW)
    assert again.record == obs.record and not again.events


def test_exits_go_through_the_restart_policy_with_back_off() -> None:
    rec = inst("a")
    exited = P(id="a", node="n1", phase=P.FAILED, exit_code=2)
    ts(exited, "started_at", NOW - timedelta(seconds=5))
    ts(exited, "finished_at", NOW)
    wait = observe_instance(rec, exited, policy=ALWAYS, run_to_completion=False, now=NOW)
    assert wait.record.phase == P.STARTING and wait.record.restart_count == 0
    assert wait.record.message.startswith("back-off: exited with code 2")
    assert wait.wake_at == NOW + timedelta(seconds=1)
    later = NOW + timedelta(seconds=1)
    go = observe_instance(wait.record, exited, policy=ALWAYS, run_to_completion=False, now=later)
    assert (go.record.restart_count, go.record.policy_restart_count) == (1, 1)
    assert [e.reason for e in go.events] == ["Restarted"]
    # the node has not acted on restart 1 yet: its old exit report changes nothing
    stale = observe_instance(go.record, exited, policy=ALWAYS, run_to_completion=False, now=later)
    assert stale.record == go.record and not stale.events


def test_never_gives_up_and_jobs_complete_on_exit_zero() -> None:
    failed = ts(P(id="a", node="n1", phase=P.FAILED, exit_code=1), "finished_at", NOW)
    obs = observe_instance(inst("a"), failed, policy=NEVER, run_to_completion=False, now=NOW)
    assert obs.record.phase == P.FAILED and "restartPolicy NEVER" in obs.record.message
    assert [e.reason for e in obs.events] == ["Failed"]
    # given up for good: later reports do not move it
    running = inst("a")
    assert (
        observe_instance(
            obs.record, running, policy=NEVER, run_to_completion=False, now=NOW
        ).record.phase
        == P.FAILED
    )
    done = ts(P(id="a", node="n1", phase=P.SUCCEEDED), "finished_at", NOW)
    obs = observe_instance(inst("a"), done, policy=NEVER, run_to_completion=True, now=NOW)
    assert obs.record.phase == P.SUCCEEDED and [e.reason for e in obs.events] == ["Completed"]


def test_a_failure_to_start_is_never_a_success() -> None:
    pull = P(id="a", node="n1", phase=P.FAILED, message="image pull failed: no such image")
    obs = observe_instance(inst("a"), pull, policy=NEVER, run_to_completion=True, now=NOW)
    assert obs.record.phase == P.FAILED
    assert obs.record.message == "image pull failed: no such image; restartPolicy NEVER"


def test_terminating_records_stay_terminating() -> None:
    rec = inst("a", phase=P.TERMINATING, ready=False)
    obs = observe_instance(
        rec, inst("a", ready=True), policy=ALWAYS, run_to_completion=False, now=NOW
    )
    assert obs.record.phase == P.TERMINATING and not obs.record.ready


# ------------------------------------------------------------------ services


def test_new_replicas_are_placed_spread_or_left_pending_with_the_reason() -> None:
    b = workload()
    p = plan(b, [], [node("n1"), node("n2")])
    assert len(p.creates) == 3 and all(i.phase == P.SCHEDULED for i in p.creates)
    assert sorted(i.node for i in p.creates) == ["n1", "n1", "n2"]
    assert [e.reason for e in p.events] == ["Scheduled"]
    assert p.status is not None and p.status.desired_instances == 3

    p = plan(b, [], [node("n1", ready=False)])
    assert all(i.phase == P.PENDING and not i.node for i in p.creates)
    assert p.creates[0].message == "0/1 nodes available: 1 not ready"
    (ev,) = [e for e in p.events if e.reason == "Unschedulable"]
    assert ev.type == kat_pb2.Event.WARNING and "not ready" in ev.message


def test_instances_of_a_lost_node_are_replaced_and_terminated_ones_collected() -> None:
    b = workload(replicas=2)
    insts = [inst("a", "n1"), inst("b", "n2"), inst("c", "n2", P.TERMINATING, False)]
    seen = Observed(reported={"n2": frozenset({"b"})})
    p = plan(b, insts, [node("n1", ready=False), node("n2")], seen)
    assert sorted(i.id for i in p.deletes) == ["a", "c"]
    assert [(i.node, i.phase) for i in p.creates] == [("n2", P.SCHEDULED)]
    assert any(e.reason == "NodeLost" and "n1" in e.message for e in p.events)
    # a TERMINATING instance still reported (or from a node not heard from) is kept
    seen = Observed(reported={"n2": frozenset({"b", "c"})})
    p = plan(b, insts[1:], [node("n2")], seen)
    assert not p.deletes


def test_a_replicas_only_change_keeps_instances_an_image_change_rolls() -> None:
    b = workload(replicas=2)
    w = stored(b, generation=2)
    w.status.template_generation = 1  # apply kept the template: only replicas changed
    insts = [inst("a", "n1"), inst("b", "n2"), inst("c", "n1")]
    p = plan(b, insts, [node("n1"), node("n2")], w=w)
    assert [i.id for i in p.updates if i.phase == P.TERMINATING] and not p.creates
    assert all(i.generation == 1 for i in p.updates)

    w.status.template_generation = 2  # a new template: one surge instance of generation 2
    p = plan(b, insts[:2], [node("n1"), node("n2")], w=w)
    assert [(i.generation, i.phase) for i in p.creates] == [(2, P.SCHEDULED)]
    assert not [i for i in p.updates if i.phase == P.TERMINATING]  # old ones still serve


def test_orphans_are_stopped_then_removed() -> None:
    facts = NodeFacts({"n1": True})
    p = reconcile.plan_orphans(
        [inst("a"), inst("p", "", P.PENDING)],
        nodes=facts,
        observed=Observed(),
    )
    assert [(i.id, i.phase) for i in p.updates] == [("a", P.TERMINATING)]
    assert [i.id for i in p.deletes] == ["p"]
    gone = Observed(reported={"n1": frozenset()})
    p = reconcile.plan_orphans([p.updates[0]], nodes=facts, observed=gone)
    assert [i.id for i in p.deletes] == ["a"] and not p.updates


# ------------------------------------------------------------------ jobs


def test_a_job_run_honours_parallelism_and_completions() -> None:
    b = workload(kind="JOB")
    w = stored(b)
    p = plan(b, [], [node("n1")], w=w)
    assert len(p.creates) == 2 and len({i.job_run for i in p.creates}) == 1
    run = p.creates[0].job_run
    assert job_run_start(run) == NOW
    done = [inst(i.id, phase=P.SUCCEEDED, ready=False) for i in p.creates]
    for d in done:
        d.job_run = run
    p = plan(b, done, [node("n1")], w=w, now=NOW + timedelta(seconds=5))
    assert len(p.creates) == 1 and p.creates[0].job_run == run
    assert p.status is not None
    assert [c.type for c in p.status.conditions] == ["Progressing"]


# ------------------------------------------------------------------ assignments


def test_assignments_carry_only_what_the_node_acts_on() -> None:
    rec = inst("a")
    rec.message, rec.ready, rec.restart_count = "busy", True, 2
    pending = inst("p", "", P.PENDING)
    out = assignments_by_node([rec, pending], lambda i: kat_pb2.Bundle())
    (a,) = out["n1"]
    assert a.instance.phase == P.SCHEDULED and a.instance.restart_count == 2
    assert not a.instance.message and not a.instance.ready
    assert set(out) == {"n1"}


def test_the_book_bumps_a_nodes_revision_only_when_its_snapshot_changes() -> None:
    async def run() -> None:
        book = AssignmentBook()
        await book.reset()
        assert book.snapshot("n1") is None  # nothing published in this term yet
        a = kat_pb2.Assignment(instance=inst("a"))
        assert await book.publish({"n1": [a]}) == ["n1"]
        first = book.snapshot("n1")
        assert first is not None and len(first.assignments) == 1
        assert await book.publish({"n1": [a]}) == []
        waiter = asyncio.create_task(book.next_snapshot("n1", first.revision))
        await asyncio.sleep(0)
        assert not waiter.done()
        assert await book.publish({}) == ["n1"]
        second = await asyncio.wait_for(waiter, 1)
        assert second is not None and not second.assignments
        assert second.revision > first.revision
        await book.close()
        assert await book.next_snapshot("n1", second.revision) is None

    asyncio.run(run())


# ------------------------------------------------------------------ apply


def test_plan_apply_bumps_generations_only_for_spec_changes() -> None:
    b1 = workload(replicas=2)
    created = plan_apply(None, None, b1, now=NOW, who="admin", uid="u")
    assert created.created and created.workload.metadata.generation == 1
    assert created.revision is not None and created.revision.created_by == "admin"
    current = created.workload
    same = plan_apply(current, created.revision.bundle, workload(replicas=2), now=NOW, who="a")
    assert not same.changed and same.revision is None

    scaled = plan_apply(current, created.revision.bundle, workload(replicas=5), now=NOW, who="a")
    assert scaled.workload.metadata.generation == 2
    assert scaled.workload.status.template_generation == 1
    assert scaled.changes == ["workload.kat: spec.replicas: 2 -> 5"]

    new_image = workload(replicas=2, image="img:2")
    moved = plan_apply(current, created.revision.bundle, new_image, now=NOW, who="a")
    assert moved.workload.status.template_generation == 2
    assert moved.changes == ['workload.kat: spec.source.image: "img:1" -> "img:2"']

    labelled = workload(replicas=2)
    labelled.workload.metadata.labels["tier"] = "front"
    relabel = plan_apply(current, created.revision.bundle, labelled, now=NOW, who="a")
    assert relabel.changed and relabel.revision is None
    assert relabel.workload.metadata.generation == 1
    assert relabel.changes == ['workload.kat: metadata.labels.tier: set to "front"']


def test_bundle_changes_name_files_and_fields() -> None:
    old = workload()
    new = workload(replicas=1)
    new.virtual_load_balancer.CopyFrom(kat_pb2.VirtualLoadBalancer(kind="VirtualLoadBalancer"))
    assert bundle_changes(old, new) == [
        "workload.kat: spec.replicas: 3 -> 1",
        "VirtualLoadBalancer.kat: added",
    ]
    assert bundle_changes(None, old) == ["create Workload default/web (SERVICE, 3 replicas)"]


def test_a_failed_health_check_is_handled_like_an_exit() -> None:
    unhealthy = P(id="a", node="n1", phase=P.FAILED, exit_code=137, message="health check failed")
    ts(unhealthy, "finished_at", NOW)
    obs = observe_instance(inst("a"), unhealthy, policy=ALWAYS, run_to_completion=False, now=NOW)
    assert obs.record.phase == P.STARTING and not obs.record.ready
    assert obs.record.message == (
        "back-off: health check failed; exited with code 137; restart 1 after 1s back-off"
    )
