"""The leader's side of workloads, end to end on a real leader: `kat-agent init` (real etcd,
real mTLS gRPC, the real controllers) driven with `katcall` and the gRPC API, with
simulated agents as nodes (tests/leader_harness.py). The leader's own node is cordoned so
only simulated agents get instances; every test selects its own agents by a label.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from api.v1alpha1 import kat_pb2
from internal.manifests import bundle as bundle_mod
from tests.leader_harness import (
    Behavior,
    Bundle,
    Leader,
    SimNet,
    job_definition,
    poll,
    service,
)

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("kat-agent") is None,
    reason="needs etcd and kat-agent on PATH (scripts/setup.sh)",
)

P = kat_pb2.Instance


@pytest.fixture(scope="module")
def leader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leader]:
    with Leader(tmp_path_factory.mktemp("wl") / "cluster", tick=1, loss=3) as lead:
        yield lead


@pytest.fixture(scope="module")
def net(leader: Leader) -> Iterator[SimNet]:
    sims = SimNet(leader)
    try:
        yield sims
    finally:
        sims.close()


def apply(leader: Leader, root: Path, files: dict[str, str], *args: str) -> tuple[int, str, str]:
    p = leader.katcall("apply", "-f", str(Bundle(root, files).write()), *args)
    return p.returncode, p.stdout, p.stderr


def running(leader: Leader, name: str, n: int, namespace: str = "default") -> list[P]:
    """Wait for exactly n RUNNING ready instances (and nothing else alive) of a workload."""

    def check() -> list[P] | None:
        insts = [i for i in leader.instances(namespace, name) if i.phase != P.TERMINATING]
        ok = len(insts) == n and all(i.phase == P.RUNNING and i.ready for i in insts)
        return insts if ok else None

    return poll(check, within=20, what=f"{n} RUNNING ready instances of {name}")


# ------------------------------------------------------------------ apply and scheduling


def test_apply_spreads_replicas_waits_and_second_apply_is_a_noop(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    net.add("spread", {"t": "spread"})
    net.add("spread", {"t": "spread"})
    files = {"workload.kat": service("web", selector={"t": "spread"})}
    code, out, err = apply(leader, tmp_path / "web", files, "--wait", "--timeout", "30s")
    assert code == 0, err
    assert "workload/web created (generation 1)" in out
    assert "web: 3/3 ready, 3/3 updated" in out and "rollout complete" in out

    doc = leader.katcall_json("get", "instances")
    mine = [i for i in doc["items"] if i["workload"] == "web"]
    assert len(mine) == 3
    assert all(i["phase"] == "RUNNING" and i["ready"] for i in mine)
    assert len({i["node"] for i in mine}) == 2  # spread over both nodes

    w = leader.workload("web")
    assert (w.status.desired_instances, w.status.ready_instances) == (3, 3)
    assert w.status.observed_generation == 1
    table = leader.katcall("get", "workloads", check=True).stdout
    assert "web" in table and "3/3" in table

    watched = tmp_path / "watch.out"
    with watched.open("w") as sink:
        watch = subprocess.Popen(
            ["katcall", "--katconfig", str(leader.katconfig), "get", "instances", "-w"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        poll(lambda: watched.read_text().count("RUNNING") >= 3, what="get instances -w")
    finally:
        watch.terminate()
        watch.wait(10)
    assert watched.read_text().startswith("NAME ")

    code, out, _ = apply(leader, tmp_path / "web", files)
    assert code == 0 and "workload/web unchanged" in out
    assert leader.workload("web").metadata.generation == 1
    revs = leader.stub().ListRevisions(kat_pb2.ObjectRef(name="web"), timeout=10).items
    assert [r.revision for r in revs] == [1]
    assert revs[0].created_by == "admin"
    reasons = {e.reason for e in leader.events("web")}
    assert {"Applied", "Scheduled", "Started"} <= reasons


def test_unplaceable_instances_stay_pending_until_a_node_fits(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    files = {"workload.kat": service("lonely", replicas=2, selector={"t": "later"})}
    code, _, err = apply(leader, tmp_path / "b", files)
    assert code == 0, err

    def pending() -> list[P] | None:
        insts = leader.instances("default", "lonely")
        ok = len(insts) == 2 and all(i.phase == P.PENDING for i in insts)
        return insts if ok else None

    insts = poll(pending, what="2 PENDING instances")
    assert all(
        "nodes available" in i.message and "node selector mismatch" in i.message for i in insts
    )
    assert all(not i.node for i in insts)
    unschedulable = [e for e in leader.events("lonely") if e.reason == "Unschedulable"]
    assert unschedulable and unschedulable[0].type == kat_pb2.Event.WARNING
    assert "node selector mismatch" in unschedulable[0].message

    later = net.add("later", {"t": "later"})
    insts = running(leader, "lonely", 2)
    assert {i.node for i in insts} == {later.name}
    assert {i.id for i in insts} == {i.id for i in insts}  # the same records, now placed


def test_invalid_bundle_lists_every_problem_and_stores_nothing(
    leader: Leader, tmp_path: Path
) -> None:
    workload = (
        "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata:\n  name: bad\n"
        "spec:\n  type: SERVICE\n  source:\n    image: localhost/busybox:latest\n"
        "  replicas: -2\n  container:\n    imagee: x\n    command: [sh]\n"
    )
    job = "apiVersion: kat.dws.rip/v1alpha1\nkind: JobDefinition\nmetadata:\n  name: other\n"
    files = {"workload.kat": workload, "JobDefinition.kat": job}
    code, out, err = apply(leader, tmp_path / "bad", files)
    assert code == 1 and out == ""
    assert "is invalid (4 problems)" in err
    for text in (
        "workload.kat: spec.container.imagee: unknown field",
        "workload.kat: spec.replicas: must be >= 0, got -2",
        'JobDefinition.kat: metadata.name: "other" does not match workload.kat ("bad")',
        "JobDefinition.kat: only allowed with spec.type JOB",
    ):
        assert text in err

    data = bundle_mod.pack_dir(tmp_path / "bad")
    with pytest.raises(grpc.RpcError) as info:
        leader.stub().Apply(kat_pb2.ApplyRequest(bundle=data), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details().splitlines()) == 4
    names = [w.metadata.name for w in leader.stub().ListWorkloads(kat_pb2.ListRequest()).items]
    assert "bad" not in names

    with pytest.raises(grpc.RpcError) as info:
        leader.stub().Apply(kat_pb2.ApplyRequest(bundle=b"not a tarball"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bundle refused" in info.value.details()


def test_dry_run_stores_nothing_and_stale_resource_version_is_aborted(
    leader: Leader, tmp_path: Path
) -> None:
    files = {"workload.kat": service("dry", replicas=2, selector={"t": "none"})}
    code, out, _ = apply(leader, tmp_path / "d", files, "--dry-run")
    assert code == 0 and "would be created (dry run)" in out
    with pytest.raises(grpc.RpcError) as info:
        leader.workload("dry")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    assert apply(leader, tmp_path / "d", files)[0] == 0
    stored = leader.workload("dry")
    files3 = {"workload.kat": service("dry", replicas=3, selector={"t": "none"})}
    code, out, _ = apply(leader, tmp_path / "d", files3, "--dry-run")
    assert code == 0 and "would be configured (dry run)" in out
    assert "workload.kat: spec.replicas: 2 -> 3" in out
    assert leader.workload("dry").spec.replicas == 2

    data = bundle_mod.pack_dir(Bundle(tmp_path / "d", files3).write())
    stale = stored.metadata.resource_version - 1
    with pytest.raises(grpc.RpcError) as info:
        leader.stub().Apply(
            kat_pb2.ApplyRequest(bundle=data, expected_resource_version=stale), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.ABORTED
    current = leader.workload("dry").metadata.resource_version
    resp = leader.stub().Apply(
        kat_pb2.ApplyRequest(bundle=data, expected_resource_version=current), timeout=10
    )
    assert resp.changed and resp.workload.metadata.generation == 2
    assert resp.workload.status.template_generation == 1  # replicas only: same instances
    assert list(resp.changes) == ["workload.kat: spec.replicas: 2 -> 3"]


# ------------------------------------------------------------------ updates


class StatusLog:
    """Every stored status of one workload, from WatchWorkloads, in a background thread."""

    def __init__(self, leader: Leader, name: str) -> None:
        self.items: list[kat_pb2.Workload] = []
        self._call = leader.stub().WatchWorkloads(kat_pb2.WatchRequest(namespace="default"))
        self._thread = threading.Thread(target=self._run, args=(name,), daemon=True)
        self._thread.start()

    def _run(self, name: str) -> None:
        try:
            for ev in self._call:
                if ev.workload.metadata.name == name:
                    self.items.append(ev.workload)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


def test_rolling_update_keeps_replicas_ready_within_surge_then_rollback(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    net.add("roll", {"t": "roll"})
    net.add("roll", {"t": "roll"})
    net.world.behaviors["roll"] = Behavior(ready_after=0.3)
    v1 = {"workload.kat": service("roll", selector={"t": "roll"}, image="localhost/busybox:v1")}
    v2 = {"workload.kat": service("roll", selector={"t": "roll"}, image="localhost/busybox:v2")}
    code, _, err = apply(leader, tmp_path / "r", v1, "--wait", "--timeout", "30s")
    assert code == 0, err
    first = {i.id for i in running(leader, "roll", 3)}

    statuses = StatusLog(leader, "roll")
    mark = len(net.world.samples)
    try:
        code, out, err = apply(leader, tmp_path / "r", v2, "--wait", "--timeout", "40s")
        assert code == 0, err
        assert "spec.source.image" in out
    finally:
        statuses.close()
    now = running(leader, "roll", 3)
    assert not first & {i.id for i in now}
    assert all(i.generation == 2 for i in now)
    # Never more than replicas + maxSurge alive instances, as the leader stored them...
    during = [w for w in statuses.items if w.status.observed_generation == 2]
    assert during
    for w in during:
        alive = [i for i in w.status.instances if i.phase != P.TERMINATING]
        assert len(alive) <= 4, [(i.id, P.Phase.Name(i.phase)) for i in alive]
    # ...and never fewer than replicas ready containers on the (simulated) nodes.
    for sample in net.world.samples[mark:]:
        ready = [r for r in sample.instances.values() if r.workload == "roll" and r.ready]
        assert len(ready) >= 3, sample
    images = {
        a.bundle.workload.spec.source.image
        for agent in net.world.agents.values()
        for a in agent.assigned().values()
        if a.instance.workload == "roll"
    }
    assert images == {"localhost/busybox:v2"}

    rb = leader.katcall("rollback", "workload", "roll", check=True)
    assert "now generation 3" in rb.stdout
    poll(
        lambda: (
            {
                a.bundle.workload.spec.source.image
                for agent in net.world.agents.values()
                for a in agent.assigned().values()
                if a.instance.workload == "roll" and a.instance.phase != P.TERMINATING
            }
            == {"localhost/busybox:v1"}
        ),
        what="the old image back",
    )
    back = running(leader, "roll", 3)
    assert all(i.generation == 3 for i in back)
    revs = leader.stub().ListRevisions(kat_pb2.ObjectRef(name="roll"), timeout=10).items
    assert [r.revision for r in revs] == [1, 2, 3]
    assert any(e.reason == "RolledBack" for e in leader.events("roll"))
    bad = leader.katcall("rollback", "workload", "roll", "--to-revision", "9")
    assert bad.returncode == 1 and "revision 9" in bad.stderr and "not found" in bad.stderr

    # Scaling does not restart anything: the three instances stay, a fourth joins them.
    v1_4 = {
        "workload.kat": service(
            "roll", replicas=4, selector={"t": "roll"}, image="localhost/busybox:v1"
        )
    }
    assert apply(leader, tmp_path / "r", v1_4, "--wait", "--timeout", "30s")[0] == 0
    four = running(leader, "roll", 4)
    assert {i.id for i in back} < {i.id for i in four}


def test_rollout_that_never_gets_ready_halts_with_a_condition(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    net.add("halt", {"t": "halt"})
    strategy = (
        "  updateStrategy:\n    type: ROLLING\n    maxSurge: 1\n    progressDeadlineSeconds: 2\n"
    )
    v1 = {"workload.kat": service("halt", replicas=2, selector={"t": "halt"}, extra=strategy)}
    assert apply(leader, tmp_path / "h", v1, "--wait", "--timeout", "30s")[0] == 0
    net.world.behaviors["halt@2"] = Behavior(ready_after=math.inf)  # new copies never get ready
    v2 = {
        "workload.kat": service(
            "halt", replicas=2, selector={"t": "halt"}, extra=strategy, image="localhost/x:2"
        )
    }
    code, out, err = apply(leader, tmp_path / "h", v2, "--wait", "--timeout", "30s")
    assert code == 1
    assert "rollout of generation 2 halted" in err
    w = leader.workload("halt")
    halted = [c for c in w.status.conditions if c.type == "RolloutHalted"]
    assert halted and halted[0].status == "True"
    assert "no progress" in halted[0].message
    # the old instances keep serving; only one new one was started (maxSurge 1)
    alive = [i for i in w.status.instances if i.phase != P.TERMINATING]
    assert sorted(i.generation for i in alive) == [1, 1, 2]
    assert w.status.ready_instances == 2
    assert any(e.reason == "RolloutHalted" for e in leader.events("halt"))


# ------------------------------------------------------------------ restart policies


def test_restart_policies_always_backs_off_max_count_gives_up_never_fails(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    net.add("crash", {"t": "crash"})
    for name in ("always", "maxcount", "never"):
        net.world.behaviors[name] = Behavior(exit_after=0.1, exit_code=3)
    policies = {
        "always": "  restartPolicy:\n    condition: ALWAYS\n",
        "maxcount": "  restartPolicy:\n    condition: MAX_COUNT\n    maxRestarts: 2\n",
        "never": "  restartPolicy:\n    condition: NEVER\n",
    }
    for name, policy in policies.items():
        files = {"workload.kat": service(name, replicas=1, selector={"t": "crash"}, restart=policy)}
        code, _, err = apply(leader, tmp_path / name, files)
        assert code == 0, err

    def starts(name: str) -> list[float]:
        return [t for t, _, inst, _ in list(net.world.starts) if inst.startswith(f"{name}-")]

    poll(lambda: len(starts("always")) >= 3, within=20, what="two restarts under ALWAYS")
    t = starts("always")
    # back-off doubles: ~1 s before the first restart, ~2 s before the second
    assert t[1] - t[0] >= 1.0 and t[2] - t[1] >= 2.0, t
    restarted = [e for e in leader.events("always") if e.reason == "Restarted"]
    assert restarted and "exited with code 3" in restarted[0].message

    def final(name: str, phase: int) -> P | None:
        insts = leader.instances("default", name)
        return insts[0] if len(insts) == 1 and insts[0].phase == phase else None

    gave_up = poll(lambda: final("maxcount", P.FAILED), within=20, what="MAX_COUNT giving up")
    assert gave_up.restart_count == 2 and len(starts("maxcount")) == 3
    assert "MAX_COUNT allows 2" in gave_up.message and gave_up.exit_code == 3

    failed = poll(lambda: final("never", P.FAILED), within=10, what="NEVER leaving it FAILED")
    assert failed.restart_count == 0 and "restartPolicy NEVER" in failed.message
    assert len(starts("never")) == 1
    assert any(e.reason == "Failed" for e in leader.events("never"))
    # FAILED keeps its slot: no replacement is started, and --wait reports the failure
    code, _, err = apply(
        leader,
        tmp_path / "never",
        {
            "workload.kat": service(
                "never", replicas=1, selector={"t": "crash"}, restart=policies["never"]
            )
        },
        "--wait",
        "--timeout",
        "10s",
    )
    assert code == 1 and "FAILED" in err and "restartPolicy NEVER" in err
    assert len(leader.instances("default", "never")) == 1
    assert len(starts("never")) == 1


# ------------------------------------------------------------------ jobs


def job(name: str, spec: str, selector: str) -> dict[str, str]:
    return {
        "workload.kat": service(name, kind="JOB", selector={"t": selector}),
        "JobDefinition.kat": job_definition(name, spec),
    }


def max_running(net: SimNet, name: str, since: int = 0) -> int:
    return max(
        (
            sum(1 for r in s.instances.values() if r.workload == name and r.phase == P.RUNNING)
            for s in net.world.samples[since:]
        ),
        default=0,
    )


def test_job_runs_completions_with_parallelism_and_stops_at_backoff_limit(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    net.add("jobs", {"t": "jobs"})
    net.world.behaviors["batch"] = Behavior(exit_after=0.5, exit_code=0)
    net.world.behaviors["flaky"] = Behavior(exit_after=0.1, exit_code=7)
    code, out, err = apply(
        leader,
        tmp_path / "batch",
        job("batch", "  completions: 3\n  parallelism: 2\n", "jobs"),
        "--wait",
        "--timeout",
        "30s",
    )
    assert code == 0, err
    assert "3/3 completions succeeded" in out
    insts = leader.instances("default", "batch")
    assert sorted(P.Phase.Name(i.phase) for i in insts) == ["SUCCEEDED"] * 3
    assert len({i.job_run for i in insts}) == 1
    assert max_running(net, "batch") == 2
    complete = [c for c in leader.workload("batch").status.conditions if c.type == "Complete"]
    assert complete and complete[0].status == "True"

    code, _, err = apply(
        leader,
        tmp_path / "flaky",
        job("flaky", "  backoffLimit: 1\n", "jobs"),
        "--wait",
        "--timeout",
        "30s",
    )
    assert code == 1 and "job failed" in err and "BackoffLimitExceeded" not in err
    assert "more than backoffLimit 1" in err
    insts = leader.instances("default", "flaky")
    assert [P.Phase.Name(i.phase) for i in insts] == ["FAILED", "FAILED"]
    failed = [c for c in leader.workload("flaky").status.conditions if c.type == "Failed"]
    assert failed[0].reason == "BackoffLimitExceeded"


def test_every_job_runs_repeatedly_and_never_overlaps(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    net.add("cron", {"t": "cron"})
    net.world.behaviors["tick"] = Behavior(exit_after=2.5, exit_code=0)  # longer than 2 s
    mark = len(net.world.samples)
    code, _, err = apply(
        leader, tmp_path / "tick", job("tick", '  schedule: "@every 2s"\n', "cron")
    )
    assert code == 0, err

    def runs() -> set[str]:
        return {i.job_run for i in leader.instances("default", "tick")}

    poll(
        lambda: (
            len(runs()) >= 2
            and all(i.phase == P.SUCCEEDED for i in leader.instances("default", "tick"))
        ),
        within=25,
        what="two finished runs",
    )
    assert max_running(net, "tick", mark) == 1  # never two runs at once
    started = sorted(t for t, _, inst, _ in net.world.starts if inst.startswith("tick-"))
    assert started[1] - started[0] >= 2.5  # the second run waited for the first to end


# ------------------------------------------------------------------ nodes


def test_lost_node_instances_move_and_return_without_copies(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    a = net.add("loss", {"t": "loss"})
    b = net.add("loss", {"t": "loss"})
    files = {"workload.kat": service("mover", replicas=2, selector={"t": "loss"})}
    assert apply(leader, tmp_path / "m", files, "--wait", "--timeout", "30s")[0] == 0
    before = {i.node: i.id for i in running(leader, "mover", 2)}
    assert set(before) == {a.name, b.name}

    net.stop(a)  # silent: no heartbeats, no assignments stream
    moved = poll(
        lambda: (lambda insts: insts if {i.node for i in insts} == {b.name} else None)(
            running(leader, "mover", 2)
        ),
        within=15,
        what="both instances on the surviving node",
    )
    assert before[a.name] not in {i.id for i in moved}
    lost = [e for e in leader.events("mover") if e.reason == "NodeLost"]
    assert lost and a.name in lost[0].message and before[a.name] in lost[0].message

    net.start(a)  # back: its snapshot no longer has the old copy, so it is stopped
    poll(
        lambda: a.connected and not [c for c in a.containers.values() if c.workload == "mover"],
        within=15,
        what="the returning node to drop its stale copy",
    )
    assert not [x for x in a.assigned().values() if x.instance.workload == "mover"]
    assert len(net.world.running("mover")) == 2


def test_daemon_service_runs_on_every_eligible_node_including_later_ones(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    first = net.add("edge", {"t": "edge"})
    files = {"workload.kat": service("logger", kind="DAEMON_SERVICE", selector={"t": "edge"})}
    assert apply(leader, tmp_path / "dm", files, "--wait", "--timeout", "30s")[0] == 0
    assert [i.node for i in running(leader, "logger", 1)] == [first.name]
    second = net.add("edge", {"t": "edge"})
    insts = running(leader, "logger", 2)
    assert sorted(i.node for i in insts) == sorted([first.name, second.name])
    assert leader.workload("logger").status.desired_instances == 2


# ------------------------------------------------------------------ delete, namespaces


def test_delete_workload_and_namespace(leader: Leader, net: SimNet, tmp_path: Path) -> None:
    net.add("del", {"t": "del"})
    missing = service("gone", replicas=1, selector={"t": "del"}, namespace="team")
    code, _, err = apply(leader, tmp_path / "x", {"workload.kat": missing})
    assert code == 1 and "namespace 'team' not found" in err
    leader.katcall("create", "namespace", "team", check=True)

    files = {"workload.kat": service("w", replicas=2, selector={"t": "del"}, namespace="team")}
    assert apply(leader, tmp_path / "w", files, "--wait", "--timeout", "30s")[0] == 0
    ids = {i.id for i in running(leader, "w", 2, "team")}
    out = leader.katcall("delete", "workload", "w", "-n", "team", "--purge-volumes", check=True)
    assert "workload/w deleted (volumes purged)" in out.stdout
    poll(lambda: not leader.instances("team", "w"), what="the instance records to go")
    assert ids <= net.world.purged
    assert not net.world.running("w")
    with pytest.raises(grpc.RpcError) as info:
        leader.workload("w", "team")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    deleted = [e for e in leader.events("w", "team") if e.reason == "Deleted"]
    assert deleted and "deleted by admin" in deleted[0].message

    assert apply(leader, tmp_path / "w", files, "--wait", "--timeout", "30s")[0] == 0
    leader.katcall("delete", "namespace", "team", check=True)
    poll(lambda: not leader.instances("team"), what="the namespace's instances to go")
    assert not net.world.running("w")
    names = [n.metadata.name for n in leader.stub().ListNamespaces(kat_pb2.ListRequest()).items]
    assert "team" not in names
    assert not leader.stub().ListWorkloads(kat_pb2.ListRequest(namespace="team")).items
    refused = leader.katcall("delete", "namespace", "default")
    assert refused.returncode == 1 and "cannot be deleted" in refused.stderr
    gone = leader.katcall("delete", "workload", "nope")
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_logs_and_exec_are_proxied_to_the_node(leader: Leader, net: SimNet, tmp_path: Path) -> None:
    net.add("logs", {"t": "logs"})
    files = {"workload.kat": service("chatty", replicas=1, selector={"t": "logs"})}
    assert apply(leader, tmp_path / "c", files, "--wait", "--timeout", "30s")[0] == 0
    (inst,) = running(leader, "chatty", 1)
    out = leader.katcall("logs", "chatty", check=True).stdout
    assert out.splitlines() == [f"[{inst.id}] line {i} of {inst.id}" for i in (1, 2, 3)]
    out = leader.katcall("logs", "chatty", "--instance", inst.id, "--tail", "1", check=True)
    assert out.stdout == f"line 3 of {inst.id}\n"
    p = leader.katcall("exec", "chatty", "-i", "--", "echo", "hi", input="some input")
    assert p.returncode == 3
    assert p.stdout == f"{inst.id} ran echo hi; stdin 'some input'\n"
    assert p.stderr == "a warning\n"
    missing = leader.katcall("logs", "chatty", "--instance", "nope")
    assert missing.returncode == 1 and "not found" in missing.stderr
